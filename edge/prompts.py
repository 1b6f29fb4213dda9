"""Flows that wait for the next scan (a clerk scanning a bag label, then a tote label).

The scan loop offers every code here first; a waiting flow whose predicate accepts it takes
it, and only codes nobody waits for start a new session.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

CANCEL = "\x00cancel"
"""What :meth:`Prompts.cancel` hands a waiting flow."""


@dataclass
class _Waiter:
    accepts: Callable[[str], bool]
    future: asyncio.Future[str]
    prompt: str


class Prompts:
    """Scans awaited by running flows."""

    def __init__(self) -> None:
        self._waiting: list[_Waiter] = []

    @property
    def current(self) -> str | None:
        """What the kiosk is waiting for (a wording key), if anything."""
        live = [w for w in self._waiting if not w.future.done()]
        return live[-1].prompt if live else None

    def offer(self, code: str) -> bool:
        """Hand ``code`` to the flow waiting for it; False when no flow wants it."""
        for waiter in list(self._waiting):
            if not waiter.future.done() and waiter.accepts(code):
                waiter.future.set_result(code)
                return True
        return False

    def cancel(self) -> bool:
        """Give every waiting flow :data:`CANCEL`; False when none was waiting."""
        cancelled = False
        for waiter in self._waiting:
            if not waiter.future.done():
                waiter.future.set_result(CANCEL)
                cancelled = True
        return cancelled

    async def wait(
        self, accepts: Callable[[str], bool], timeout_s: float, *, prompt: str
    ) -> str | None:
        """The next accepted code, :data:`CANCEL`, or None after ``timeout_s``."""
        waiter = _Waiter(accepts, asyncio.get_running_loop().create_future(), prompt)
        self._waiting.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    return await waiter.future
            return None
        finally:
            self._waiting.remove(waiter)
