"""Which notification channels exist: decided here, from configuration."""

import aiohttp

from gateway.config import NotificationSettings
from gateway.notifiers.base import Notifier
from gateway.notifiers.sms_webhook import SmsWebhook
from gateway.notifiers.smtp import SmtpEmail


def make_notifiers(
    settings: NotificationSettings, session: aiohttp.ClientSession
) -> dict[str, Notifier]:
    """Every configured channel by name (``email``, ``sms``)."""
    channels: dict[str, Notifier] = {}
    if settings.smtp is not None:
        channels["email"] = SmtpEmail(settings.smtp)
    if settings.sms is not None:
        channels["sms"] = SmsWebhook(settings.sms, session)
    return channels
