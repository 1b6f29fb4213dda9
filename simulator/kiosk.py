"""A whole kiosk on simulated hardware: the real :class:`~edge.agent.EdgeAgent` with a
simulated camera, locker mechanics on gpiozero's MockFactory, a shopper who closes doors,
and PNG printers. Used by the demo, the tests, the benchmarks and the kill -9 harness."""

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.devices import Devices
from edge.session import KioskSession
from hardware.decoder import KIOSK_FORMATS, default_chain
from hardware.locker import CompartmentSpec, LockerSpec
from simulator.camera import SimulatedCamera
from simulator.locker import Shopper, SimulatedLockerMechanics, make_mock_factory
from simulator.printer import PngPrinter

HOLD_FRAMES = 6
"""Frames a code is shown for at a time while the kiosk has not read it."""


@dataclass
class SimulatedKiosk:
    """The real agent and the simulated parts around it."""

    agent: EdgeAgent
    camera: SimulatedCamera
    mechanics: SimulatedLockerMechanics
    shopper: Shopper
    printer: PngPrinter
    labels: PngPrinter

    @property
    def store(self) -> str:
        """The kiosk's store id."""
        return self.agent.config.store

    @property
    def device(self) -> str:
        """The kiosk's device id."""
        return self.agent.config.device

    async def start(self) -> None:
        """Start the shopper and the agent."""
        await self.shopper.start()
        await self.agent.start()

    async def stop(self) -> None:
        """Stop the agent and the shopper."""
        await self.shopper.stop()
        await self.agent.stop()

    async def present(self, code: str, timeout_s: float = 30.0) -> KioskSession:
        """Hold ``code`` in front of the camera until the kiosk reads it (as a shopper holds
        a phone there until the screen reacts, however slowly it decodes); return the
        kiosk session it produced, once finished."""
        loop = asyncio.get_running_loop()
        read = asyncio.Event()
        done: asyncio.Future[KioskSession] = loop.create_future()

        def listener(session: KioskSession) -> None:
            if session.code != code:
                return
            read.set()
            if session.finished and not done.done():
                done.set_result(session)

        self.agent.session_listeners.append(listener)
        self.camera.blank(frames=5)  # the previous shopper's phone is gone
        holding = asyncio.create_task(self._hold(code, read))
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        finally:
            holding.cancel()
            self.agent.session_listeners.remove(listener)

    async def _hold(self, code: str, read: asyncio.Event) -> None:
        """Keep ``code`` in view, a few frames at a time, until ``read``."""
        frames = HOLD_FRAMES
        while not read.is_set():
            self.camera.show(code, frames=frames)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(frames / self.camera.fps):
                    await read.wait()


def build_kiosk(
    config: EdgeConfig,
    *,
    prints: Path,
    camera_fps: float = 15.0,
    seed: int = 0,
    camera_size: tuple[int, int] = (1280, 720),
    latch_delay_s: float = 0.01,
    deposit_s: float = 0.02,
) -> SimulatedKiosk:
    """Assemble (not start) a simulated kiosk for ``config``."""
    factory = make_mock_factory()
    spec = LockerSpec(
        compartments=tuple(
            CompartmentSpec(c.id, c.size, c.relay_pin, c.sensor_pin) for c in config.compartments
        ),
        relay_active_high=config.relay_active_high,
        sensor_closed_when_low=config.sensor_closed_when_low,
    )
    mechanics = SimulatedLockerMechanics(factory, spec, latch_delay_s=latch_delay_s)
    shopper = Shopper(mechanics, deposit_s=deposit_s)
    camera = SimulatedCamera(*camera_size, fps=camera_fps, seed=seed)
    printer = PngPrinter(prints)
    labels = PngPrinter(prints / "labels")
    devices = Devices(camera, default_chain(KIOSK_FORMATS), factory, printer, labels)
    return SimulatedKiosk(EdgeAgent(config, devices), camera, mechanics, shopper, printer, labels)
