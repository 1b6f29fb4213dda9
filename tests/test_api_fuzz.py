"""No malformed request gets a 500: hypothesis sends every route of the table odd path
parameters, query strings, bodies (not JSON, wrong types, huge numbers, deep nesting, NUL
characters and lone surrogates) with and without keys, on both database backends."""

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from dropline.system import LocalSystem, SystemOptions
from gateway.api import ROUTES
from gateway.api.routes import Route

PARAM = re.compile(r"\{(\w+)(?::[^}]+)?\}")


@pytest.fixture
async def system(tmp_path: Path, gateway_database: str) -> AsyncIterator[LocalSystem]:
    s = LocalSystem(tmp_path, SystemOptions(kiosks_per_store=0, database=gateway_database))
    await s.start()
    yield s
    await s.stop()


NASTY = ["", "..", "%00", "\x00", "\ud800", "a" * 5000, "store-1", "acme", "-1", "1e309",
         "NaN", "null", "[]", "{}", "🙂", "' OR 1=1 --"]  # fmt: skip
odd_text = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, -(2**63) - 1, 10**30]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def _fields(model: Any) -> list[str]:
    return list(model.model_fields) if model is not None else []


@st.composite
def requests(draw: st.DrawFn) -> tuple[Route, str, bytes | None, str]:
    route = draw(st.sampled_from(ROUTES))
    path = PARAM.sub(
        lambda _: quote(draw(odd_text), safe="", errors="surrogatepass") or "x", route.path
    )
    query_keys = st.one_of(st.sampled_from(_fields(route.query) or ["x"]), odd_text)
    query = draw(st.dictionaries(query_keys, st.one_of(odd_text, numbers.map(str)), max_size=4))
    known = _fields(route.body)
    body_json = st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(known), json_values, max_size=6) if known else json_values,
    )
    kind = draw(st.sampled_from(["json", "bytes", "none", "deep"]))
    raw: bytes | None
    if kind == "json":
        raw = json.dumps(draw(body_json)).encode()
    elif kind == "bytes":
        raw = draw(st.binary(max_size=200))
    elif kind == "deep":
        raw = b"[" * 100_000 + b"]" * 100_000
    else:
        raw = None
    who = draw(st.sampled_from(["operator", "tenant", "none", "garbage"]))
    qs = urlencode(query, safe="%", errors="surrogatepass")
    return route, path + (f"?{qs}" if qs else ""), raw, who


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=requests())
async def test_no_malformed_request_gets_a_500(
    system: LocalSystem, case: tuple[Route, str, bytes | None, str]
) -> None:
    route, path, raw, who = case
    headers = {
        "operator": {"Authorization": f"Bearer {system.admin_key}"},
        "tenant": {"Authorization": f"Bearer {system.tenant_key}"},
        "none": {},
        "garbage": {"Authorization": "Bearer dl_000000000000_x"},
    }[who]
    assert system.gateway is not None
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            route.method, URL(system.gateway.url + path, encoded=True), data=raw, headers=headers
        ) as resp,
    ):
        assert resp.status < 500, (route.method, path, raw and raw[:200], await resp.text())
        if resp.status >= 400 and resp.content_type == "application/json" and not route.form:
            assert "error" in await resp.json(), (route.method, path)
        elif resp.status >= 400 and not route.form:
            # Only aiohttp's HTTP parser answers in plain text: a request line or header
            # past its limits, refused before any of our code runs.
            assert resp.status in (400, 413, 414), (route.method, path, await resp.text())


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/returns/%00", None),
        ("GET", "/v1/returns/%ED%A0%80", None),
        ("GET", "/v1/returns?order_id=%00", None),
        ("GET", "/v1/returns?created_after=1e400", None),
        ("GET", "/v1/returns?limit=99999999999999999999999", None),
        ("POST", "/v1/returns", b'{"order_id": "a\\u0000b"}'),
        ("POST", "/v1/returns", b'{"order_id": "\\ud800"}'),
        ("POST", "/v1/returns", b"[" * 50_000 + b"]" * 50_000),
        ("POST", "/v1/returns", b'{"refund": {"amount_minor": 1e400}}'),
        ("PUT", "/v1/approval-rules", b'{"review_above_minor": 99999999999999999999999}'),
        ("POST", "/v1/returns/x/cancel", b'{"reason": ["a"]}'),
        ("GET", "/v1/reports/dropoffs?since=2026-01-01&until=2025-01-01&format=json&x=1", None),
        ("GET", "/v1/reports/dropoffs?since=10000-01-01", None),
        ("GET", "/v1/vouchers/%F0%9F%99%82", None),
    ],
)
async def test_known_nasty_requests(
    system: LocalSystem, method: str, path: str, body: bytes | None
) -> None:
    assert system.gateway is not None
    headers = {"Authorization": f"Bearer {system.tenant_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, URL(system.gateway.url + path, encoded=True), data=body, headers=headers
        ) as resp,
    ):
        assert 400 <= resp.status < 500, await resp.text()
        assert "error" in await resp.json()


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31"])
async def test_reports_take_extreme_dates(system: LocalSystem, day: str) -> None:
    async with system.http.get(f"/v1/reports/dropoffs?since={day}&until={day}") as resp:
        assert resp.status == 200
        assert (await resp.json())["rows"] == []
