"""A merchant's own system on loopback: it receives Dropline's webhooks and pays refunds
when Dropline asks by signed webhook, with knobs for the faults real ones have.

It checks signatures itself (a few lines of ``hmac``, as a merchant would write them, not
the gateway's code), so the tests prove that what we send can be verified. Refunds are
idempotent by return id, as ``gateway/payments/merchant_system.py`` requires; every payment
made is in :attr:`payments`, which is what exactly-once tests count.
"""

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from simulator.loopback import serve

log = logging.getLogger(__name__)

TOLERANCE_S = 300


@dataclass
class MerchantKnobs:
    """Fault injection. Rates are probabilities per request."""

    latency_s: float = 0.0
    error_rate: float = 0.0  # HTTP 500 before doing anything
    timeout_rate: float = 0.0  # refund made, reply held past the client's patience
    timeout_hold_s: float = 30.0
    decline_rate: float = 0.0  # refund refused (status failed)
    malformed_rate: float = 0.0  # refund made, reply unreadable
    async_rate: float = 0.0  # answer "pending"; pay and call back later
    async_delay_s: float = 0.05
    callbacks: bool = True  # False: a pending refund is only found by the status query
    webhook_error_rate: float = 0.0  # the webhook receiver answers 500
    seed: int = 0


def signature_ok(header: str | None, body: bytes, secrets: list[str], now: float) -> bool:
    """A merchant's check of ``Dropline-Signature: t=...,v1=...`` (docs/webhooks.md)."""
    if not header:
        return False
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k == "t"]
    given = [v for k, v in parts if k == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > TOLERANCE_S:
        return False
    signed = stamps[0].encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, g) for g in given):
            return True
    return False


