"""Customer notifications: queued with the transition, sent by e-mail through a real SMTP
server on loopback (aiosmtpd) with the voucher QR inline, and by signed SMS webhook;
retried when the server is busy, given up when it refuses for good."""

import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage

import aiohttp
import pytest
import zxingcpp
from PIL import Image

from gateway.config import BackoffSettings, NotificationSettings, SmsWebhookSettings, SmtpSettings
from gateway.notifications import MessageKind, NotificationDispatcher, Renderer, ReturnFacts
from gateway.notifiers.registry import make_notifiers
from simulator.sms import SmsGatewaySimulator
from simulator.smtp import SmtpServerSimulator
from tests.gateway_world import Clock, World, open_world

SMS_SECRET = "sms-secret-0123456789"


@dataclass
class Outside:
    smtp: SmtpServerSimulator
    sms: SmsGatewaySimulator
    settings: NotificationSettings
    session: aiohttp.ClientSession


@pytest.fixture
async def world(gateway_database: str) -> AsyncIterator[World]:
    async for w in open_world(gateway_database):
        yield w


@pytest.fixture
async def outside() -> AsyncIterator[Outside]:
    smtp = SmtpServerSimulator()
    port = await smtp.start()
    sms = SmsGatewaySimulator(SMS_SECRET)
    sms_url = await sms.start()
    settings = NotificationSettings(
        smtp=SmtpSettings(port=port, sender="Returns <returns@shop.test>"),
        sms=SmsWebhookSettings(url=sms_url, secret=SMS_SECRET),
        retry=BackoffSettings(base_s=30.0, max_s=600.0, max_attempts=3),
    )
    async with aiohttp.ClientSession() as session:
        yield Outside(smtp, sms, settings, session)
    await sms.stop()
    await smtp.stop()


def _dispatcher(
    world: World, outside: Outside, clock: Clock | None = None
) -> NotificationDispatcher:
    return NotificationDispatcher(
        world.db,
        make_notifiers(outside.settings, outside.session),
        Renderer("http://gateway.test"),
        outside.settings,
        clock=clock or time.time,
    )


async def _statuses(world: World) -> list[tuple[str, str, str, int]]:
    rows = await world.db.fetchall(
        "SELECT kind, channel, status, attempts FROM notifications ORDER BY created_at, channel"
    )
    return [(str(k), str(c), str(s), int(a)) for k, c, s, a in rows]


def _inline_png(mail: EmailMessage) -> tuple[str, bytes]:
    for part in mail.walk():
        if part.get_content_type() == "image/png":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return str(part["Content-ID"]).strip("<>"), payload
    raise AssertionError("no inline PNG")


async def test_voucher_email_carries_a_scannable_inline_qr(world: World, outside: Outside) -> None:
    return_id = await world.create_return(7)
    assert await _statuses(world) == [
        ("voucher", "email", "pending", 0),
        ("voucher", "sms", "pending", 0),
    ]
    assert await _dispatcher(world, outside).process_due() == 2
    (mail,) = await outside.smtp.wait_for(1)
    assert mail["To"] == "shopper7@example.test"
    assert outside.smtp.recipients == [["shopper7@example.test"]]
    assert mail["Subject"] == "Your return for order order-00007 is approved"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    token, code = await world.db.fetchone(  # type: ignore[misc]
        "SELECT voucher, short_code FROM returns WHERE id = ?", (return_id,)
    )
    assert f"{code[:4]}-{code[4:8]}-{code[8:]}" in text.get_content()
    cid, png = _inline_png(mail)
    assert f'src="cid:{cid}"' in html.get_content()
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)).convert("L"))
    assert [d.text for d in decoded] == [token], "the QR in the mail is the voucher"

    (sms,) = await outside.sms.wait_for(1)
    assert sms["to"] == "+8613800000007" and sms["kind"] == "voucher"
    assert code[:4] in sms["text"]["content"]
    assert outside.sms.rejected == 0, "the SMS gateway verified our signature"
    assert await _statuses(world) == [
        ("voucher", "email", "sent", 1),
        ("voucher", "sms", "sent", 1),
    ]


