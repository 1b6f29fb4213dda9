"""Customer notifications: queued with the transition, sent by e-mail through a real SMTP
server on loopback (aiosmtpd) with the voucher QR inline, and by signed SMS webhook;
retried when the server is busy, given up when it refuses for good. A pickup parcel's
customer gets its door, code and deadline once per code the gateway issues."""

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import zxingcpp
from PIL import Image

from gateway import kiosk_flows, notifications
from gateway.config import (
    BackoffSettings,
    MerchantSettings,
    NotificationSettings,
    SmsWebhookSettings,
    SmtpSettings,
)
from gateway.database import MIGRATIONS, open_database
from gateway.keys import SigningKeys
from gateway.notifications import MessageKind, NotificationDispatcher, Renderer, ReturnFacts
from gateway.notifiers.registry import make_notifiers
from gateway.pickup_parcels import ParcelTakenError, Registration, UnknownStoreError, register
from protocol import envelope, shortcode
from protocol.messages import ParcelLoaded
from simulator.sms import SmsGatewaySimulator
from simulator.smtp import SmtpServerSimulator
from tests.gateway_world import MERCHANT, STORE, Clock, World, open_world

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
        about: ReturnFacts | None = facts
        if kind is MessageKind.PARCEL_READY:  # about a pickup parcel: all in the context
            about, context = None, _parcel_context(customer_name=facts.customer_name)
        mail = renderer.render("n-1", kind, "email", "a@b", about, context)
        assert mail.html is not None and "<script>" not in mail.html
        assert "&lt;script&gt;" in mail.html
        assert "<script>x</script>" in mail.text, "plain text is not escaped"
        assert "o-<1>" in mail.subject + mail.text
        sms = renderer.render("n-1", kind, "sms", "+86", about, context)
        assert sms.html is None and sms.attachments == ()
        assert len(sms.text) < 200
    voucher = renderer.render("n-1", MessageKind.VOUCHER, "email", "a@b", facts, {})
    assert "123.45 CNY" in voucher.text and "ABCD-EFGH-J" in voucher.text
    assert [a.mime_type for a in voucher.attachments] == ["image/png"]


# ---- pickup parcels: the customer's code --------------------------------------------------


def _parcel_context(**changes: Any) -> dict[str, Any]:
    return {
        "parcel_id": "PARCEL-1",
        "order_id": "o-<1>",
        "merchant_name": "ACME",
        "customer_name": "Lin",
        "store": "store-1",
        "store_name": "Store 1",
        "compartment": "A3",
        "pickup_code": "ABCD-EFGH-J",
        "pickup_qr_text": "DLP:ABCDEFGHJ",
        "valid_until": 1_800_000_000.0,
        **changes,
    }


async def _register(world: World, parcel: str = "PARCEL-1", **changes: Any) -> dict[str, Any]:
    reg = Registration(
        parcel_id=parcel,
        merchant=MERCHANT,
        order_id="order-77",
        store=STORE,
        customer={"name": "Lin", "email": "lin@example.test", "phone": "+8613900000077"},
    )
    return await register(world.db, dataclasses.replace(reg, **changes))


async def _load(world: World, parcel: str = "PARCEL-1", compartment: str = "A3") -> str:
    """A kiosk's ``parcel_loaded``, applied as ingest applies it; returns the code issued."""
    body = ParcelLoaded(
        parcel_id=parcel, compartment=compartment, size="M", loaded_by="clerk-1",
        loaded_at=time.time(),
    )  # fmt: skip
    event = envelope.make(body, store=STORE, device="kiosk-1", seq=1, session=1)
    async with world.db.transaction() as tx:
        assert await kiosk_flows.apply(tx, event)
    row = await world.db.fetchone("SELECT code FROM pickups WHERE parcel_id = ?", (parcel,))
    assert row is not None
    return str(row[0])


async def _parcel_statuses(world: World) -> list[tuple[str, str, str, str]]:
    rows = await world.db.fetchall(
        "SELECT n.kind, n.channel, n.status, CASE WHEN n.code_issue = p.load_event "
        "THEN 'current' ELSE 'replaced' END FROM notifications n "
        "JOIN pickups p ON p.parcel_id = n.parcel_id ORDER BY n.created_at, n.channel"
    )
    return [(str(k), str(c), str(s), str(w)) for k, c, s, w in rows]


