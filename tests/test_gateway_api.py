"""The gateway's REST API: authorize, read, vouchers as images, clear errors."""

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from dropline.system import LocalSystem, SystemOptions
from protocol import shortcode, voucher


@pytest.fixture
async def system(tmp_path: Path, gateway_database: str) -> AsyncIterator[LocalSystem]:
    s = LocalSystem(tmp_path, SystemOptions(kiosks_per_store=0, database=gateway_database))
    await s.start()
    yield s
    await s.stop()


async def _post(system: LocalSystem, body: object) -> tuple[int, dict[str, Any]]:
    async with system.http.post("/v1/returns", json=body) as resp:
        return resp.status, await resp.json()


async def test_authorize_returns_a_verifiable_voucher(system: LocalSystem) -> None:
    created = await system.authorize_return(1, store="store-1")
    assert created["state"] == "authorized"
    token = created["voucher"]["token"]
    assert system.gateway is not None
    keys = voucher.keyring(system.gateway.keys.public_texts())
    claims = voucher.verify(token, keys, store="store-1", now=created["created_at"])
    assert str(claims.return_id) == created["id"]
    assert (
        shortcode.normalize(created["voucher"]["short_code_display"])
        == created["voucher"]["short_code"]
    )
    view = await system.get_return(created["id"])
    assert [h["to"] for h in view["history"]] == ["authorized"]
    assert view["history"][0]["cause"]["kind"] == "api"


async def test_voucher_images(system: LocalSystem) -> None:
    created = await system.authorize_return(2)
    async with system.http.get(f"/v1/returns/{created['id']}/voucher.png") as resp:
        assert resp.content_type == "image/png"
        image = Image.open(io.BytesIO(await resp.read()))
    assert [r.text for r in zxingcpp.read_barcodes(image.convert("L"))] == [
        created["voucher"]["token"]
    ]
    async with system.http.get(f"/v1/returns/{created['id']}/voucher.svg") as resp:
        assert resp.content_type == "image/svg+xml"
        assert (await resp.text()).lstrip().startswith("<?xml")


async def test_short_code_lookup(system: LocalSystem) -> None:
    created = await system.authorize_return(3)
    code = created["voucher"]["short_code_display"].lower()
    async with system.http.get(f"/v1/vouchers/{code}") as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == created["id"]
    wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
    async with system.http.get(f"/v1/vouchers/{wrong}") as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "bad_short_code"


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 422, "invalid_request", "order_id"),
        ({"merchant": "acme", "order_id": "o", "items": [], "reason": "r",
          "refund": {"amount_minor": 1, "currency": "CNY"}, "customer": {"name": "n"}},
         422, "invalid_request", "items"),
        ({"merchant": "acme", "order_id": "o", "items": [{"sku": "a"}], "reason": "r",
          "refund": {"amount_minor": -5, "currency": "yuan"}, "customer": {"name": "n"}},
         422, "invalid_request", "refund.amount_minor"),
        ({"merchant": "nobody", "order_id": "o", "items": [{"sku": "a"}], "reason": "r",
          "refund": {"amount_minor": 5, "currency": "CNY"}, "customer": {"name": "n"}},
         422, "invalid_request", "merchant"),
        ({"merchant": "acme", "order_id": "o", "items": [{"sku": "a"}], "reason": "r",
          "refund": {"amount_minor": 5, "currency": "CNY"}, "customer": {"name": "n"},
          "stores": ["store-404"]}, 422, "unknown_store", "stores"),
        ([1, 2, 3], 422, "invalid_request", "body"),
    ],
)  # fmt: skip
async def test_invalid_requests_get_clear_errors(
    system: LocalSystem, body: object, status: int, code: str, field: str
) -> None:
    got_status, data = await _post(system, body)
    assert got_status == status
    assert data["error"]["code"] == code
    assert field in [f["field"] for f in data["error"]["fields"]]


async def test_not_json_and_unknown_ids(system: LocalSystem) -> None:
    async with system.http.post("/v1/returns", data=b"{oops") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"
    async with system.http.get("/v1/returns/nope") as resp:
        assert resp.status == 404
    async with system.http.get("/v1/returns?state=flying") as resp:
        assert resp.status == 422
    async with system.http.get("/v1/nothing-here") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_list_filters_by_state(system: LocalSystem) -> None:
    ids = {(await system.authorize_return(i))["id"] for i in range(3)}
    async with system.http.get("/v1/returns?state=authorized&limit=10") as resp:
        listed = {r["id"] for r in (await resp.json())["returns"]}
    assert ids <= listed
    async with system.http.get("/v1/returns?state=refunded") as resp:
        assert (await resp.json())["count"] == 0


async def test_forged_carrier_push_is_rejected_and_counted(system: LocalSystem) -> None:
    form = {
        "RequestType": "101",
        "RequestData": '{"Data": []}',
        "DataSign": "forged",
        "EBusinessID": "1",
    }
    async with system.http.post("/v1/carriers/kdniao/push", data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["Success"] is False
    async with system.operator.get("/v1/metrics") as resp:
        assert (await resp.json())["carrier_push_rejected"] == 1
