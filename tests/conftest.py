"""Shared fixtures: a private Mosquitto per test on a free loopback port."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dropline.broker import MosquittoBroker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A real mosquitto, stoppable and restartable by the test."""
    b = MosquittoBroker(tmp_path / "mosquitto")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()
