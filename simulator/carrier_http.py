"""What every simulated carrier API shares: a loopback HTTP server, fault knobs (latency, 5xx,
timeouts, rate limits, malformed replies), and signed pushes retried until acknowledged."""

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from gateway.carriers.base import CHINA_TIME

log = logging.getLogger(__name__)


@dataclass
class CarrierKnobs:
    """Fault injection. Rates are probabilities per request; ``*_next`` counts are exact."""

    latency_s: float = 0.0
    error_rate: float = 0.0  # HTTP 500, nothing done
    timeout_rate: float = 0.0  # the work is done, the reply comes too late
    timeout_hold_s: float = 30.0
    malformed_rate: float = 0.0
    rate_limit_per_s: float | None = None  # beyond it: HTTP 429 with Retry-After
    retry_after_s: float | None = None  # None: whole seconds until the window has room
    fail_next: int = 0  # the next N requests get HTTP 500 (nothing done)
    time_out_next: int = 0  # the next N requests are carried out, then answered too late
    pushes: bool = True  # False: the carrier goes quiet; tracking only by query
    refuse_provinces: tuple[str, ...] = ()  # senders there are out of the service area
    pickup_hours: tuple[int, int] | None = None  # couriers call [from, to) Beijing time
    seed: int = 0


class SimulatedCarrierServer:
    """Base of the simulated carriers: serves ``path``, applies the knobs around ``handle``."""

    def __init__(self, path: str, knobs: CarrierKnobs | None, push_url: str | None) -> None:
        self.path = path
        self.knobs = knobs or CarrierKnobs()
        self.push_url = push_url
        self.faults: Counter[str] = Counter()
        self.pushes_sent = 0
        self._rng = random.Random(self.knobs.seed)
        self._recent: list[float] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port; returns the request URL."""
        app = web.Application()
        app.router.add_post(self.path, self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = aiohttp.ClientSession()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}{self.path}"

    async def stop(self) -> None:
        """Stop serving and pushing; replies held back by the timeout knob are dropped."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- to implement -------------------------------------------------------------------

    async def handle(self, form: Mapping[str, str]) -> web.Response:
        """Answer one well-formed request (signature checks are the carrier's own)."""
        raise NotImplementedError

    def rate_limited_body(self) -> dict[str, Any]:
        """The carrier's JSON body for a rate-limited request."""
        raise NotImplementedError

    def slot_refused(self, start: datetime | None) -> str | None:
        """Why no courier can come at ``start`` (the ``pickup_hours`` knob), or None."""
        hours = self.knobs.pickup_hours
        if hours is None or start is None:
            return None
        hour = start.astimezone(CHINA_TIME).hour
        if hours[0] <= hour < hours[1]:
            return None
        return f"预约时间不在服务时间 {hours[0]:02d}:00–{hours[1]:02d}:00 内"

    # ---- faults -------------------------------------------------------------------------

    def _take(self, name: str) -> bool:
        count: int = getattr(self.knobs, name)
        if count > 0:
            setattr(self.knobs, name, count - 1)
            return True
        return False

    def _rate_limited(self) -> float | None:
        """None when the request may go on, else the Retry-After to send."""
        limit = self.knobs.rate_limit_per_s
        if limit is None:
            return None
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < 1.0]
        if len(self._recent) >= limit:
            if self.knobs.retry_after_s is not None:
                return self.knobs.retry_after_s
            oldest = self._recent[0] if self._recent else now
            return float(max(1, math.ceil(1.0 - (now - oldest))))
        self._recent.append(now)
        return None

    async def _serve(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        k = self.knobs
        if k.latency_s:
            await asyncio.sleep(k.latency_s)  # simulated network latency
        if self._take("fail_next") or self._rng.random() < k.error_rate:
            self.faults["error"] += 1
            return web.Response(status=500, text="internal error")
        if self._rng.random() < k.malformed_rate:
            self.faults["malformed"] += 1
            return web.Response(text="<html>gateway error</html>", content_type="text/html")
        retry_after = self._rate_limited()
        if retry_after is not None:
            self.faults["rate_limited"] += 1
            return web.json_response(
                self.rate_limited_body(), status=429, headers={"Retry-After": f"{retry_after:g}"}
            )
        response = await self.handle(form)
        if self._take("time_out_next") or self._rng.random() < k.timeout_rate:
            self.faults["timeout"] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(k.timeout_hold_s):
                    await self._stopping.wait()  # done, but the client gave up waiting
        return response

    # ---- pushes -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background until it ends or the simulator stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def deliver(
        self,
        form: Mapping[str, str],
        accepted: Callable[[dict[str, Any]], bool],
        what: str,
        *,
        attempts: int = 20,
    ) -> bool:
        """POST a push to ``push_url`` until the receiver accepts it (as real carriers retry)."""
        if not self.push_url or self._session is None or not self.knobs.pushes:
            return False
        for attempt in range(attempts):
            try:
                async with self._session.post(self.push_url, data=dict(form)) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status == 200 and isinstance(reply, dict) and accepted(reply):
                        self.pushes_sent += 1
                        return True
            except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
                log.info("push to %s failed: %s", self.push_url, exc)
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))  # the real APIs retry pushes too
        log.warning("gave up pushing %s", what)
        return False
