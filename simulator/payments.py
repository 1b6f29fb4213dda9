"""A Stripe-style refunds API on loopback, with true idempotency and fault knobs."""

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.loopback import serve


@dataclass
class PaymentKnobs:
    """Fault injection. Rates are probabilities per refund request."""

    latency_s: float = 0.0
    error_rate: float = 0.0  # HTTP 500 before doing anything
    timeout_rate: float = 0.0  # refund made, reply held past the client's patience
    timeout_hold_s: float = 30.0
    decline_rate: float = 0.0
    malformed_rate: float = 0.0  # refund made, reply unreadable
    rate_limit_rate: float = 0.0  # HTTP 429, nothing done
    seed: int = 0


class PaymentsSimulator:
    """Serves ``/v1/refunds``. ``refund_count(return_id)`` is what tests assert on."""

    def __init__(
        self, api_key: str, *, webhook_secret: str = "", knobs: PaymentKnobs | None = None
    ) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.knobs = knobs or PaymentKnobs()
        self.refunds: list[dict[str, Any]] = []
        self.paid_at: dict[str, float] = {}
        """Return id → when its (first) refund was made, for latency measurements."""
        self._idempotency: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(self.knobs.seed)
        self._runner: web.AppRunner | None = None
        self.requests = 0
        self.lookups = 0
        self._gate: asyncio.Event | None = None
        self._commit_held = True
        self._held = asyncio.Condition()
        self.held = 0
        self._made = asyncio.Condition()

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port; returns the base URL."""
        app = web.Application()
        app.router.add_post("/v1/refunds", self._create)
        app.router.add_get("/v1/refunds", self._list)
        self._runner, url = await serve(app)
        return url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def refunds_for(self, return_id: str) -> list[dict[str, Any]]:
        """Every refund made for a return."""
        return [r for r in self.refunds if r["metadata"].get("return_id") == return_id]

    def refund_count(self, return_id: str) -> int:
        """How many refunds were made for a return (exactly once means 1)."""
        return len(self.refunds_for(return_id))

    async def wait_for_refunds(self, n: int) -> None:
        """Wait until ``n`` refunds have been made in all."""
        async with self._made:
            await self._made.wait_for(lambda: len(self.refunds) >= n)

    def hold_requests(self) -> None:
        """From now on, refund requests wait (before doing anything) until :meth:`release`."""
        self._gate = asyncio.Event()
        self.held = 0

    async def wait_until_held(self, n: int = 1) -> None:
        """Wait until ``n`` refund requests are being held."""
        async with self._held:
            await self._held.wait_for(lambda: self.held >= n)

    def release(self, *, commit: bool) -> None:
        """Let held requests go on: made (``commit``) or refused with a 503, nothing done."""
        self._commit_held = commit
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def _hold(self) -> bool:
        """Wait at the gate if there is one; False if the request must do nothing."""
        gate = self._gate
        if gate is None:
            return True
        async with self._held:
            self.held += 1
            self._held.notify_all()
        await gate.wait()
        return self._commit_held

    @staticmethod
    def _error(status: int, kind: str, code: str, message: str) -> web.Response:
        body = {"error": {"type": kind, "code": code, "message": message}}
        return web.json_response(body, status=status)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorized(request):
            return self._error(401, "invalid_request_error", "unauthorized", "bad API key")
        params = {key: str(v) for key, v in (await request.post()).items()}
        k = self.knobs
        if k.latency_s:
            await asyncio.sleep(k.latency_s)  # simulated provider latency
        if self._rng.random() < k.error_rate:
            return self._error(500, "api_error", "internal", "try again")
        if self._rng.random() < k.rate_limit_rate:
            return self._error(429, "rate_limit_error", "rate_limit", "slow down")
        if not await self._hold():
            return self._error(503, "api_error", "unavailable", "request dropped")
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotency:
            seen_params, status, body = self._idempotency[key]
            if seen_params != params:
                return self._error(400, "idempotency_error", "idempotency_key_in_use",
                                   "keys must be reused with the same parameters")  # fmt: skip
            return web.json_response(body, status=status)
        status, body = self._make_refund(params)
        if key:
            self._idempotency[key] = (params, status, body)
        async with self._made:
            self._made.notify_all()
        if status == 200 and self._rng.random() < k.timeout_rate:
            await asyncio.sleep(k.timeout_hold_s)  # committed; the client will time out
        if status == 200 and self._rng.random() < k.malformed_rate:
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        return web.json_response(body, status=status)

    def _make_refund(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError):
            return 400, {"error": {"type": "invalid_request_error", "code": "parameter_invalid",
                                   "message": "amount"}}  # fmt: skip
        if self._rng.random() < self.knobs.decline_rate:
            return 402, {"error": {"type": "card_error", "code": "refund_declined",
                                   "message": "the bank declined the refund"}}  # fmt: skip
        metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
        refund = {
            "id": f"re_{next(self._ids):08d}",
            "object": "refund",
            "amount": amount,
            "currency": params.get("currency", "cny"),
            "status": "succeeded",
            "metadata": metadata,
            "payment_intent": params.get("payment_intent"),
        }
        self.refunds.append(refund)
        self.paid_at.setdefault(metadata.get("return_id", ""), time.time())
        return 200, refund

    async def _list(self, request: web.Request) -> web.Response:
        self.lookups += 1
        if not self._authorized(request):
            return self._error(401, "invalid_request_error", "unauthorized", "bad API key")
        return_id = request.query.get("metadata[return_id]")
        data = self.refunds if return_id is None else self.refunds_for(return_id)
        return web.json_response({"object": "list", "data": data, "has_more": False})
