"""SF Express (顺丰) adapter on the 丰桥 open platform: orders, cancellation, routes, pushes.

How the carrier interface maps onto SF:

- ``create_shipment`` and ``book_home_pickup`` are both ``EXP_RECE_CREATE_ORDER`` with
  ``isDocall=1`` and ``sendStartTm``: SF books the courier together with the order and assigns
  the waybill in the reply. ``book_pickup`` for a created shipment therefore has nothing left
  to call and returns the booking the order made.
- ``cancel_shipment``, ``cancel_pickup`` and ``cancel_home_pickup`` are ``EXP_RECE_UPDATE_ORDER``
  with ``dealType=2``: SF cancels a courier call only by cancelling its order.
- ``subscribe`` has nothing to call: route pushes are set up once per partner account on the
  platform and cover every waybill the account creates.
- A repeated ``orderId`` is refused with errorCode 8016; the adapter then reads the existing
  order (``EXP_RECE_SEARCH_ORDER_RESP``) and returns its waybill, so a retry after a timed-out
  create never makes a second shipment.
"""

import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.carriers import sf_wire as wire
from gateway.carriers.base import (
    Address,
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    CarrierUnavailable,
    DuplicateOrder,
    PickupBooking,
    PushVerificationError,
    Shipment,
    ShipmentRequest,
    TrackingState,
    TrackingUpdate,
    parse_wire_time,
    wire_time,
)
from gateway.carriers.resilience import CircuitBreaker, Resilience
from gateway.carriers.transport import json_object, post_form

log = logging.getLogger(__name__)

SENDER, RECEIVER = 1, 2  # contactType


def _contact(a: Address, contact_type: int) -> dict[str, Any]:
    return {
        "contactType": contact_type,
        "contact": a.name,
        "mobile": a.phone,
        "country": "CN",
        "province": a.province,
        "city": a.city,
        "county": a.district,
        "address": a.street,
    }


