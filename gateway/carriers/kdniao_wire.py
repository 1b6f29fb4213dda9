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
BAD_SIGN = "101"
UNKNOWN_REQUEST_TYPE = "104"
BAD_DATA = "105"
DUPLICATE_ORDER = "106"
RATE_LIMITED = "109"
CANNOT_CANCEL = "110"

SIGNED_STATE_EX = frozenset({301, 302, 304, 311})

PROBLEMS: dict[int, str] = {
    401: "发货无信息",
    402: "超时未签收",
    403: "超时未更新",
    404: "拒收(退件)",
    405: "派件异常",
    406: "退货签收",
    407: "退货未签收",
    412: "快递柜或驿站超时未取",
    413: "单号已拦截",
    414: "破损",
    415: "客户取消发货",
    416: "无法联系",
    417: "配送延迟",
    418: "快件取出",
    419: "重新派送",
    420: "收货地址不详细",
    421: "收件人电话错误",
    422: "错分件",
    423: "超区件",
}
"""StateEx 401–423: the problem sub-states. Codes between them that are not listed are
problems too, described by number."""

PICKUP_ASSIGNED = "103"  # RequestType 102 push: a courier is assigned
PICKUP_COLLECTED = "104"  # the courier has the parcel
PICKUP_FAILED = "99"  # the carrier could not dispatch a courier
PICKUP_STATES: dict[str, TrackingState] = {
    PICKUP_ASSIGNED: TrackingState.NONE,
    PICKUP_COLLECTED: TrackingState.COLLECTED,
    PICKUP_FAILED: TrackingState.PROBLEM,
}
"""The pickup-order states of a RequestType 102 push (上门取件 progress)."""

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


def _state_ex_code(state_ex: str | None) -> int:
    return int(state_ex) if state_ex and state_ex.isdigit() else -1


def tracking_state(state: str, state_ex: str | None) -> TrackingState:
    """Map Kdniao's State/StateEx to ours (StateEx 301/302/304/311 signed, 401–423 problem)."""
    code = _state_ex_code(state_ex)
    if code in SIGNED_STATE_EX:
        return TrackingState.SIGNED
    if 401 <= code <= 423:
        return TrackingState.PROBLEM
    return STATES.get(state, TrackingState.NONE)


def problem(state: str, state_ex: str | None) -> str | None:
    """What went wrong, for a problem State/StateEx; None when nothing did."""
    if tracking_state(state, state_ex) is not TrackingState.PROBLEM:
        return None
    code = _state_ex_code(state_ex)
    if code in PROBLEMS:
        return f"{PROBLEMS[code]} (StateEx {code})"
    return f"问题件 (State {state}, StateEx {state_ex or '-'})"
