"""Typed short codes → voucher tokens (ADR 0006).

A short code is not self-verifying, so the kiosk resolves it from its own table first (the
gateway's ``sync`` commands fill it with the codes of vouchers scoped to this store, so those
work offline), and otherwise, when online, asks the gateway with a live ``code_lookup`` and
waits up to ``lookup_s`` for the ``sync`` that answers it. The token found is then verified
like a scanned one: a lying or compromised sync can not make a voucher up.
"""

import asyncio
import contextlib
from typing import TYPE_CHECKING

from protocol import envelope, topics
from protocol.messages import CodeLookup, RejectReason, Sync

if TYPE_CHECKING:
    from edge.agent import EdgeAgent


class ShortCodeLookupError(Exception):
    """A short code the kiosk could not resolve; ``reason`` is a :class:`RejectReason`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ShortCodes:
    """Resolves typed short codes, offline when it can."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent
        self._asked: dict[str, asyncio.Future[str | None]] = {}

    async def resolve(self, code: str) -> str:
        """The voucher token for canonical short code ``code``."""
        agent = self._agent
        token = await agent.db.short_code_token(code)
        if token is not None:
            return token
        if not agent.online:
            raise ShortCodeLookupError(RejectReason.NEEDS_GATEWAY, "short code not known offline")
        future = self._asked.setdefault(code, asyncio.get_running_loop().create_future())
        try:
            await self._ask(code)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(agent.config.timeouts.lookup_s):
                    token = await future
        finally:
            self._asked.pop(code, None)
        if token is None:
            reason = RejectReason.UNKNOWN_CODE if future.done() else RejectReason.NEEDS_GATEWAY
            raise ShortCodeLookupError(reason, f"short code {code} not resolved")
        return token

    async def _ask(self, code: str) -> None:
        agent = self._agent
        env = envelope.make(
            CodeLookup(short_code=code),
            store=agent.config.store,
            device=agent.config.device,
            seq=0,
            session=agent.session_number,
        )
        try:
            await agent.link.publish(
                topics.event(agent.config.store, agent.config.device, "code_lookup"),
                envelope.encode(env),
            )
        except ConnectionError as exc:
            raise ShortCodeLookupError(RejectReason.NEEDS_GATEWAY, str(exc)) from None

    def answered(self, sync: Sync) -> None:
        """A ``sync`` arrived: wake lookups it answers (found or not)."""
        for entry in sync.vouchers:
            future = self._asked.get(entry.short_code)
            if future is not None and not future.done():
                future.set_result(entry.token)
        for code in sync.not_found:
            future = self._asked.get(code)
            if future is not None and not future.done():
                future.set_result(None)