class SfExpressCarrier:
    """The SF open platform at ``url`` (the ``/std/service`` endpoint)."""

    name = "sf"

    def __init__(
        self,
        url: str,
        partner_id: str,
        checkword: str,
        session: aiohttp.ClientSession,
        *,
        monthly_card: str = "",
        express_type: str = "2",
        timeout_s: float = 5.0,
        resilience: Resilience | None = None,
    ) -> None:
        self._url = url
        self._partner_id = partner_id
        self._checkword = checkword
        self._session = session
        self._monthly_card = monthly_card
        self.express_type = express_type
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.resilience = resilience or Resilience(CircuitBreaker(self.name))
        self.breaker = self.resilience.breaker

    # ---- transport ----------------------------------------------------------------------

    async def _call(self, service_code: str, msg_data: Mapping[str, Any]) -> dict[str, Any]:
        """One platform call; returns the business result (``success``, ``errorCode``, ...)."""
        text = json.dumps(msg_data, ensure_ascii=False)

        async def once() -> dict[str, Any]:
            timestamp = str(int(time.time() * 1000))
            body = wire.form(
                self._partner_id,
                service_code,
                text,
                timestamp,
                self._checkword,
                uuid.uuid4().hex,
            )
            reply = json_object(
                await post_form(
                    self._session, self._url, body, carrier=self.name, timeout=self._timeout
                ),
                self.name,
            )
            self._check_platform(reply)
            data = reply.get("apiResultData")
            if not isinstance(data, str):
                raise CarrierMalformedReply(self.name, "reply without apiResultData")
            result = json_object(data, self.name)
            if not isinstance(result.get("success"), bool):
                raise CarrierMalformedReply(self.name, "apiResultData without success")
            return result

        return await self.resilience.call(f"sf {service_code}", once)

    def _check_platform(self, reply: Mapping[str, Any]) -> None:
        code = str(reply.get("apiResultCode", ""))
        message = str(reply.get("apiErrorMsg") or "")
        if code == wire.API_OK:
            return
        if not code:
            raise CarrierMalformedReply(self.name, "reply without apiResultCode")
        if code == wire.API_RATE_LIMITED:
            raise CarrierRateLimited(self.name, f"{code} {message}")
        if code in wire.API_RETRYABLE:
            raise CarrierUnavailable(self.name, f"{code} {message}")
        raise CarrierRejected(self.name, code, message)

    async def _request(self, service_code: str, msg_data: Mapping[str, Any]) -> dict[str, Any]:
        """A call that must succeed; returns its ``msgData``."""
        result = await self._call(service_code, msg_data)
        if result["success"]:
            data = result.get("msgData")
            return data if isinstance(data, dict) else {}
        code = str(result.get("errorCode", ""))
        message = str(result.get("errorMsg") or "")
        if code == wire.DUPLICATE_ORDER:
            raise DuplicateOrder(self.name, code, message, None)
        raise CarrierRejected(self.name, code, message)

    # ---- orders -------------------------------------------------------------------------

    async def _order(self, req: ShipmentRequest) -> tuple[str, str]:
        """Create the order with its courier call, or find it after a repeat: (waybill, type)."""
        express_type = req.product or self.express_type
        data = {
            "language": "zh-CN",
            "orderId": req.order_code,
            "monthlyCard": self._monthly_card,
            "payMethod": 1,
            "expressTypeId": int(express_type) if express_type.isdigit() else express_type,
            "parcelQty": req.parcel.count,
            "totalWeight": req.parcel.weight_kg,
            "isDocall": 1,
            "sendStartTm": wire_time(req.pickup_start),
            "remark": req.remark,
            "contactInfoList": [_contact(req.sender, SENDER), _contact(req.receiver, RECEIVER)],
            "cargoDetails": [{"name": req.parcel.description, "count": req.parcel.count}],
        }
        try:
            order = await self._request(wire.CREATE_ORDER, data)
        except DuplicateOrder:
            log.info("sf order %s exists already; reading it", req.order_code)
            order = await self._request(
                wire.SEARCH_ORDER,
                {"orderId": req.order_code, "searchType": "1", "language": "zh-CN"},
            )
        if order.get("filterResult") == wire.FILTER_NOT_SERVICEABLE:
            raise CarrierRejected(self.name, "filterResult=3", "address cannot be served")
        return self._waybill(order), express_type

    def _waybill(self, order: Mapping[str, Any]) -> str:
        for info in order.get("waybillNoInfoList") or []:
            if isinstance(info, dict) and info.get("waybillType", wire.WAYBILL_MAIN) == 1:
                number = info.get("waybillNo")
                if isinstance(number, str) and number:
                    return number
        raise CarrierMalformedReply(self.name, "order reply without a main waybillNo")

    async def _cancel(self, order_code: str, waybill: str) -> None:
        data = {
            "orderId": order_code,
            "dealType": wire.DEAL_CANCEL,
            "waybillNoInfoList": [{"waybillType": wire.WAYBILL_MAIN, "waybillNo": waybill}],
        }
        result = await self._request(wire.UPDATE_ORDER, data)
        if result.get("resStatus") != wire.CANCEL_DONE:
            status = result.get("resStatus")
            raise CarrierRejected(self.name, f"resStatus={status}", "not cancelled")

    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """``EXP_RECE_CREATE_ORDER`` (with the courier call for ``req.pickup_start``)."""
        waybill, express_type = await self._order(req)
        return Shipment(self.name, req.order_code, waybill, express_type)

    async def cancel_shipment(self, shipment: Shipment) -> None:
        """``EXP_RECE_UPDATE_ORDER`` dealType 2."""
        await self._cancel(shipment.order_code, shipment.waybill)

    async def book_pickup(self, shipment: Shipment, req: ShipmentRequest) -> PickupBooking:
        """The courier was booked with the order (``isDocall``): nothing more to call."""
        return PickupBooking(
            self.name,
            shipment.order_code,
            shipment.order_code,
            req.pickup_start,
            req.pickup_end,
            shipment.waybill,
            shipment.product,
        )

    async def cancel_pickup(self, shipment: Shipment) -> None:
        """SF cancels a courier call only with its order: ``EXP_RECE_UPDATE_ORDER`` dealType 2."""
        await self._cancel(shipment.order_code, shipment.waybill)

    async def book_home_pickup(self, req: ShipmentRequest) -> PickupBooking:
        """``EXP_RECE_CREATE_ORDER`` from the customer's address with the courier call."""
        waybill, express_type = await self._order(req)
        return PickupBooking(
            self.name,
            req.order_code,
            req.order_code,
            req.pickup_start,
            req.pickup_end,
            waybill,
            express_type,
        )

    async def cancel_home_pickup(self, booking: PickupBooking) -> None:
        """``EXP_RECE_UPDATE_ORDER`` dealType 2."""
        await self._cancel(booking.order_code, booking.waybill)

    # ---- tracking -----------------------------------------------------------------------

    async def subscribe(self, shipment: Shipment) -> None:
        """Route pushes cover every waybill of the partner account: nothing to call."""

    async def query(self, shipment: Shipment) -> list[TrackingUpdate]:
        """``EXP_RECE_SEARCH_ROUTES`` by waybill: every route, oldest first."""
        data = {
            "language": "0",
            "trackingType": "1",
            "trackingNumber": [shipment.waybill],
            "methodType": "1",
        }
        result = await self._request(wire.SEARCH_ROUTES, data)
        try:
            updates = []
            for resp in result.get("routeResps") or []:
                waybill = str(resp["mailNo"])
                for route in resp.get("routes") or []:
                    updates.append(self._update(route, waybill, shipment.order_code))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CarrierMalformedReply(self.name, f"routes reply: {exc}") from None
        return sorted(updates, key=lambda u: u.at)

    def parse_push(self, form: Mapping[str, str]) -> list[TrackingUpdate]:
        """A route push, its msgDigest checked."""
        if form.get("serviceCode") != wire.ROUTE_PUSH:
            raise PushVerificationError(
                self.name, f"unexpected serviceCode {form.get('serviceCode')!r}"
            )
        if form.get("partnerID") != self._partner_id:
            raise PushVerificationError(self.name, "push for another partnerID")
        if not wire.digest_ok(form, self._checkword):
            raise PushVerificationError(self.name, "msgDigest does not match")
        try:
            routes = json.loads(form["msgData"])["Body"]["WaybillRoute"]
            if not isinstance(routes, list):
                raise TypeError("WaybillRoute is not a list")
            return [self._update(r, str(r["mailno"]), r.get("orderid")) for r in routes]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PushVerificationError(self.name, f"malformed push: {exc}") from None

    def _update(
        self, route: Mapping[str, Any], waybill: str, order_code: str | None
    ) -> TrackingUpdate:
        if not waybill:
            raise ValueError("route without a waybill")
        op_code = str(route["opCode"])
        at = parse_wire_time(str(route.get("acceptTime", "")))
        if at is None:
            raise ValueError(f"bad acceptTime {route.get('acceptTime')!r}")
        state = wire.route_state(op_code)
        remark = str(route.get("remark", ""))
        problem = None
        if state is TrackingState.PROBLEM:
            reason = str(route.get("reasonName") or "")
            problem = f"{wire.PROBLEMS[op_code]} (opCode {op_code})"
            if reason:
                problem += f": {reason}"
        return TrackingUpdate(
            carrier=self.name,
            waybill=waybill,
            order_code=order_code,
            state=state,
            carrier_state=op_code,
            detail=" ".join(filter(None, (str(route.get("acceptAddress", "")), remark))),
            at=at,
            raw=dict(route),
            problem=problem,
        )

    def push_reply(self, ok: bool, reason: str = "") -> dict[str, Any]:
        """What SF expects back from a push."""
        return {
            "return_code": wire.PUSH_OK if ok else wire.PUSH_FAILED,
            "return_msg": "成功" if ok else reason,
            "time": wire_time(datetime.now(UTC)),
        }
