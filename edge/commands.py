"""Commands from the gateway (DESIGN §5 rules 1, 2 and 6): each has an id and an expiry; a
repeated id is ignored, an expired command is answered ``expired`` and not carried out, and
every outcome goes back on ``cmd_res`` through the outbox (so it survives a power cut).
For ``open_door`` the door sensor, not the command, decides the outcome.
"""

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edge.database import PickupRow
from edge.session import SessionState
from hardware.labels import ManifestLine as LabelManifestLine
from hardware.labels import ToteLabel, render
from protocol import voucher
from protocol.errors import VoucherError
from protocol.messages import (
    CollectParcels,
    CommandOutcome,
    CommandResult,
    CompartmentState,
    Configure,
    Inventory,
    OpenDoor,
    PickupCode,
    PrintLabel,
    Sync,
)

if TYPE_CHECKING:
    from edge.agent import EdgeAgent

log = logging.getLogger(__name__)

Command = PrintLabel | CollectParcels | OpenDoor | PickupCode | Sync | Configure


class CommandDesk:
    """Carries out the gateway's commands."""

    def __init__(self, agent: "EdgeAgent") -> None:
        self._agent = agent

    async def handle(self, command: Command) -> None:
        """Dedupe, check expiry, carry out, report."""
        agent = self._agent
        if not await agent.db.first_sight_of_command(command.command_id):
            agent.counters.duplicate_commands += 1
            agent.changed()
            return
        agent.counters.commands += 1
        if command.expires_at < time.time():
            await self._result(command.command_id, CommandOutcome.EXPIRED)
            return
        outcome, detail = await self._carry_out(command)
        await self._result(command.command_id, outcome, detail)

    async def _carry_out(self, command: Command) -> tuple[CommandOutcome, str]:
        if isinstance(command, PrintLabel):
            return await self._print_label(command)
        if isinstance(command, CollectParcels):
            freed = await self._agent.db.release_returns(command.return_ids)
            log.info("tote %s: compartments %s emptied", command.tote_id, ", ".join(freed))
            self._agent.changed()
            return CommandOutcome.SUCCEEDED, f"freed {len(freed)} compartment(s)"
        if isinstance(command, OpenDoor):
            return await self._open_door(command)
        if isinstance(command, PickupCode):
            await self._agent.db.save_pickups(
                [
                    PickupRow(
                        command.code_sha256,
                        command.parcel_id,
                        command.compartment,
                        command.valid_until,
                    )
                ]
            )
            return CommandOutcome.SUCCEEDED, ""
        if isinstance(command, Sync):
            return await self._sync(command)
        return await self._configure(command)

    async def _print_label(self, command: PrintLabel) -> tuple[CommandOutcome, str]:
        label = ToteLabel(
            tote_id=command.tote_id,
            store=self._agent.config.store,
            carrier=command.carrier,
            waybill=command.waybill,
            pickup_start=_when(command.pickup_start),
            pickup_end=_when(command.pickup_end),
            manifest=[LabelManifestLine(m.return_id, m.merchant, m.size) for m in command.manifest],
        )
        if await self._agent.print_label(render(label), job=f"tote-{command.tote_id}"):
            return CommandOutcome.SUCCEEDED, ""
        return CommandOutcome.FAILED, "printer fault"

    async def _open_door(self, command: OpenDoor) -> tuple[CommandOutcome, str]:
        agent = self._agent
        if await agent.db.compartment(command.compartment) is None:
            return CommandOutcome.FAILED, f"no compartment {command.compartment}"
        session = await agent.service_open(command.compartment, by="gateway", empty=False)
        if session.state is SessionState.DONE:
            door = "already_open" if session.reason == "already_open" else "opened"
            return CommandOutcome.SUCCEEDED, door
        return CommandOutcome.FAILED, "jammed"

    async def _sync(self, command: Sync) -> tuple[CommandOutcome, str]:
        agent = self._agent
        entries = []
        for entry in command.vouchers:
            try:
                claims = voucher.parse(entry.token)[0]
            except VoucherError:
                continue  # verified in full when used; unparsable ones are not kept
            entries.append((entry.short_code, entry.token, float(claims.expires_at)))
        await agent.db.save_short_codes(entries)
        await agent.db.save_pickups(
            [PickupRow(p.code_sha256, p.parcel_id, p.compartment, p.valid_until)
             for p in command.pickups]
        )  # fmt: skip
        agent.short_codes.answered(command)
        if command.inventory:
            await self._inventory()
        return CommandOutcome.SUCCEEDED, f"{len(entries)} code(s), {len(command.pickups)} pickup(s)"

    async def _inventory(self) -> None:
        agent = self._agent
        rows = await agent.db.compartments()
        body = Inventory(
            compartments=[
                CompartmentState(
                    id=r.id,
                    size=r.size.name,
                    occupied_by=r.occupied_by,
                    out_of_order=r.out_of_order,
                    door_open=agent.locker.is_open(r.id),
                )
                for r in rows
            ],
            outbox=await agent.db.outbox_size(),
        )
        await agent.append(body)

    async def _configure(self, command: Configure) -> tuple[CommandOutcome, str]:
        changes = command.settings.model_dump(exclude_none=True)
        await self._agent.apply_overrides(changes)
        return CommandOutcome.SUCCEEDED, ", ".join(sorted(changes)) or "nothing"

    async def _result(self, command_id: str, outcome: CommandOutcome, detail: str = "") -> None:
        await self._agent.append(
            CommandResult(command_id=command_id, outcome=outcome, detail=detail)
        )


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
