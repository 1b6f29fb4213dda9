"""What the kiosk screen shows, built from the agent's state: one JSON-able dict that the
page renders as it comes (the page has no logic of its own beyond drawing it)."""

import time
from typing import TYPE_CHECKING, Any

from edge import wording
from edge.session import KioskSession, SessionState

if TYPE_CHECKING:
    from edge.agent import EdgeAgent

RESULT_SHOWN_S = 8.0
"""How long the last visit's outcome stays on screen."""


def _fill(text: str, s: KioskSession) -> str:
    return text.format(door=s.compartment or "-", bag=s.bag_id or "-", parcel=s.parcel_id or "-")


def session_message(s: KioskSession) -> dict[str, Any]:
    """Headline, detail and tone for a session in its current state."""
    if s.state in (SessionState.REJECTED, SessionState.TIMED_OUT):
        reason = s.reason or s.state.value
        return {"headline": "Sorry", "detail": wording.reason_text(reason), "tone": "error"}
    if s.state is SessionState.DONE:
        head, detail = wording.DONE.get(s.kind.value, wording.STATES["done"])
        return {"headline": _fill(head, s), "detail": _fill(detail, s), "tone": "ok"}
    head, detail = wording.STATES.get(s.state.value, ("One moment…", ""))
    tone = "alarm" if s.state is SessionState.LEFT_OPEN else "info"
    return {"headline": _fill(head, s), "detail": _fill(detail, s), "tone": tone}


async def build(agent: "EdgeAgent") -> dict[str, Any]:
    """The whole screen."""
    view: dict[str, Any] = {
        "store": agent.config.store,
        "device": agent.config.device,
        "online": agent.online,
        "offline_text": "" if agent.online else wording.OFFLINE,
        "mode": agent.settings.mode,
        "alarms": [{"door": d, "why": w} for d, w in sorted(agent.alarms.items())],
        "prompt": agent.prompts.current,
        "keypad_locked_s": max(0, round(agent.clerks.locked_until - time.monotonic())),
    }
    session = agent.session
    last = agent.last_session
    if session is None and last is not None and _age(last) < RESULT_SHOWN_S:
        session = last
    if session is not None:
        view["session"] = {
            "kind": session.kind.value,
            "state": session.state.value,
            "reason": session.reason,
            "door": session.compartment,
            "bag": session.bag_id,
            **session_message(session),
        }
        view.update(view["session"])
    else:
        view.update(headline=wording.IDLE[0], detail=wording.IDLE[1], tone="info")
    clerk = agent.clerks.current
    if clerk is not None:
        view["clerk"] = await _clerk_view(agent)
    return view


def _age(session: KioskSession) -> float:
    if not session.history:
        return float("inf")
    return time.monotonic() - session.history[-1][1]


async def _clerk_view(agent: "EdgeAgent") -> dict[str, Any]:
    clerk = agent.clerks.current
    assert clerk is not None
    now = time.time()
    pickups = {p.compartment: p for p in await agent.db.pickups()}
    doors = []
    for c in await agent.db.compartments():
        pickup = pickups.get(c.id)
        doors.append(
            {
                "id": c.id,
                "size": c.size.name,
                "occupied_by": c.occupied_by,
                "kind": c.occupant_kind,
                "out_of_order": c.out_of_order,
                "open": agent.locker.is_open(c.id),
                "overdue": pickup is not None and pickup.valid_until < now,
            }
        )
    return {
        "id": clerk.id,
        "name": clerk.name,
        "role": clerk.role,
        "load_size": clerk.load_size.name,
        "doors": doors,
        "overdue": [d["id"] for d in doors if d["overdue"]],
        "outbox": await agent.db.outbox_size(),
        "short_codes": await agent.db.short_code_count(),
    }
