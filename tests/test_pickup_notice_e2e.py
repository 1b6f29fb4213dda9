"""A pickup parcel end to end: the merchant registers it over the REST API, a clerk loads it
into a locker at the kiosk, the gateway issues its code and tells the customer by e-mail and
SMS, and the QR code from the e-mail opens the door. Real gateway, Mosquitto, HTTP, edge
agent on simulated hardware, both database backends; SMTP and SMS gateway simulated."""

import io
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from dropline.system import LocalSystem, SystemOptions
from tests.gateway_world import system_for

pytestmark = pytest.mark.timeout(180)

PARCEL = "JD-0042-7781"
CUSTOMER = {"name": "Lin Wei", "email": "lin.wei@example.test", "phone": "+8613900000042"}


@pytest.fixture
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    options = SystemOptions(kiosks_per_store=1, compartments_per_kiosk=4, tracking_delays_s=())
    async with system_for(request, tmp_path, gateway_database, options) as s:
        yield s


async def _json(request: Any) -> tuple[int, Any]:
    async with request as resp:
        return resp.status, await resp.json()


async def _clerk_logged_in(system: LocalSystem) -> None:
    status, _ = await _json(
        system.operator.put("/v1/stores/store-1/clerks/clerk-7", json={"name": "Bo", "pin": "2468"})
    )
    assert status == 200
    agent = system.kiosks[0].agent

    async def has_clerk() -> bool:
        config = await agent.db.store_config()
        return config is not None and any(c.id == "clerk-7" for c in config.clerks)

    await system.wait_until(has_clerk, 30)
    await agent.clerks.login_pin("2468")


def _pickup_qr(mail: EmailMessage) -> str:
    for part in mail.walk():
        if part.get_content_type() == "image/png":
            png = part.get_payload(decode=True)
            assert isinstance(png, bytes)
            (decoded,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)).convert("L"))
            return str(decoded.text)
    raise AssertionError("no QR code in the e-mail")


async def test_the_customer_gets_the_code_and_it_opens_the_door(system: LocalSystem) -> None:
    registration = {"order_id": "order-42", "store": "store-1", "customer": CUSTOMER}
    status, view = await _json(system.http.put(f"/v1/pickups/{PARCEL}", json=registration))
    assert (status, view["state"], view["locker"]) == (200, "expected", None)

    kiosk = system.kiosks[0]
    await _clerk_logged_in(system)
    loaded = await kiosk.agent.handle_code(PARCEL)
    assert loaded is not None and loaded.state == "done", loaded
    kiosk.agent.clerks.logout()

    assert system.smtp is not None and system.sms is not None
    (mail,) = await system.smtp.wait_for(1, timeout_s=60)
    (sms,) = await system.sms.wait_for(1, timeout_s=60)
    assert mail["To"] == CUSTOMER["email"] and sms["to"] == CUSTOMER["phone"]
    text = mail.get_body(("plain",))
    assert text is not None
    status, pickup = await _json(system.operator.get(f"/v1/pickups/{PARCEL}"))
    assert (status, pickup["merchant"], pickup["order_id"]) == (200, "acme", "order-42")
    code, door = pickup["pickup_code"], loaded.compartment
    assert door is not None
    for content in (text.get_content(), sms["text"]["content"]):
        assert code in content and door in content and "Store store-1" in content
    qr = _pickup_qr(mail)
    assert qr == pickup["pickup_qr_text"]

    async def kiosk_knows_the_code() -> bool:
        return any(p.parcel_id == PARCEL for p in await kiosk.agent.db.pickups())

    await system.wait_until(kiosk_knows_the_code, 30)
    session = await kiosk.present(qr)  # the customer shows the e-mail's QR code
    assert (session.state, session.compartment) == ("done", door), session.reason

    async def collected() -> bool:
        _, view = await _json(system.operator.get(f"/v1/pickups/{PARCEL}"))
        return bool(view["state"] == "picked_up")

    await system.wait_until(collected, 30)
    status, sent = await _json(system.http.get(f"/v1/pickups/{PARCEL}/notifications"))
    assert status == 200
    assert [(n["kind"], n["channel"], n["status"]) for n in sent["notifications"]] == [
        ("parcel_ready", "email", "sent"),
        ("parcel_ready", "sms", "sent"),
    ]
    assert len(system.smtp.messages) == 1 and len(system.sms.messages) == 1, "one code, one notice"
