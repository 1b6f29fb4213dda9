"""The carriers' tracking pushes: no API key, each verified by the carrier's signature."""

import logging

from aiohttp import web

from gateway.api.errors import GATEWAY, not_found
from gateway.api.routes import Route
from gateway.carriers.base import PushVerificationError
from protocol.ids import new_id

log = logging.getLogger(__name__)


async def carrier_push(request: web.Request) -> web.Response:
    """``POST /v1/carriers/{carrier}/push``: a carrier's signed tracking push.

    A forged or malformed push is refused (400, in the carrier's reply format) and counted; a
    replayed one is accepted and changes nothing."""
    gateway = request.app[GATEWAY]
    carrier = gateway.carriers.get(request.match_info["carrier"])
    if carrier is None:
        raise not_found("carrier")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    try:
        updates = carrier.parse_push(form)
    except PushVerificationError as exc:
        gateway.metrics["carrier_push_rejected"] += 1
        gateway.metrics[f"carrier_push_rejected_{carrier.name}"] += 1
        log.warning("rejected %s push: %s", carrier.name, exc)
        return web.json_response(carrier.push_reply(False, exc.reason), status=400)
    applied = await gateway.tracking.apply(updates, cause_id=f"{carrier.name}-push-{new_id()}")
    gateway.wake()
    if applied.unknown:
        # Perhaps ahead of its booking's commit: the carrier sends it again later.
        gateway.metrics["carrier_push_deferred"] += 1
        reason = f"unknown waybill(s) {', '.join(sorted(set(applied.unknown)))}; send again"
        return web.json_response(carrier.push_reply(False, reason))
    gateway.metrics["carrier_push_accepted"] += 1
    return web.json_response(carrier.push_reply(True))


ROUTES: list[Route] = [
    Route("POST", "/v1/carriers/{carrier}/push", carrier_push, "signed",
          "A carrier's signed tracking push (form-encoded, the carrier's own format)",
          form=True, errors=(400, 404)),
]  # fmt: skip
