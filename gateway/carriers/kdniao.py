"""Kdniao adapter: e-waybills, pickup booking, tracking subscription, queries and pushes."""

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.carriers import kdniao_wire as wire
from gateway.carriers.base import (
    Address,
    CarrierMalformedReply,
    CarrierRejected,
    CarrierTimeout,
    CarrierUnavailable,
    DuplicateOrder,
    PickupBooking,
    PushVerificationError,
    Shipment,
    ShipmentRequest,
    TrackingUpdate,
)

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _address(a: Address) -> dict[str, str]:
    return {
        "Name": a.name,
        "Mobile": a.phone,
        "ProvinceName": a.province,
        "CityName": a.city,
        "ExpAreaName": a.district,
        "Address": a.street,
    }


def _parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


class KdniaoCarrier:
    """The Kdniao aggregated API at ``url`` (the full request endpoint)."""

    name = "kdniao"

    def __init__(
        self,
        url: str,
        ebusiness_id: str,
        app_key: str,
        session: aiohttp.ClientSession,
        *,
        shipper_code: str = "YTO",
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self._url = url
        self._ebusiness_id = ebusiness_id
        self._app_key = app_key
        self._session = session
        self.shipper_code = shipper_code
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff_s = backoff_s

    # ---- transport ----------------------------------------------------------------------

    async def _call(self, request_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """One API call with retries on timeouts and 5xx; never retries a rejection."""
        body = wire.form(
            request_type, json.dumps(data, ensure_ascii=False), self._ebusiness_id, self._app_key
        )
        for attempt in range(self._retries + 1):
            try:
                return await self._post(body)
            except (CarrierTimeout, CarrierUnavailable) as exc:
                if attempt == self._retries:
                    raise
                delay = self._backoff_s * 2**attempt * random.uniform(0.5, 1.5)
                log.info(
                    "kdniao %s failed (%s); retry %d in %.2fs",
                    request_type,
                    exc,
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)  # back-off before the retry
        raise AssertionError("unreachable")

    async def _post(self, body: dict[str, str]) -> dict[str, Any]:
        try:
            async with self._session.post(self._url, data=body, timeout=self._timeout) as resp:
                if resp.status >= 500:
                    raise CarrierUnavailable(self.name, f"HTTP {resp.status}")
                text = await resp.text()
        except TimeoutError:
            raise CarrierTimeout(self.name, "no reply in time") from None
        except aiohttp.ClientError as exc:
            raise CarrierUnavailable(self.name, str(exc)) from None
        try:
            reply = json.loads(text)
        except json.JSONDecodeError:
            raise CarrierMalformedReply(self.name, f"not JSON: {text[:80]!r}") from None
        if not isinstance(reply, dict) or "ResultCode" not in reply:
            raise CarrierMalformedReply(self.name, f"unexpected reply {text[:80]!r}")
        return reply

    def _check(self, reply: dict[str, Any]) -> None:
        code = str(reply.get("ResultCode"))
        if code == wire.DUPLICATE_ORDER:
            order = reply.get("Order") or {}
            raise DuplicateOrder(
                self.name, code, str(reply.get("Reason", "")), order.get("LogisticCode")
            )
        if code != wire.OK or not reply.get("Success"):
            raise CarrierRejected(self.name, code, str(reply.get("Reason", "")))

    # ---- the carrier interface ----------------------------------------------------------

    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """RequestType 1007. A repeated order code (after a lost reply) returns the original."""
        data = {
            "OrderCode": req.order_code,
            "ShipperCode": self.shipper_code,
            "PayType": 1,
            "ExpType": 1,
            "Sender": _address(req.sender),
            "Receiver": _address(req.receiver),
            "Commodity": [{"GoodsName": req.parcel.description}],
            "Weight": req.parcel.weight_kg,
            "Quantity": req.parcel.count,
            "IsReturnPrintTemplate": "0",
        }
        reply = await self._call(wire.CREATE_EWAYBILL, data)
        try:
            self._check(reply)
        except DuplicateOrder as dup:
            if not dup.waybill:
                raise
            log.info("order %s already created: waybill %s", req.order_code, dup.waybill)
            return Shipment(self.name, req.order_code, dup.waybill, None, reply)
        order = reply.get("Order") or {}
        waybill = order.get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            raise CarrierMalformedReply(self.name, "e-waybill reply without LogisticCode")
        return Shipment(self.name, req.order_code, waybill, None, reply)

    async def cancel_shipment(self, order_code: str, waybill: str) -> None:
        """RequestType 1147."""
        data = {"ShipperCode": self.shipper_code, "OrderCode": order_code, "ExpNo": waybill}
        self._check(await self._call(wire.CANCEL_EWAYBILL, data))

    async def book_pickup(self, shipment: Shipment, req: ShipmentRequest) -> PickupBooking:
        """RequestType 1001."""
        data = {
            "OrderCode": shipment.order_code,
            "ShipperCode": self.shipper_code,
            "LogisticCode": shipment.waybill,
            "StartDate": req.pickup_start.strftime(TIME_FORMAT),
            "EndDate": req.pickup_end.strftime(TIME_FORMAT),
            "Sender": _address(req.sender),
            "Receiver": _address(req.receiver),
            "Weight": req.parcel.weight_kg,
            "Quantity": req.parcel.count,
        }
        reply = await self._call(wire.BOOK_PICKUP, data)
        self._check(reply)
        order = reply.get("Order") or {}
        return PickupBooking(
            self.name,
            shipment.order_code,
            str(order.get("PickupCode") or shipment.order_code),
            req.pickup_start,
            req.pickup_end,
        )

    async def cancel_pickup(self, shipment: Shipment) -> None:
        """RequestType 1004."""
        data = {"ShipperCode": self.shipper_code, "OrderCode": shipment.order_code}
        self._check(await self._call(wire.CANCEL_PICKUP, data))

    async def subscribe(self, shipment: Shipment) -> None:
        """RequestType 1008."""
        data = {
            "ShipperCode": self.shipper_code,
            "LogisticCode": shipment.waybill,
            "OrderCode": shipment.order_code,
        }
        self._check(await self._call(wire.SUBSCRIBE, data))

    async def query(self, shipment: Shipment) -> list[TrackingUpdate]:
        """RequestType 1002: the current state as one update."""
        data = {"ShipperCode": self.shipper_code, "LogisticCode": shipment.waybill}
        reply = await self._call(wire.QUERY, data)
        self._check(reply)
        return [self._update(reply, shipment.order_code)]

    def parse_push(self, form: Mapping[str, str]) -> list[TrackingUpdate]:
        """A RequestType 101/102 push, signature checked."""
        if form.get("RequestType") not in (wire.PUSH, wire.PUSH_PICKUP):
            raise PushVerificationError(
                self.name, f"unexpected RequestType {form.get('RequestType')!r}"
            )
        if not wire.sign_ok(form, self._app_key):
            raise PushVerificationError(self.name, "DataSign does not match")
        try:
            data = json.loads(form["RequestData"])
            items = data["Data"]
            if not isinstance(items, list):
                raise TypeError("Data is not a list")
            return [self._update(item, item.get("OrderCode")) for item in items]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PushVerificationError(self.name, f"malformed push: {exc}") from None

    def _update(self, item: Mapping[str, Any], order_code: str | None) -> TrackingUpdate:
        state, state_ex = str(item.get("State", "0")), item.get("StateEx")
        traces = item.get("Traces") or []
        last = traces[-1] if traces and isinstance(traces[-1], dict) else {}
        waybill = item.get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            raise ValueError("tracking item without LogisticCode")
        return TrackingUpdate(
            carrier=self.name,
            waybill=waybill,
            order_code=order_code,
            state=wire.tracking_state(state, None if state_ex is None else str(state_ex)),
            carrier_state=f"{state}/{state_ex or ''}",
            detail=str(last.get("AcceptStation", "")),
            at=_parse_time(str(last.get("AcceptTime", ""))),
            raw=dict(item),
        )

    def push_reply(self, ok: bool, reason: str = "") -> dict[str, Any]:
        """What Kdniao expects back from a push."""
        return {
            "EBusinessID": self._ebusiness_id,
            "UpdateTime": datetime.now(UTC).strftime(TIME_FORMAT),
            "Success": ok,
            "Reason": reason,
        }