async def test_parcel_ready_tells_the_customer_door_code_deadline_with_a_scannable_qr(
    world: World, outside: Outside
) -> None:
    await _register(world)
    code = await _load(world, compartment="B2")
    assert await _parcel_statuses(world) == [
        ("parcel_ready", "email", "pending", "current"),
        ("parcel_ready", "sms", "pending", "current"),
    ]
    dispatcher = NotificationDispatcher(
        world.db,
        make_notifiers(outside.settings, outside.session),
        Renderer("http://gateway.test", timezone="Asia/Shanghai"),
        outside.settings,
    )
    assert await dispatcher.process_due() == 2
    (mail,) = await outside.smtp.wait_for(1)
    assert mail["To"] == "lin@example.test"
    assert mail["Subject"] == "Your order order-77 is ready for pickup at Store 1"
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None
    shown = f"{code[:4]}-{code[4:8]}-{code[8:]}"
    valid_until = await world.db.fetchone(
        "SELECT valid_until FROM pickups WHERE parcel_id = 'PARCEL-1'"
    )
    assert valid_until is not None
    deadline = datetime.fromtimestamp(valid_until[0], ZoneInfo("Asia/Shanghai"))
    for part in (text.get_content(), html.get_content()):
        assert shown in part and "B2" in part and "ACME" in part
        assert deadline.strftime("%Y-%m-%d %H:%M CST") in part, "the store's local time"
    cid, png = _inline_png(mail)
    assert f'src="cid:{cid}"' in html.get_content()
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)).convert("L"))
    assert [d.text for d in decoded] == ["DLP:" + code], "the QR a kiosk reads as a pickup code"

    (sms,) = await outside.sms.wait_for(1)
    assert sms["to"] == "+8613900000077" and sms["kind"] == "parcel_ready"
    assert shown in sms["text"]["content"] and "door B2" in sms["text"]["content"]
    command = await world.db.fetchone("SELECT body FROM commands WHERE name = 'pickup_code'")
    assert command is not None
    assert json.loads(command[0])["code_sha256"] == shortcode.digest(code), (
        "the kiosk honours the code the customer was sent"
    )
    assert [n["status"] for n in await notifications.for_parcel(world.db, "PARCEL-1")] == [
        "sent",
        "sent",
    ]


async def test_one_notice_per_code_and_a_reissued_code_replaces_an_unsent_one(
    world: World, outside: Outside
) -> None:
    await _register(world)
    first = await _load(world)
    await _register(world, order_id="order-77")  # registered again: nothing new to say
    assert len(await _parcel_statuses(world)) == 2
    second = await _load(world, compartment="A4")  # reloaded: a new code
    assert second != first
    assert await _parcel_statuses(world) == [
        ("parcel_ready", "email", "pending", "replaced"),
        ("parcel_ready", "sms", "pending", "replaced"),
        ("parcel_ready", "email", "pending", "current"),
        ("parcel_ready", "sms", "pending", "current"),
    ]
    assert await _dispatcher(world, outside).process_due() == 4
    (mail,) = await outside.smtp.wait_for(1)
    (sms,) = await outside.sms.wait_for(1)
    body = mail.get_body(("plain",))
    assert body is not None
    assert second[:4] in body.get_content() and first[:4] not in body.get_content()
    assert second[:4] in sms["text"]["content"]
    statuses = await _parcel_statuses(world)
    assert [s[2:] for s in statuses] == [
        ("skipped", "replaced"),
        ("skipped", "replaced"),
        ("sent", "current"),
        ("sent", "current"),
    ]
    rows = await notifications.for_parcel(world.db, "PARCEL-1")
    assert "replaced by a newer one" in rows[0]["last_error"]


async def test_a_parcel_registered_after_loading_is_notified_then(world: World) -> None:
    await _load(world, parcel="EARLY-1")
    assert await _parcel_statuses(world) == [], "nobody to tell yet"
    view = await _register(world, parcel="EARLY-1")
    assert (view["state"], view["locker"]["compartment"]) == ("loaded", "A3")
    assert [s[:3] for s in await _parcel_statuses(world)] == [
        ("parcel_ready", "email", "pending"),
        ("parcel_ready", "sms", "pending"),
    ]