async def test_dropoff_receipt_and_refund_notice_follow_the_return(
    world: World, outside: Outside
) -> None:
    from gateway import return_events

    return_id = await world.create_return(3)
    await world.drop_off(return_id)
    async with world.db.transaction() as tx:
        await return_events.refund_issued(tx, return_id, "re_00000042", "stripe")
    assert await _dispatcher(world, outside).process_due() == 6
    mails = await outside.smtp.wait_for(3)
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert subjects == [
        "We have your return for order order-00003",
        "Your refund of 20.02 CNY is on its way",
        "Your return for order order-00003 is approved",
    ]
    receipt = next(m for m in mails if str(m["Subject"]).startswith("We have"))
    body = receipt.get_body(("plain",))
    assert body is not None and "store-1" in body.get_content()
    refund = next(m for m in mails if "refund" in str(m["Subject"]))
    refund_text = refund.get_body(("plain",))
    assert refund_text is not None and "re_00000042" in refund_text.get_content()
    assert not any(p.get_content_type() == "image/png" for p in refund.walk())


async def test_busy_mail_server_is_retried_with_backoff(world: World, outside: Outside) -> None:
    await world.create_return(1, customer={"name": "A", "email": "a@example.test"})
    outside.smtp.busy_replies = 1
    clock = Clock(time.time())
    dispatcher = _dispatcher(world, outside, clock)
    assert await dispatcher.process_due() == 1
    row = await world.db.fetchone(
        "SELECT status, attempts, last_error, next_attempt_at FROM notifications"
    )
    assert row is not None and row[:2] == ("pending", 1) and "451" in row[2]
    assert await dispatcher.process_due() == 0, "not before its backoff"
    clock.advance(30.0)
    assert await dispatcher.process_due() == 1
    assert len(await outside.smtp.wait_for(1)) == 1
    assert await _statuses(world) == [("voucher", "email", "sent", 2)]


async def test_refused_recipient_is_dead_at_once(world: World, outside: Outside) -> None:
    await world.create_return(1, customer={"name": "A", "email": "gone@example.test"})
    outside.smtp.refuse_for_good.add("gone@example.test")
    assert await _dispatcher(world, outside).process_due() == 1
    row = await world.db.fetchone("SELECT status, attempts, last_error FROM notifications")
    assert row is not None and row[:2] == ("dead", 1) and "550" in row[2]
    assert outside.smtp.messages == []


async def test_a_channel_not_configured_is_skipped_with_the_reason(
    world: World, outside: Outside
) -> None:
    await world.create_return(1)
    only_mail = outside.settings.model_copy(update={"sms": None})
    dispatcher = NotificationDispatcher(
        world.db, make_notifiers(only_mail, outside.session), Renderer("http://g"), only_mail
    )
    assert await dispatcher.process_due() == 2
    rows = await world.db.fetchall(
        "SELECT channel, status, last_error FROM notifications ORDER BY channel"
    )
    assert rows == [("email", "sent", None), ("sms", "skipped", "no sms channel configured")]


async def test_customer_without_contact_gets_nothing_queued(world: World) -> None:
    await world.create_return(1, customer={"name": "Nobody"})
    assert await _statuses(world) == []


def test_templates_escape_html_and_fill_both_parts() -> None:
    facts = ReturnFacts(
        return_id="r-1",
        order_id="o-<1>",
        customer_name="<script>x</script>",
        short_code="ABCDEFGHJ",
        voucher="DL1:TEST",
        expires_at=0.0,
        amount_minor=12345,
        currency="CNY",
        stores=["store-1"],
    )
    renderer = Renderer("http://g/")
    for kind in MessageKind:
        context = {
            "refund_id": "re_1",
            "store": "store-1",
            "device": "k",
            "at": 0.0,
            "refund_note": "soon",
            "carrier": "kdniao",
            "waybill": "YTO1",
            "pickup_code": "PK1",
            "window": "2026-11-24 09:00–11:00 (Beijing time)",
        }
        mail = renderer.render("n-1", kind, "email", "a@b", facts, context)
        assert mail.html is not None and "<script>" not in mail.html
        assert "&lt;script&gt;" in mail.html
        assert "<script>x</script>" in mail.text, "plain text is not escaped"
        assert "o-<1>" in mail.subject + mail.text
        sms = renderer.render("n-1", kind, "sms", "+86", facts, context)
        assert sms.html is None and sms.attachments == ()
        assert len(sms.text) < 200
    voucher = renderer.render("n-1", MessageKind.VOUCHER, "email", "a@b", facts, {})
    assert "123.45 CNY" in voucher.text and "ABCD-EFGH-J" in voucher.text
    assert [a.mime_type for a in voucher.attachments] == ["image/png"]
