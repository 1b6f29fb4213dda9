"""A generic SMS / WeCom-style gateway on loopback: takes signed JSON text messages and
answers like WeCom's group robot (``{"errcode": 0, "errmsg": "ok"}``), with fault knobs."""

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.loopback import serve
from simulator.merchant_system import signature_ok


@dataclass
class SmsKnobs:
    """Fault injection. Rates are probabilities per request."""

    error_rate: float = 0.0  # HTTP 503
    errcode_rate: float = 0.0  # HTTP 200 with a non-zero errcode (WeCom's way of failing)
    seed: int = 0


class SmsGatewaySimulator:
    """``await start()`` returns the URL to post messages to; :attr:`messages` has what
    arrived (verified)."""

    def __init__(self, secret: str, *, knobs: SmsKnobs | None = None) -> None:
        self.secret = secret
        self.knobs = knobs or SmsKnobs()
        self.messages: list[dict[str, Any]] = []
        self.rejected = 0
        self._rng = random.Random(self.knobs.seed)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port."""
        app = web.Application()
        app.router.add_post("/send", self._send)
        self._runner, url = await serve(app)
        return url + "/send"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` messages arrived."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= n)
        return self.messages

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_ok(
            request.headers.get("Dropline-Signature"), body, [self.secret], time.time()
        ):
            self.rejected += 1
            return web.json_response({"errcode": 40001, "errmsg": "bad signature"}, status=401)
        if self._rng.random() < self.knobs.error_rate:
            return web.json_response({"errcode": -1, "errmsg": "busy"}, status=503)
        if self._rng.random() < self.knobs.errcode_rate:
            return web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})
        self.messages.append(json.loads(body))
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"errcode": 0, "errmsg": "ok"})
