"""Duplicate deliveries, as networks and brokers make them: every kiosk event republished a
second time from the broker side, and every carrier push posted twice at once. The
exactly-once tests run the whole system through these."""

import asyncio
import contextlib
import hashlib
import logging

import aiohttp
import aiomqtt
from aiohttp import web

from simulator.loopback import serve

log = logging.getLogger(__name__)

EVENTS = "dropline/v1/+/+/evt/#"


class EventDuplicator:
    """Subscribes to every kiosk event and publishes each one once more, unchanged."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._seen: set[bytes] = set()
        self.duplicated = 0
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and subscribe; returns once subscribed."""
        self._task = asyncio.create_task(self._run(), name="event-duplicator")
        async with asyncio.timeout(30):
            await self.subscribed.wait()

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, identifier=None) as client:
                    await client.subscribe(EVENTS, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        await self._again(client, message)
            except aiomqtt.MqttError as exc:
                log.info("event duplicator reconnects: %s", exc)
                await asyncio.sleep(0.2)  # the broker is restarting

    async def _again(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        digest = hashlib.blake2b(bytes(payload), digest_size=16).digest()
        if digest in self._seen:
            return  # our own copy coming back (or a kiosk's retry): not again
        self._seen.add(digest)
        await client.publish(str(message.topic), bytes(payload), qos=1)
        self.duplicated += 1


class PushDuplicator:
    """An HTTP relay that forwards every POST to ``target`` twice, concurrently, and answers
    with the first copy's reply."""

    def __init__(self, target: str, copies: int = 2) -> None:
        self.target = target
        self.copies = copies
        self.relayed = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1 and a free port; returns the URL to post to."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._relay)
        self._runner, url = await serve(app)
        self._session = aiohttp.ClientSession()
        return url + "/relay"

    async def stop(self) -> None:
        """Stop serving."""
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _relay(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}

        async def forward() -> tuple[int, bytes, str]:
            assert self._session is not None
            async with self._session.post(self.target, data=body, headers=headers) as resp:
                return resp.status, await resp.read(), resp.content_type

        replies = await asyncio.gather(
            *(forward() for _ in range(self.copies)), return_exceptions=True
        )
        self.relayed += 1
        for reply in replies:
            if isinstance(reply, tuple):
                status, data, content_type = reply
                return web.Response(status=status, body=data, content_type=content_type)
        return web.Response(status=502, text="relay target unreachable")
