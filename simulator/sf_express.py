"""An SF Express (丰桥 open platform) compatible API on loopback, with the shared fault knobs.

It checks partnerID and msgDigest on every request, keeps orders by orderId (a repeated one is
refused with errorCode 8016, as SF does; ``EXP_RECE_SEARCH_ORDER_RESP`` then finds it), cancels
orders until the courier has collected them, answers route queries, and for every order placed
with a courier call (``isDocall=1``) moves the parcel along — collected (opCode 50), in transit
(30), signed (80) — pushing each route to the gateway signed like a request.
"""

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.carriers import sf_wire as wire
from gateway.carriers.base import parse_wire_time, wire_time
from simulator.carrier_http import CarrierKnobs, SimulatedCarrierServer

PATH = "/std/service"

# Business error codes this simulator uses besides SF's 8016 (duplicate order).
ERR_BAD_FIELD = "1010"
ERR_NOT_FOUND = "8018"
ERR_CANNOT_CANCEL = "8037"
ERR_SLOT_REFUSED = "8114"


@dataclass
class Route:
    """One route node of a waybill."""

    op_code: str
    remark: str
    at: str
    address: str = "上海市"
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:15])


@dataclass
class SfOrder:
    """An order the simulated SF holds."""

    order_id: str
    waybill: str
    express_type: str
    sender_province: str
    filter_result: int
    docall: bool
    cancelled: bool = False
    routes: list[Route] = field(default_factory=list)

    @property
    def collected(self) -> bool:
        """True once the courier has the parcel."""
        return any(r.op_code in ("50", "54") for r in self.routes)


