"""A Kdniao-compatible carrier API on loopback, with knobs for the faults real ones have.

It checks every DataSign, keeps orders by OrderCode (a repeated one is refused with ResultCode
106 and the existing order, as the real API does), books pickups for e-waybills (1001 with a
LogisticCode) and home pickups (1001 without one: the order and its waybill are made here),
and, once a pickup is booked and the waybill subscribed, moves the parcel along (courier
assigned, collected, in transit, signed), pushing each step to the gateway's webhook signed:
RequestType 102 for the pickup order, 101 for tracking.
"""

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.carriers import kdniao_wire as wire
from gateway.carriers.base import parse_wire_time, wire_time
from simulator.carrier_http import CarrierKnobs, SimulatedCarrierServer

__all__ = ["CarrierKnobs", "KdniaoSimulator", "Order"]

PATH = "/Ebusiness/EbusinessOrderHandle.aspx"


@dataclass
class Order:
    """An order the simulated carrier holds."""

    order_code: str
    waybill: str
    shipper: str
    sender_province: str = ""
    pickup_booked: bool = False
    pickup_code: str = ""
    subscribed: bool = False
    cancelled: bool = False
    state: str = "0"
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (time, text, StateEx)
    journey: "asyncio.Task[None] | None" = None


class KdniaoSimulator(SimulatedCarrierServer):
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
        super().__init__(PATH, knobs, push_url)
        self.ebusiness_id = ebusiness_id
        self.app_key = app_key
        self.push_delays_s = push_delays_s
        self.orders: dict[str, Order] = {}
        self.requests: Counter[str] = Counter()
        self.shipments_created: Counter[str] = Counter()
        self.pickups_booked: Counter[str] = Counter()
        self._waybills = itertools.count(880_000_000_001)

    # ---- requests -----------------------------------------------------------------------

    def _reply(self, code: str = wire.OK, reason: str = "", **extra: Any) -> web.Response:
        body = {"EBusinessID": self.ebusiness_id, "Success": code == wire.OK,
                "ResultCode": code, "Reason": reason, **extra}  # fmt: skip
        return web.json_response(body)

    def rate_limited_body(self) -> dict[str, Any]:
        """ResultCode 109, sent with HTTP 429 and Retry-After."""
        return {"EBusinessID": self.ebusiness_id, "Success": False,
                "ResultCode": wire.RATE_LIMITED, "Reason": "too many requests"}  # fmt: skip

    async def handle(self, form: Mapping[str, str]) -> web.Response:
        """Check the envelope and signature, then dispatch on RequestType."""
        if form.get("EBusinessID") != self.ebusiness_id or not wire.sign_ok(form, self.app_key):
            return self._reply(wire.BAD_SIGN, "DataSign verification failed")
        try:
            data = json.loads(form["RequestData"])
            if not isinstance(data, dict):
                raise TypeError("RequestData is not an object")
        except (KeyError, TypeError, json.JSONDecodeError):
            return self._reply(wire.BAD_DATA, "RequestData is not a JSON object")
        request_type = form.get("RequestType", "")
        self.requests[request_type] += 1
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
            return self._reply(wire.UNKNOWN_REQUEST_TYPE, f"unknown RequestType {request_type}")
        return handler(data)

    def _order_json(self, order: Order) -> dict[str, Any]:
        return {
            "OrderCode": order.order_code,
            "ShipperCode": order.shipper,
            "LogisticCode": order.waybill,
            "PickupCode": order.pickup_code,
        }

    def _duplicate(self, order: Order) -> web.Response:
        return self._reply(wire.DUPLICATE_ORDER, "订单编号已存在", Order=self._order_json(order))

    def _new_order(self, data: dict[str, Any]) -> Order | web.Response:
        code = str(data.get("OrderCode", ""))
        if not code:
            return self._reply(wire.BAD_DATA, "OrderCode is required")
        sender = data.get("Sender")
        province = str(sender.get("ProvinceName", "")) if isinstance(sender, dict) else ""
        if province in self.knobs.refuse_provinces:
            return self._reply(wire.BAD_DATA, f"超区: {province} is out of the service area")
        shipper = str(data.get("ShipperCode") or "YTO")
        order = Order(code, f"{shipper}{next(self._waybills)}", shipper, province)
        self.orders[code] = order
        self.shipments_created[code] += 1
        return order

    def _create(self, data: dict[str, Any]) -> web.Response:
        existing = self.orders.get(str(data.get("OrderCode", "")))
        if existing is not None:
            return self._duplicate(existing)
        order = self._new_order(data)
        if isinstance(order, web.Response):
            return order
        return self._reply(Order=self._order_json(order))

    def _book(self, data: dict[str, Any]) -> web.Response:
        window = self._window(data)
        if window is not None:
            return window
        code = str(data.get("OrderCode", ""))
        order = self.orders.get(code)
        if order is None and data.get("LogisticCode"):
            return self._reply(wire.BAD_DATA, "unknown OrderCode")
        if order is not None and (order.pickup_booked or order.cancelled):
            return self._duplicate(order)
        if order is None:  # a home pickup: the courier order makes the waybill
            refused = self.slot_refused(parse_wire_time(str(data.get("StartDate", ""))))
            if refused is not None:
                return self._reply(wire.BAD_DATA, refused)
            made = self._new_order(data)
            if isinstance(made, web.Response):
                return made
            order = made
        order.pickup_booked = True
        order.pickup_code = f"PK{order.waybill[-6:]}"
        self.pickups_booked[code] += 1
        self._start_journey(order)
        return self._reply(Order=self._order_json(order))

    def _window(self, data: dict[str, Any]) -> web.Response | None:
        start = parse_wire_time(str(data.get("StartDate", "")))
        end = parse_wire_time(str(data.get("EndDate", "")))
        if start is None or end is None or end <= start:
            return self._reply(wire.BAD_DATA, "StartDate/EndDate is not a time window")
        return None

    def _subscribe(self, data: dict[str, Any]) -> web.Response:
        order = self._by_waybill(str(data.get("LogisticCode", "")))
        if order is None:
            return self._reply(wire.BAD_DATA, "unknown LogisticCode")
        order.subscribed = True
        self._start_journey(order)
        return self._reply()

    def _query(self, data: dict[str, Any]) -> web.Response:
        order = self._by_waybill(str(data.get("LogisticCode", "")))
        if order is None:
            return self._reply(wire.BAD_DATA, "unknown LogisticCode")
        return self._reply(**self.track_item(order))

    def _cancel(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("OrderCode", "")))
        if order is None:
            return self._reply(wire.BAD_DATA, "unknown OrderCode")
        if order.state != "0":
            return self._reply(wire.CANNOT_CANCEL, "已揽收, 不能取消")
        self._stop_journey(order)
        order.cancelled = True
        order.pickup_booked = False
        return self._reply()

    def _cancel_pickup(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("OrderCode", "")))
        if order is None:
            return self._reply(wire.BAD_DATA, "unknown OrderCode")
        if order.state != "0":
            return self._reply(wire.CANNOT_CANCEL, "快递员已取件, 不能取消")
        self._stop_journey(order)
        order.pickup_booked = False
        return self._reply()

    def _by_waybill(self, waybill: str) -> Order | None:
        return next((o for o in self.orders.values() if o.waybill == waybill), None)

    # ---- the parcel's journey -----------------------------------------------------------

    def _start_journey(self, order: Order) -> None:
        """The courier comes once the pickup is booked and the waybill subscribed."""
        ready = order.pickup_booked and order.subscribed and not order.cancelled
        if ready and order.journey is None and self.push_delays_s:
            order.journey = self.spawn(self._journey(order))

    def _stop_journey(self, order: Order) -> None:
        if order.journey is not None:
            order.journey.cancel()
            order.journey = None

    async def _journey(self, order: Order) -> None:
        steps = [("1", "1", "快件已揽收"), ("2", "201", "运输中"), ("3", "301", "已签收")]
        await self.push_pickup(order.waybill, wire.PICKUP_ASSIGNED, "快递员 王师傅 已接单")
        for delay, (state, state_ex, text) in zip(self.push_delays_s, steps, strict=False):
            await asyncio.sleep(delay)  # the parcel's journey takes time
            await self.advance(order.waybill, state, state_ex, text)

    def track_item(self, order: Order) -> dict[str, Any]:
        """The order's tracking as a 1002 reply or a 101 push item shows it."""
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

    def _order_of(self, waybill: str) -> Order:
        order = self._by_waybill(waybill)
        if order is None:
            raise KeyError(waybill)
        return order

    async def advance(
        self, waybill: str, state: str, state_ex: str | None = None, text: str = ""
    ) -> None:
        """Move a shipment to ``state`` now and push it (RequestType 101) to the gateway,
        retrying until it answers Success. With the ``pushes`` knob off, only queries see it."""
        order = self._order_of(waybill)
        now = wire_time(datetime.now(UTC))
        order.state = state
        order.history.append((now, text or state, state_ex or ""))
        await self.push([self.track_item(order)])

    async def push(self, items: list[dict[str, Any]], *, request_type: str = wire.PUSH) -> None:
        """Send one signed push with ``items``."""
        data = json.dumps(
            {"EBusinessID": self.ebusiness_id, "PushTime": time.strftime("%Y-%m-%d %H:%M:%S"),
             "Count": len(items), "Data": items}, ensure_ascii=False,
        )  # fmt: skip
        body = wire.form(request_type, data, self.ebusiness_id, self.app_key)
        codes = [i.get("LogisticCode") for i in items]
        await self.deliver(body, lambda reply: bool(reply.get("Success")), f"kdniao {codes}")

    async def push_pickup(self, waybill: str, state: str, reason: str = "") -> None:
        """Send a RequestType 102 push about the pickup order (courier assigned, failed...)."""
        order = self._order_of(waybill)
        item = {
            "OrderCode": order.order_code,
            "ShipperCode": order.shipper,
            "LogisticCode": order.waybill,
            "State": state,
            "Reason": reason,
            "CreateTime": wire_time(datetime.now(UTC)),
            "PickerInfo": [{"PersonName": "王师傅", "PersonTel": "13800000000"}],
        }
        await self.push([item], request_type=wire.PUSH_PICKUP)
