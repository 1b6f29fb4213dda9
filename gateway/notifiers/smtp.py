"""Customer e-mail over SMTP (aiosmtplib): plain text and HTML alternatives, inline images."""

from email.message import EmailMessage, MIMEPart
from email.utils import make_msgid

import aiosmtplib

from gateway.config import SmtpSettings
from gateway.notifiers.base import Message, NotificationError, PermanentNotificationError


def build(message: Message, sender: str) -> EmailMessage:
    """The MIME message: text, then HTML with its inline attachments as related parts."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.recipient
    mail["Subject"] = message.subject
    mail["Message-ID"] = make_msgid(idstring=message.id.replace("-", ""))
    mail["X-Dropline-Notification"] = message.id
    mail.set_content(message.text)
    inline = [a for a in message.attachments if a.content_id]
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
        html_part = mail.get_body(("html",))
        assert isinstance(html_part, MIMEPart)
        for a in inline:
            main, sub = a.mime_type.split("/", 1)
            html_part.add_related(
                a.data,
                main,
                sub,
                cid=f"<{a.content_id}>",
                filename=a.filename,
                disposition="inline",
            )
    for a in message.attachments:
        if a.content_id and message.html is not None:
            continue
        main, sub = a.mime_type.split("/", 1)
        mail.add_attachment(a.data, maintype=main, subtype=sub, filename=a.filename)
    return mail


class SmtpEmail:
    """Sends through one SMTP server."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self._s = settings

    async def send(self, message: Message) -> None:
        """Hand the message to the server; 5xx replies are permanent, the rest transient."""
        s = self._s
        try:
            await aiosmtplib.send(
                build(message, s.sender),
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                start_tls=s.start_tls,
                use_tls=s.use_tls,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):
                raise PermanentNotificationError(f"recipient refused: {exc}") from None
            raise NotificationError(f"recipient deferred: {exc}") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentNotificationError(f"SMTP {exc.code}: {exc.message}") from None
            raise NotificationError(f"SMTP {exc.code}: {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise NotificationError(f"{type(exc).__name__}: {exc}") from None
