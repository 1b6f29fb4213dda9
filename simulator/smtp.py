"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, parsed, with a
knob to refuse mail for a while (4xx) or for good (5xx) by recipient."""

import asyncio
import email
import email.policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class _Handler:
    def __init__(self, owner: "SmtpServerSimulator") -> None:
        self._owner = owner

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self._owner.refuse_for_good:
            return "550 5.1.1 no such mailbox"
        if self._owner.busy_replies > 0:
            self._owner.busy_replies -= 1
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        await self._owner.received(envelope)
        return "250 Message accepted"


class SmtpServerSimulator:
    """``await start()`` returns the port; :attr:`messages` holds every accepted mail."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.refuse_for_good: set[str] = set()
        self.busy_replies = 0  # the next n recipients get a 451
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on 127.0.0.1 and a free port."""
        handler = _Handler(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="smtp.dropline.test"), "127.0.0.1", 0
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def received(self, envelope: Envelope) -> None:
        """Keep an accepted message."""
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode()
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        async with self._changed:
            self.messages.append(message)
            self.recipients.append(list(envelope.rcpt_tos))
            self._changed.notify_all()

    async def wait_for(self, n: int, timeout_s: float = 30.0) -> list[EmailMessage]:
        """Wait until at least ``n`` messages arrived."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= n)
        return self.messages