class SfExpressSimulator(SimulatedCarrierServer):
    """The simulated SF platform. ``await start()`` returns the ``/std/service`` URL."""

    def __init__(
        self,
        partner_id: str,
        checkword: str,
        *,
        push_url: str | None = None,
        push_delays_s: tuple[float, ...] = (0.05, 0.05, 0.05),
        knobs: CarrierKnobs | None = None,
    ) -> None:
        super().__init__(PATH, knobs, push_url)
        self.partner_id = partner_id
        self.checkword = checkword
        self.push_delays_s = push_delays_s
        self.orders: dict[str, SfOrder] = {}
        self.requests: Counter[str] = Counter()
        self.orders_created: Counter[str] = Counter()
        self._waybills = itertools.count(100_000_000_001)
        self._journeys: dict[str, asyncio.Task[None]] = {}

    # ---- envelope -----------------------------------------------------------------------

    def _platform(self, code: str, message: str = "", result: Any = None) -> web.Response:
        body = {
            "apiResultCode": code,
            "apiErrorMsg": message,
            "apiResponseID": uuid.uuid4().hex,
            "apiResultData": None if result is None else json.dumps(result, ensure_ascii=False),
        }
        return web.json_response(body)

    def _ok(self, msg_data: dict[str, Any]) -> web.Response:
        result = {"success": True, "errorCode": wire.BIZ_OK, "errorMsg": None, "msgData": msg_data}
        return self._platform(wire.API_OK, result=result)

    def _error(self, code: str, message: str) -> web.Response:
        result = {"success": False, "errorCode": code, "errorMsg": message, "msgData": None}
        return self._platform(wire.API_OK, result=result)

    def rate_limited_body(self) -> dict[str, Any]:
        """apiResultCode A1005 (流量受控), sent with HTTP 429 and Retry-After."""
        return {"apiResultCode": wire.API_RATE_LIMITED, "apiErrorMsg": "流量受控",
                "apiResponseID": uuid.uuid4().hex, "apiResultData": None}  # fmt: skip

    async def handle(self, form: Mapping[str, str]) -> web.Response:
        """Check partnerID and msgDigest, then dispatch on serviceCode."""
        missing = [f for f in ("partnerID", "requestID", "serviceCode", "timestamp",
                               "msgDigest", "msgData") if not form.get(f)]  # fmt: skip
        if missing:
            return self._platform(wire.API_MISSING_FIELD, f"missing {', '.join(missing)}")
        if form["partnerID"] != self.partner_id or not wire.digest_ok(form, self.checkword):
            return self._platform(wire.API_BAD_DIGEST, "数字签名无效")
        try:
            data = json.loads(form["msgData"])
            if not isinstance(data, dict):
                raise TypeError("msgData is not an object")
        except (TypeError, json.JSONDecodeError):
            return self._error(ERR_BAD_FIELD, "msgData is not a JSON object")
        service = form["serviceCode"]
        self.requests[service] += 1
        handlers = {
            wire.CREATE_ORDER: self._create,
            wire.SEARCH_ORDER: self._search_order,
            wire.UPDATE_ORDER: self._update_order,
            wire.SEARCH_ROUTES: self._routes,
        }
        handler = handlers.get(service)
        if handler is None:
            return self._platform(wire.API_NO_SERVICE, f"no permission for {service}")
        return handler(data)

    # ---- services -----------------------------------------------------------------------

    def _order_json(self, order: SfOrder) -> dict[str, Any]:
        return {
            "orderId": order.order_id,
            "originCode": "021",
            "destCode": "021",
            "filterResult": order.filter_result,
            "remark": "" if order.filter_result != wire.FILTER_NOT_SERVICEABLE else "超范围",
            "waybillNoInfoList": [{"waybillType": wire.WAYBILL_MAIN, "waybillNo": order.waybill}],
        }

    def _create(self, data: dict[str, Any]) -> web.Response:
        order_id = str(data.get("orderId") or "")
        contacts = data.get("contactInfoList")
        if not order_id or not isinstance(contacts, list) or len(contacts) < 2:
            return self._error(ERR_BAD_FIELD, "orderId and contactInfoList are required")
        if order_id in self.orders:
            return self._error(wire.DUPLICATE_ORDER, "重复下单")
        if data.get("isDocall") == 1:
            no_courier = self.slot_refused(parse_wire_time(str(data.get("sendStartTm", ""))))
            if no_courier is not None:
                return self._error(ERR_SLOT_REFUSED, no_courier)
        sender = next((c for c in contacts if isinstance(c, dict) and c.get("contactType") == 1),
                      {})  # fmt: skip
        province = str(sender.get("province", ""))
        refused = province in self.knobs.refuse_provinces
        order = SfOrder(
            order_id=order_id,
            waybill=f"SF{next(self._waybills)}",
            express_type=str(data.get("expressTypeId", "2")),
            sender_province=province,
            filter_result=wire.FILTER_NOT_SERVICEABLE if refused else 2,
            docall=data.get("isDocall") == 1 and not refused,
        )
        self.orders[order_id] = order
        self.orders_created[order_id] += 1
        if order.docall and self.push_delays_s:
            self._journeys[order_id] = self.spawn(self._journey(order))
        return self._ok(self._order_json(order))

    def _search_order(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("orderId") or ""))
        if order is None:
            return self._error(ERR_NOT_FOUND, "订单不存在")
        return self._ok(self._order_json(order))

    def _update_order(self, data: dict[str, Any]) -> web.Response:
        order = self.orders.get(str(data.get("orderId") or ""))
        if order is None:
            return self._error(ERR_NOT_FOUND, "订单不存在")
        if data.get("dealType") != wire.DEAL_CANCEL:
            return self._error(ERR_BAD_FIELD, "only dealType 2 (cancel) is simulated")
        if order.collected:
            return self._error(ERR_CANNOT_CANCEL, "已揽收, 不能取消")
        journey = self._journeys.pop(order.order_id, None)
        if journey is not None:
            journey.cancel()
        order.cancelled = True
        return self._ok(
            {
                "orderId": order.order_id,
                "resStatus": wire.CANCEL_DONE,
                "waybillNoInfoList": [{"waybillType": 1, "waybillNo": order.waybill}],
            }
        )

    def _routes(self, data: dict[str, Any]) -> web.Response:
        numbers = data.get("trackingNumber")
        if not isinstance(numbers, list):
            return self._error(ERR_BAD_FIELD, "trackingNumber must be a list")
        resps = []
        for number in numbers:
            order = self._by_waybill(str(number))
            routes = [] if order is None else order.routes
            resps.append({"mailNo": str(number), "routes": [self._route_json(r) for r in routes]})
        return self._ok({"routeResps": resps})

    def _route_json(self, route: Route) -> dict[str, Any]:
        return {
            "acceptTime": route.at,
            "acceptAddress": route.address,
            "remark": route.remark,
            "opCode": route.op_code,
        }

    def _by_waybill(self, waybill: str) -> SfOrder | None:
        return next((o for o in self.orders.values() if o.waybill == waybill), None)

    # ---- the parcel's journey -----------------------------------------------------------

    async def _journey(self, order: SfOrder) -> None:
        steps = [("50", "顺丰速运 已收取快件"), ("30", "快件在【上海集散中心】完成分拣"),
                 ("80", "已签收, 感谢使用顺丰")]  # fmt: skip
        for delay, (op_code, remark) in zip(self.push_delays_s, steps, strict=False):
            await asyncio.sleep(delay)  # the parcel's journey takes time
            await self.advance(order.waybill, op_code, remark)

    async def advance(self, waybill: str, op_code: str, remark: str = "") -> None:
        """Add a route node now and push it to the gateway (retrying until it says 0000).
        With the ``pushes`` knob off, only route queries see it."""
        order = self._by_waybill(waybill)
        if order is None:
            raise KeyError(waybill)
        route = Route(op_code, remark or op_code, wire_time(datetime.now(UTC)))
        order.routes.append(route)
        await self.push(order, [route])

    async def push(self, order: SfOrder, routes: list[Route]) -> None:
        """One signed route push."""
        body = {
            "Body": {
                "WaybillRoute": [
                    {
                        "id": r.node_id,
                        "mailno": order.waybill,
                        "orderid": order.order_id,
                        "acceptTime": r.at,
                        "acceptAddress": r.address,
                        "remark": r.remark,
                        "opCode": r.op_code,
                        "reasonCode": "",
                        "reasonName": "",
                    }
                    for r in routes
                ]
            }
        }
        form = wire.form(
            self.partner_id,
            wire.ROUTE_PUSH,
            json.dumps(body, ensure_ascii=False),
            str(int(time.time() * 1000)),
            self.checkword,
            uuid.uuid4().hex,
        )
        await self.deliver(
            form, lambda reply: reply.get("return_code") == wire.PUSH_OK, f"sf {order.waybill}"
        )
