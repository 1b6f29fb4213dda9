"""The SF Express (顺丰, 丰桥 open platform) wire format, shared by the adapter and the simulator.

A request is an HTTP form post to the platform's one endpoint with ``partnerID``,
``requestID`` (unique per request), ``serviceCode``, ``timestamp`` (milliseconds), ``msgData``
(the service's JSON) and ``msgDigest``: Base64 of the raw MD5 of the URL-encoded
``msgData + timestamp + checkword`` (SF's own SDKs URL-encode before hashing). The reply is
JSON: ``apiResultCode`` (``A1000`` = accepted by the platform), ``apiErrorMsg`` and
``apiResultData``, a JSON *string* holding ``success``, ``errorCode``, ``errorMsg`` and the
service's ``msgData``.

Route pushes (路由推送) come as the same signed form with ``serviceCode`` RoutePushService and
``msgData`` ``{"Body": {"WaybillRoute": [...]}}``; the answer is
``{"return_code": "0000" | "1000", "return_msg": ...}``.
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote_plus

from gateway.carriers.base import TrackingState

CREATE_ORDER = "EXP_RECE_CREATE_ORDER"
UPDATE_ORDER = "EXP_RECE_UPDATE_ORDER"  # dealType 2 cancels
SEARCH_ORDER = "EXP_RECE_SEARCH_ORDER_RESP"
SEARCH_ROUTES = "EXP_RECE_SEARCH_ROUTES"
ROUTE_PUSH = "RoutePushService"

API_OK = "A1000"
API_MISSING_FIELD = "A1001"
API_NO_SERVICE = "A1004"
API_RATE_LIMITED = "A1005"
API_BAD_DIGEST = "A1006"
API_SERVICE_DOWN = "A1009"
API_SYSTEM_ERROR = "A1099"
API_RETRYABLE = frozenset({API_SERVICE_DOWN, API_SYSTEM_ERROR})

BIZ_OK = "S0000"
DUPLICATE_ORDER = "8016"

DEAL_CANCEL = 2
CANCEL_DONE = 2  # resStatus of a successful cancel
FILTER_NOT_SERVICEABLE = 3  # filterResult: the address cannot be served
WAYBILL_MAIN = 1  # waybillType of the main waybill

PUSH_OK = "0000"
PUSH_FAILED = "1000"

ROUTE_STATES: dict[str, TrackingState] = {
    "50": TrackingState.COLLECTED,  # 顺丰已收取快件
    "54": TrackingState.COLLECTED,  # 上门收件
    "30": TrackingState.IN_TRANSIT,  # 分拣完成, 发往下一站
    "31": TrackingState.IN_TRANSIT,  # 到达中转场
    "36": TrackingState.IN_TRANSIT,  # 离开, 在发往下一站的路上
    "44": TrackingState.IN_TRANSIT,  # 派送中
    "123": TrackingState.IN_TRANSIT,
    "130": TrackingState.IN_TRANSIT,  # 到达目的地网点
    "204": TrackingState.IN_TRANSIT,
    "407": TrackingState.IN_TRANSIT,
    "501": TrackingState.IN_TRANSIT,
    "80": TrackingState.SIGNED,  # 已签收
    "8000": TrackingState.SIGNED,
}

PROBLEMS: dict[str, str] = {
    "33": "派件异常, 快件滞留",
    "70": "派送不成功",
    "77": "中转滞留",
    "99": "应客户要求, 快件退回",
    "631": "快件已退回",
    "648": "快件退回中",
}
"""Route opCodes that put a shipment in the exception queue."""


def route_state(op_code: str) -> TrackingState:
    """Our tracking state for a route opCode (an unlisted code is news without a state)."""
    if op_code in PROBLEMS:
        return TrackingState.PROBLEM
    return ROUTE_STATES.get(op_code, TrackingState.NONE)


def msg_digest(msg_data: str, timestamp: str, checkword: str) -> str:
    """Base64 of the raw MD5 of the URL-encoded ``msg_data + timestamp + checkword``."""
    text = quote_plus(msg_data + timestamp + checkword, encoding="utf-8")
    return base64.b64encode(hashlib.md5(text.encode()).digest()).decode()


def form(
    partner_id: str,
    service_code: str,
    msg_data: str,
    timestamp: str,
    checkword: str,
    request_id: str,
) -> dict[str, str]:
    """The form fields of one request or push."""
    return {
        "partnerID": partner_id,
        "requestID": request_id,
        "serviceCode": service_code,
        "timestamp": timestamp,
        "msgDigest": msg_digest(msg_data, timestamp, checkword),
        "msgData": msg_data,
    }


def digest_ok(fields: Mapping[str, str], checkword: str) -> bool:
    """True when the form's msgDigest matches its msgData and timestamp."""
    expected = msg_digest(fields.get("msgData", ""), fields.get("timestamp", ""), checkword)
    return hmac.compare_digest(expected, fields.get("msgDigest", ""))
