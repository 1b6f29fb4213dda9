"""The kiosk's touchscreen: a local web page served by the agent (aiohttp), live over a
WebSocket. The kiosk browser (Chromium in kiosk mode) shows ``http://127.0.0.1:8088/``.

Everything the page can do is a small JSON POST under ``/api/``: type a short code, log a
clerk in with a PIN, and the clerk's actions. Bad input gets a JSON error, never a 500.
"""

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from edge import view, wording
from edge.clerks import ClerkActionError, ClerkAuthError
from protocol.sizes import SizeClass

if TYPE_CHECKING:
    from edge.agent import EdgeAgent

log = logging.getLogger(__name__)

AGENT: web.AppKey["EdgeAgent"] = web.AppKey("agent")
SCREEN: web.AppKey["Screen"] = web.AppKey("screen")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body is not JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body is not a JSON object")
    return data


def _text(data: dict[str, Any], key: str, limit: int = 256) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise web.HTTPUnprocessableEntity(text=f"{key!r} must be a non-empty string")
    return value.strip()


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except ClerkActionError as exc:
        return _error(409, "clerk_action", str(exc))
    except Exception:
        log.exception("screen request %s failed", request.path)
        return _error(500, "internal", "internal error; it has been logged")


class Screen:
    """Serves the page and pushes a new view to every open WebSocket when anything changes."""

    def __init__(self, agent: "EdgeAgent", host: str, port: int) -> None:
        self._agent = agent
        self._host, self._port = host, port
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._dirty = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.url = ""
        self.pushes = 0

    async def start(self) -> None:
        """Listen, and follow the agent's changes."""
        app = web.Application(middlewares=[_errors], client_max_size=16 * 1024)
        app[AGENT], app[SCREEN] = self._agent, self
        app.router.add_get("/", _page)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/view", _view)
        app.router.add_post("/api/code", _code)
        app.router.add_post("/api/cancel", _cancel)
        app.router.add_post("/api/clerk/login", _clerk_login)
        app.router.add_post("/api/clerk/logout", _clerk_logout)
        app.router.add_post("/api/clerk/size", _clerk_size)
        app.router.add_post("/api/clerk/seal", _clerk_seal)
        app.router.add_post("/api/clerk/open", _clerk_open)
        app.router.add_post("/api/clerk/out_of_order", _clerk_out_of_order)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self._port
        self.url = f"http://{self._host}:{port}"
        self._agent.change_listeners.append(self._dirty.set)
        self._pusher = asyncio.create_task(self._push_loop(), name="screen-push")

    async def stop(self) -> None:
        """Close the sockets and stop listening."""
        if self._dirty.set in self._agent.change_listeners:
            self._agent.change_listeners.remove(self._dirty.set)
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for task in list(self._background):
            task.cancel()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def run_in_background(self, coro: Any) -> None:
        """Start a flow without holding up the HTTP reply (its progress goes out as views)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _push_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._sockets:
                continue
            try:
                payload = json.dumps(await view.build(self._agent))
            except Exception:
                log.exception("could not build the screen view")
                continue
            for ws in list(self._sockets):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(payload)
            self.pushes += 1

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await ws.send_str(json.dumps(await view.build(self._agent)))
            async for message in ws:
                if message.type is WSMsgType.ERROR:
                    break
        finally:
            self._sockets.discard(ws)
        return ws


async def _page(request: web.Request) -> web.Response:
    page = resources.files("edge").joinpath("static/kiosk.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


async def _view(request: web.Request) -> web.Response:
    return web.json_response(await view.build(request.app[AGENT]))


async def _code(request: web.Request) -> web.Response:
    """A code typed on the keypad (short code or pickup code)."""
    code = _text(await _body(request), "code", 64)
    agent = request.app[AGENT]
    request.app[SCREEN].run_in_background(agent.handle_code(code, typed=True))
    return web.json_response({"accepted": True}, status=202)


async def _cancel(request: web.Request) -> web.Response:
    return web.json_response({"cancelled": request.app[AGENT].prompts.cancel()})


async def _clerk_login(request: web.Request) -> web.Response:
    pin = _text(await _body(request), "pin", 16)
    try:
        clerk = await request.app[AGENT].clerks.login_pin(pin)
    except ClerkAuthError as exc:
        status = 423 if exc.reason == "locked" else 403
        return _error(status, exc.reason, wording.CLERK_AUTH.get(exc.reason, str(exc)))
    return web.json_response({"clerk": clerk.id, "name": clerk.name})


async def _clerk_logout(request: web.Request) -> web.Response:
    request.app[AGENT].clerks.logout()
    return web.json_response({"logged_out": True})


async def _clerk_size(request: web.Request) -> web.Response:
    size = _text(await _body(request), "size", 2)
    if size not in SizeClass.__members__:
        raise web.HTTPUnprocessableEntity(text="size is one of S, M, L, XL")
    request.app[AGENT].clerks.set_load_size(SizeClass[size])
    return web.json_response({"size": size})


async def _clerk_seal(request: web.Request) -> web.Response:
    data = await _body(request)
    label = data.get("tote_label")
    await request.app[AGENT].clerks.seal_tote(label if isinstance(label, str) else None)
    return web.json_response({"sealed": True})


async def _clerk_open(request: web.Request) -> web.Response:
    data = await _body(request)
    compartment = _text(data, "compartment", 16)
    agent = request.app[AGENT]
    agent.clerks.require()
    await agent.clerks.known(compartment)
    request.app[SCREEN].run_in_background(
        agent.clerks.open_for_service(compartment, empty=bool(data.get("empty")))
    )
    return web.json_response({"opening": compartment}, status=202)


async def _clerk_out_of_order(request: web.Request) -> web.Response:
    data = await _body(request)
    compartment = _text(data, "compartment", 16)
    flag = data.get("out_of_order")
    if not isinstance(flag, bool):
        raise web.HTTPUnprocessableEntity(text="out_of_order must be true or false")
    changed = await request.app[AGENT].clerks.set_out_of_order(compartment, flag)
    return web.json_response({"compartment": compartment, "changed": changed})
