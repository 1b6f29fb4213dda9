"""The notification interface: deliver one rendered message to one customer."""

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message; with ``content_id`` it is shown inline (``cid:``)."""

    filename: str
    mime_type: str
    data: bytes
    content_id: str | None = None


@dataclass(frozen=True)
class Message:
    """A rendered customer message. Channels use what they can carry: SMS only ``text``."""

    id: str
    kind: str
    recipient: str
    subject: str
    text: str
    html: str | None = None
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)


class NotificationError(Exception):
    """Sending failed for now; try again later."""


class PermanentNotificationError(NotificationError):
    """Sending can never succeed as it stands (bad address, refused): do not retry."""


class Notifier(Protocol):
    """One channel to customers."""

    name: str

    async def send(self, message: Message) -> None:
        """Deliver ``message`` or raise :class:`NotificationError`."""
        ...
