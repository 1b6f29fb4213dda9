"""Text messages through a generic SMS / WeCom-style gateway: a signed JSON POST.

Body: ``{"msgtype": "text", "text": {"content": ..., "mentioned_mobile_list": [to]},
"to": ..., "id": ..., "kind": ...}`` (the WeCom group-robot shape plus our fields), signed
with ``Dropline-Signature`` (``gateway/signatures.py``). Success is HTTP 2xx with no or a
zero ``errcode``; other 4xx replies (except 429) are permanent, the rest are retried.
"""

import json

import aiohttp

from gateway import signatures
from gateway.config import SmsWebhookSettings
from gateway.notifiers.base import Message, NotificationError, PermanentNotificationError


class SmsWebhook:
    """Posts text messages to one SMS gateway."""

    name = "sms"

    def __init__(self, settings: SmsWebhookSettings, session: aiohttp.ClientSession) -> None:
        self._s = settings
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)

    async def send(self, message: Message) -> None:
        """POST the message; raise a typed error unless the gateway took it."""
        body = json.dumps(
            {
                "msgtype": "text",
                "text": {"content": message.text, "mentioned_mobile_list": [message.recipient]},
                "to": message.recipient,
                "id": message.id,
                "kind": message.kind,
            },
            ensure_ascii=False,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            signatures.HEADER: signatures.sign([self._s.secret], body),
        }
        try:
            async with self._session.post(
                self._s.url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                status, text = resp.status, await resp.text()
        except TimeoutError:
            raise NotificationError("SMS gateway: no reply in time") from None
        except aiohttp.ClientError as exc:
            raise NotificationError(f"SMS gateway: {exc}") from None
        _check_reply(status, text)


def _check_reply(status: int, text: str) -> None:
    if 400 <= status < 500 and status != 429:
        raise PermanentNotificationError(f"SMS gateway refused: HTTP {status} {text[:200]}")
    if not 200 <= status < 300:
        raise NotificationError(f"SMS gateway: HTTP {status}")
    try:
        reply = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        raise NotificationError("SMS gateway: reply is not JSON") from None
    errcode = reply.get("errcode", 0) if isinstance(reply, dict) else None
    if errcode != 0:
        raise NotificationError(f"SMS gateway: errcode {errcode}")