def sign(secret: str, body: bytes) -> str:
    """How the merchant signs its callbacks to Dropline."""
    t = str(int(time.time()))
    digest = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class MerchantSystemSimulator:
    """``await start()`` returns the base URL: refunds at ``/refunds``, webhooks at
    ``/webhooks``."""

    def __init__(
        self,
        refund_secret: str,
        *,
        webhook_secrets: list[str] | None = None,
        knobs: MerchantKnobs | None = None,
    ) -> None:
        self.refund_secret = refund_secret
        self.webhook_secrets = list(webhook_secrets or [])
        self.knobs = knobs or MerchantKnobs()
        self.refunds: dict[str, dict[str, Any]] = {}  # by return id: idempotency
        self.payments: list[dict[str, Any]] = []  # every payout actually made
        self.refund_requests = 0
        self.status_queries = 0
        self.callbacks_sent = 0
        self.events: dict[str, dict[str, Any]] = {}  # verified webhook events by id
        self.webhook_posts = 0
        self.webhook_duplicates = 0
        self.rejected: Counter[str] = Counter()
        self._fail_webhooks = 0
        self._ids = itertools.count(1)
        self._rng = random.Random(self.knobs.seed)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port."""
        app = web.Application()
        app.router.add_post("/refunds", self._refund)
        app.router.add_get("/refunds/{return_id}", self._status)
        app.router.add_post("/webhooks", self._webhook)
        self._runner, url = await serve(app)
        self._session = aiohttp.ClientSession()
        return url

    async def stop(self) -> None:
        """Stop serving and calling back."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- what tests look at ---------------------------------------------------------------

    def refund_count(self, return_id: str) -> int:
        """How many times the merchant paid a refund for a return (exactly once means 1)."""
        return sum(1 for p in self.payments if p["return_id"] == return_id)

    def events_of(self, type_: str, return_id: str | None = None) -> list[dict[str, Any]]:
        """Distinct verified events of a type (about one return, if given)."""
        return [
            e
            for e in self.events.values()
            if e["type"] == type_ and (return_id is None or e["data"].get("return_id") == return_id)
        ]

    def fail_next_webhooks(self, n: int) -> None:
        """Answer the next ``n`` webhook posts with HTTP 500."""
        self._fail_webhooks = n

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever something arrives)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- webhooks from Dropline -----------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        self.webhook_posts += 1
        body = await request.read()
        if not signature_ok(
            request.headers.get("Dropline-Signature"), body, self.webhook_secrets, time.time()
        ):
            self.rejected["webhook_signature"] += 1
            return web.json_response({"error": "bad signature"}, status=400)
        if self._fail_webhooks > 0 or self._rng.random() < self.knobs.webhook_error_rate:
            self._fail_webhooks = max(0, self._fail_webhooks - 1)
            return web.json_response({"error": "busy"}, status=500)
        event = json.loads(body)
        if event["id"] in self.events:
            self.webhook_duplicates += 1
        else:
            self.events[event["id"]] = event
        await self._notify()
        return web.json_response({"received": True})

    # ---- refunds asked for by Dropline ----------------------------------------------------

    async def _refund(self, request: web.Request) -> web.Response:
        self.refund_requests += 1
        body = await request.read()
        if not signature_ok(
            request.headers.get("Dropline-Signature"), body, [self.refund_secret], time.time()
        ):
            self.rejected["refund_signature"] += 1
            return web.json_response({"error": {"code": "bad_signature"}}, status=401)
        k = self.knobs
        if k.latency_s:
            await asyncio.sleep(k.latency_s)  # simulated processing time
        if self._rng.random() < k.error_rate:
            return web.json_response({"error": {"code": "internal"}}, status=500)
        ask = json.loads(body)
        refund = self.refunds.get(ask["return_id"])
        if refund is None:
            refund = self._new_refund(ask)
        if self._rng.random() < k.timeout_rate:
            await asyncio.sleep(k.timeout_hold_s)  # done; the client gave up waiting
        if self._rng.random() < k.malformed_rate:
            return web.Response(text="Internal Server Error: <pre>NullPointer", status=200)
        await self._notify()
        return web.json_response(refund, status=202 if refund["status"] == "pending" else 200)

    def _new_refund(self, ask: dict[str, Any]) -> dict[str, Any]:
        k = self.knobs
        refund = {
            "refund_id": f"mr_{next(self._ids):06d}",
            "return_id": ask["return_id"],
            "amount_minor": int(ask["amount_minor"]),
            "currency": ask["currency"],
            "status": "succeeded",
        }
        self.refunds[ask["return_id"]] = refund
        if self._rng.random() < k.decline_rate:
            refund["status"] = "failed"
        elif self._rng.random() < k.async_rate:
            refund["status"] = "pending"
            self._spawn(self._finish_later(refund, ask.get("callback_url")))
        else:
            self.payments.append(dict(refund))
        return refund

    async def _finish_later(self, refund: dict[str, Any], callback_url: str | None) -> None:
        await asyncio.sleep(self.knobs.async_delay_s)  # the merchant's payout run
        refund["status"] = "succeeded"
        self.payments.append(dict(refund))
        await self._notify()
        if self.knobs.callbacks and callback_url and self._session is not None:
            await self._call_back(callback_url, refund)

    async def _call_back(self, url: str, refund: dict[str, Any]) -> None:
        assert self._session is not None
        body = json.dumps(refund).encode()
        for attempt in range(10):
            headers = {"Content-Type": "application/json",
                       "Dropline-Signature": sign(self.refund_secret, body)}  # fmt: skip
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    if resp.status < 500:
                        self.callbacks_sent += 1
                        return
            except aiohttp.ClientError as exc:
                log.info("refund callback to %s failed: %s", url, exc)
            await asyncio.sleep(0.05 * 2**attempt)  # the merchant's own retry schedule

    async def _status(self, request: web.Request) -> web.Response:
        self.status_queries += 1
        path = request.path.encode()
        if not signature_ok(
            request.headers.get("Dropline-Signature"), path, [self.refund_secret], time.time()
        ):
            self.rejected["status_signature"] += 1
            return web.json_response({"error": {"code": "bad_signature"}}, status=401)
        refund = self.refunds.get(request.match_info["return_id"])
        if refund is None:
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        return web.json_response(refund)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
