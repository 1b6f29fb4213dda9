"""A Kdniao-compatible carrier API on loopback, with knobs for the faults real ones have.

It checks every DataSign, keeps orders by OrderCode (a repeated one is refused with the
existing waybill, as the real API does), and, once a pickup is booked, pushes signed
tracking updates to the gateway's webhook: collected, in transit, signed.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from gateway.carriers import kdniao_wire as wire

log = logging.getLogger(__name__)

PATH = "/Ebusiness/EbusinessOrderHandle.aspx"


@dataclass
class CarrierKnobs:
    """Fault injection. Rates are probabilities per request."""

    latency_s: float = 0.0
    error_rate: float = 0.0  # HTTP 500, nothing done
    timeout_rate: float = 0.0  # the work is done, the reply comes too late
    timeout_hold_s: float = 30.0
    malformed_rate: float = 0.0
    rate_limit_per_s: float | None = None
    seed: int = 0


@dataclass
class Order:
    """An order the simulated carrier holds."""

    order_code: str
    waybill: str
    shipper: str
    pickup_booked: bool = False
    state: str = "0"
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (time, text, StateEx)


class KdniaoSimulator:
    """The simulated carrier. ``await start()`` returns the request URL."""

    def __init__(
        self,
        ebusiness_id: str,
        app_key: str,
        *,
        push_url: str | None = None,
        push_delays_s: tuple[float, ...] = (0.05, 0.05, 0.05),
        knobs: CarrierKnobs | None = None,
    ) -> None:
        self.ebusiness_id = ebusiness_id
        self.app_key = app_key
        self.push_url = push_url
        self.push_delays_s = push_delays_s
        self.knobs = knobs or CarrierKnobs()
        self.orders: dict[str, Order] = {}
        self.requests: Counter[str] = Counter()
        self.shipments_created: Counter[str] = Counter()
        self.pushes_sent = 0
        self._rng = random.Random(self.knobs.seed)
        self._waybills = itertools.count(880_000_000_001)
        self._recent: list[float] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port."""
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = aiohttp.ClientSession()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}{PATH}"

    async def stop(self) -> None:
        """Stop serving and pushing."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- requests -----------------------------------------------------------------------

    def _reply(self, code: str = wire.OK, reason: str = "", **extra: Any) -> web.Response:
        body = {"EBusinessID": self.ebusiness_id, "Success": code == wire.OK,
                "ResultCode": code, "Reason": reason, **extra}  # fmt: skip
        return web.json_response(body)

    def _rate_limited(self) -> bool:
        limit = self.knobs.rate_limit_per_s
        if limit is None:
            return False
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < 1.0]
        if len(self._recent) >= limit:
            return True
        self._recent.append(now)
        return False

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        k = self.knobs
        if k.latency_s:
            await asyncio.sleep(k.latency_s)  # simulated network latency
        if self._rng.random() < k.error_rate:
            return web.Response(status=500, text="internal error")
        if self._rng.random() < k.malformed_rate:
            return web.Response(text="<html>gateway error</html>", content_type="text/html")
        if self._rate_limited():
            return self._reply(wire.RATE_LIMITED, "too many requests")
        if form.get("EBusinessID") != self.ebusiness_id or not wire.sign_ok(form, self.app_key):
            return self._reply(wire.BAD_SIGN, "DataSign verification failed")
        try:
            data = json.loads(form["RequestData"])
        except (KeyError, json.JSONDecodeError):
            return self._reply("105", "RequestData is not JSON")
        request_type = form.get("RequestType", "")
        self.requests[request_type] += 1
        response = self._dispatch(request_type, data)
        if self._rng.random() < k.timeout_rate:
            await asyncio.sleep(k.timeout_hold_s)  # done, but the client gave up waiting
        return response

    def _dispatch(self, request_type: str, data: dict[str, Any]) -> web.Response:
        handlers = {
            wire.CREATE_EWAYBILL: self._create,
            wire.BOOK_PICKUP: self._book,
            wire.SUBSCRIBE: self._subscribe,
            wire.QUERY: self._query,
            wire.CANCEL_EWAYBILL: self._cancel,
            wire.CANCEL_PICKUP: self._cancel_pickup,
        }
        handler = handlers.get(request_type)
        if handler is None:
            return self._reply("104", f"unknown RequestType {request_type}")
        return handler(data)

    def _create(self, data: dict[str, Any]) -> web.Response:
        code = str(data.get("OrderCode", ""))
        if not code:
            return self._reply("105", "OrderCode is required")
        existing = self.orders.get(code)
        if existing is not None:
            return self._reply(
                wire.DUPLICATE_ORDER,
                "订单编号已存在",
                Order={"OrderCode": code, "LogisticCode": existing.waybill},
            )
        shipper = str(data.get("ShipperCode", "YTO"))
        order = Order(code, f"{shipper}{next(self._waybills)}", shipper)
        self.orders[code] = order
        self.shipments_created[code] += 1
        return self._reply(
            Order={"OrderCode": code, "ShipperCode": shipper, "LogisticCode": order.waybill}
        )

    def _book(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("OrderCode", "")))
        if order is None:
            return self._reply("105", "unknown OrderCode")
        if not order.pickup_booked:
            order.pickup_booked = True
            if self.push_url and self.push_delays_s:
                self._spawn(self._auto_track(order))
        return self._reply(
            Order={"OrderCode": order.order_code, "PickupCode": f"PK{order.waybill[-6:]}"}
        )

    def _subscribe(self, data: dict[str, Any]) -> web.Response:
        if not self._by_waybill(str(data.get("LogisticCode", ""))):
            return self._reply("105", "unknown LogisticCode")
        return self._reply()

    def _query(self, data: dict[str, Any]) -> web.Response:
        order = self._by_waybill(str(data.get("LogisticCode", "")))
        if order is None:
            return self._reply("105", "unknown LogisticCode")
        return self._reply(**self._track_item(order))

    def _cancel(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("OrderCode", "")))
        if order is None or order.state != "0":
            return self._reply("105", "cannot cancel")
        del self.orders[order.order_code]
        return self._reply()

    def _cancel_pickup(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("OrderCode", "")))
        if order is None:
            return self._reply("105", "unknown OrderCode")
        order.pickup_booked = False
        return self._reply()

    def _by_waybill(self, waybill: str) -> Order | None:
        return next((o for o in self.orders.values() if o.waybill == waybill), None)

    # ---- tracking pushes ----------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto_track(self, order: Order) -> None:
        steps = [("1", "1", "快件已揽收"), ("2", "201", "运输中"), ("3", "301", "已签收")]
        for delay, (state, state_ex, text) in zip(self.push_delays_s, steps, strict=False):
            await asyncio.sleep(delay)  # the parcel's journey takes time
            await self.advance(order.waybill, state, state_ex, text)

    def _track_item(self, order: Order) -> dict[str, Any]:
        state_ex = order.history[-1][2] if order.history else ""
        return {
            "EBusinessID": self.ebusiness_id,
            "ShipperCode": order.shipper,
            "LogisticCode": order.waybill,
            "OrderCode": order.order_code,
            "Success": True,
            "State": order.state,
            "StateEx": state_ex,
            "Traces": [{"AcceptTime": at, "AcceptStation": text} for at, text, _ in order.history],
        }

    async def advance(
        self, waybill: str, state: str, state_ex: str | None = None, text: str = ""
    ) -> None:
        """Move a shipment to ``state`` now and push it to the gateway (retrying until it
        answers Success)."""
        order = self._by_waybill(waybill)
        if order is None:
            raise KeyError(waybill)
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        order.state = state
        order.history.append((now, text or state, state_ex or ""))
        await self.push([self._track_item(order)])

    async def push(self, items: list[dict[str, Any]], *, attempts: int = 20) -> None:
        """Send one signed RequestType 101 push with ``items``."""
        if not self.push_url or self._session is None:
            return
        data = json.dumps(
            {"EBusinessID": self.ebusiness_id, "PushTime": time.strftime("%Y-%m-%d %H:%M:%S"),
             "Count": len(items), "Data": items}, ensure_ascii=False,
        )  # fmt: skip
        body = wire.form(wire.PUSH, data, self.ebusiness_id, self.app_key)
        for attempt in range(attempts):
            try:
                async with self._session.post(self.push_url, data=body) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status == 200 and reply.get("Success"):
                        self.pushes_sent += 1
                        return
            except (aiohttp.ClientError, json.JSONDecodeError, TimeoutError) as exc:
                log.info("push to %s failed: %s", self.push_url, exc)
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))  # the real API retries pushes too
        log.warning("gave up pushing %s", [i.get("LogisticCode") for i in items])
