"""Shared fixtures: a private Mosquitto per test on a free loopback port, and the gateway's
database on each backend (SQLite file, PostgreSQL schema)."""

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from dropline.broker import MosquittoBroker
from tests.postgres import DEFAULT_URL, PrivateCluster, reachable


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A real mosquitto, stoppable and restartable by the test."""
    b = MosquittoBroker(tmp_path / "mosquitto")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test session."""
    import asyncio

    url = os.environ.get("DROPLINE_TEST_POSTGRES", DEFAULT_URL)
    if asyncio.run(reachable(url)):
        yield url
        return
    cluster = PrivateCluster()
    cluster.start()
    try:
        asyncio.run(cluster.wait_ready())
        yield cluster.url
    finally:
        cluster.stop()


async def _drop_schema(server: str, schema: str) -> None:
    connection = await asyncpg.connect(server)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh schema on the test server (created on first use), dropped after the test."""
    schema = "t_" + secrets.token_hex(6)
    yield f"{postgres_server}?schema={schema}"
    await _drop_schema(postgres_server, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def gateway_database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str
) -> AsyncIterator[str]:
    """The gateway's database URL, once per backend: every gateway test runs on both."""
    if request.param == "sqlite":
        yield str(tmp_path / "gateway.sqlite3")
        return
    schema = "t_" + secrets.token_hex(6)
    yield f"{postgres_server}?schema={schema}"
    await _drop_schema(postgres_server, schema)