async def test_a_notice_not_sent_before_collection_is_not_sent_after(
    world: World, outside: Outside
) -> None:
    await _register(world)
    await _load(world)
    async with world.db.transaction() as tx:
        await tx.execute("UPDATE pickups SET state = 'picked_up' WHERE parcel_id = 'PARCEL-1'")
    assert await _dispatcher(world, outside).process_due() == 2
    assert outside.smtp.messages == [] and outside.sms.messages == []
    assert [s[2] for s in await _parcel_statuses(world)] == ["skipped", "skipped"]


async def test_parcel_registration_rules(world: World) -> None:
    view = await _register(world, customer={"name": "Lin"})
    assert (view["state"], view["locker"], view["customer"]) == ("expected", None, {"name": "Lin"})
    await _load(world)
    assert await _parcel_statuses(world) == [], "no e-mail address or phone: nothing to queue"
    async with world.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) "
            "VALUES ('other', 'Other', 'on_receipt', 'CNY')"
        )
    with pytest.raises(ParcelTakenError):
        await _register(world, merchant="other")
    with pytest.raises(UnknownStoreError):
        await _register(world, parcel="PARCEL-2", store="store-9")
    async with world.db.transaction() as tx:  # the code ran out before anyone registered
        await tx.execute("UPDATE pickups SET valid_until = 1 WHERE parcel_id = 'PARCEL-1'")
    await _register(world)
    assert await _parcel_statuses(world) == [], "an expired code is not worth sending"


async def test_migration_keeps_the_notifications_of_returns(gateway_database: str) -> None:
    """Migration 9 rebuilds ``notifications``: a database at version 8 keeps every row."""
    db = await open_database(gateway_database)
    v5 = [s for s in MIGRATIONS[4].split(";") if "notifications" in s]
    async with db.transaction() as tx:  # back to version 8's shape
        for table in ("notifications", "pickup_parcels"):
            await tx.execute(f"DROP TABLE {table}")
        for statement in v5:
            await tx.execute(statement)
        await tx.execute("DELETE FROM schema_version WHERE version = 9")
    world = World(db, await SigningKeys.load_or_create(db), MerchantSettings(id=MERCHANT, name="A"))
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) "
            "VALUES (?, 'ACME', 'on_receipt', 'CNY')",
            (MERCHANT,),
        )
        await tx.execute("INSERT INTO stores (id, name) VALUES (?, 'Store 1')", (STORE,))
    return_id = await world.create_return(3)
    before = await notifications.for_return(db, return_id)
    assert len(before) == 2
    await db.close()
    db = await open_database(gateway_database)
    try:
        assert await notifications.for_return(db, return_id) == before
        row = await db.fetchone("SELECT max(version) FROM schema_version")
        assert row is not None and row[0] == len(MIGRATIONS)
    finally:
        await db.close()


async def test_a_registration_while_the_load_commits_is_notified_once(world: World) -> None:
    """The load's transaction is still open when the merchant registers the parcel: neither
    can see the other's rows yet. The registration must wait for the load's commit (on
    PostgreSQL at the parcel's ``pickup_parcels`` row; SQLite has one writer) and then queue
    the notice."""
    event = envelope.make(
        ParcelLoaded(parcel_id="RACE-1", compartment="A1", size="M", loaded_by="clerk-1",
                     loaded_at=time.time()),
        store=STORE, device="kiosk-1", seq=1, session=1,
    )  # fmt: skip
    async with world.db.transaction() as tx:
        assert await kiosk_flows.apply(tx, event)
        registering = asyncio.create_task(_register(world, parcel="RACE-1"))
        if world.db.dialect == "postgresql":
            await _waiting_for_a_lock(world, "INSERT INTO pickup_parcels")
        assert not registering.done()
    await registering
    rows = await world.db.fetchall("SELECT channel FROM notifications WHERE parcel_id = 'RACE-1'")
    assert sorted(str(r[0]) for r in rows) == ["email", "sms"]


async def _waiting_for_a_lock(world: World, statement: str) -> None:
    """Until a PostgreSQL backend running ``statement`` waits for a lock."""
    async with asyncio.timeout(30):
        while True:
            waiting = await world.db.fetchone(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE ? || '%'",
                (statement,),
            )
            if waiting:
                return
            await asyncio.sleep(0.01)  # polling the server's state: no event crosses to us
