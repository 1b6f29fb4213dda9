"""Kiosk faults and rejected scans, kept for the operator (DESIGN §1: operators watch
kiosks and faults)."""

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gateway.database import Transaction
from protocol.envelope import Envelope
from protocol.messages import Fault, ScanRejected

log = logging.getLogger(__name__)


class FaultLog:
    """The ``fault`` and ``scan_rejected`` event handlers."""

    def __init__(self) -> None:
        self.faults: Counter[str] = Counter()
        self.rejected_scans: Counter[str] = Counter()

    async def record_faults(self, tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
        """Store hardware faults; they stay open until an operator resolves them."""
        rows = []
        for event in events:
            body: Fault = event.body
            self.faults[body.kind.value] += 1
            log.warning(
                "fault at %s/%s: %s %s", event.store, event.device, body.kind, body.compartment
            )
            rows.append((str(event.id), event.store, event.device, body.kind.value,
                         body.compartment, body.detail, event.ts))  # fmt: skip
        await tx.executemany(
            "INSERT INTO kiosk_faults (event_id, store, device, kind, compartment, detail, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            rows,
        )
        return False

    async def count_rejections(self, tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
        """Rejected scans are counted by reason (the events table keeps each one)."""
        for event in events:
            body: ScanRejected = event.body
            self.rejected_scans[body.reason.value] += 1
        return False
