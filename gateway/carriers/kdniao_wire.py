"""The Kdniao (快递鸟) aggregated API's wire format, shared by the adapter and the simulator.

Requests and pushes are HTTP form posts with ``RequestData`` (JSON), ``EBusinessID``,
``RequestType``, ``DataSign`` and ``DataType=2``. ``DataSign`` is Base64 of the lower-case hex
MD5 of ``RequestData + AppKey``; the form encoding URL-encodes it on the wire.
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping

from gateway.carriers.base import TrackingState

CREATE_EWAYBILL = "1007"
CANCEL_EWAYBILL = "1147"
BOOK_PICKUP = "1001"
CANCEL_PICKUP = "1004"
QUERY = "1002"
SUBSCRIBE = "1008"
PUSH = "101"
PUSH_PICKUP = "102"

OK = "100"
DUPLICATE_ORDER = "106"
RATE_LIMITED = "109"
BAD_SIGN = "101"

STATES: dict[str, TrackingState] = {
    "0": TrackingState.NONE,
    "1": TrackingState.COLLECTED,
    "2": TrackingState.IN_TRANSIT,
    "3": TrackingState.SIGNED,
    "4": TrackingState.PROBLEM,
    "5": TrackingState.FORWARDED,
    "6": TrackingState.CUSTOMS,
}


def data_sign(request_data: str, app_key: str) -> str:
    """Base64 of the lower-case hex MD5 of ``request_data + app_key``."""
    digest = hashlib.md5((request_data + app_key).encode()).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def form(request_type: str, request_data: str, ebusiness_id: str, app_key: str) -> dict[str, str]:
    """The form fields of one request or push."""
    return {
        "RequestData": request_data,
        "EBusinessID": ebusiness_id,
        "RequestType": request_type,
        "DataSign": data_sign(request_data, app_key),
        "DataType": "2",
    }


def sign_ok(fields: Mapping[str, str], app_key: str) -> bool:
    """True when the form's DataSign matches its RequestData."""
    expected = data_sign(fields.get("RequestData", ""), app_key)
    return hmac.compare_digest(expected, fields.get("DataSign", ""))


def tracking_state(state: str, state_ex: str | None) -> TrackingState:
    """Map Kdniao's State/StateEx to ours (StateEx 301/302/304/311 signed, 401–423 problem)."""
    if state_ex:
        code = int(state_ex) if state_ex.isdigit() else -1
        if code in (301, 302, 304, 311):
            return TrackingState.SIGNED
        if 401 <= code <= 423:
            return TrackingState.PROBLEM
    return STATES.get(state, TrackingState.NONE)
