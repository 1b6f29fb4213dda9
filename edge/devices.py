"""The kiosk's hardware, chosen in one place from configuration.

``camera = "sim"`` and ``pin_factory = "mock"`` give the simulator's parts; ``camera =
"v4l2:0"`` (or a device path) and ``pin_factory = "lgpio"``/``"rpigpio"`` give a Pi's.
Printers: ``png:DIR`` (simulated), ``zpl:tcp://HOST:9100`` or ``zpl:/dev/usb/lp0``.
"""

from dataclasses import dataclass
from pathlib import Path

from edge.config import EdgeConfig
from hardware.camera import FrameSource, OpenCVCamera
from hardware.decoder import VOUCHER_FORMATS, DecoderChain, default_chain
from hardware.pins import make_pin_factory
from hardware.printer import Printer, ZplPrinter
from simulator.camera import SimulatedCamera
from simulator.printer import PngPrinter


@dataclass
class Devices:
    """What the agent drives: a frame source, a decoder chain, GPIO pins and a printer."""

    camera: FrameSource
    decoder: DecoderChain
    pin_factory: object
    printer: Printer


class DeviceConfigError(ValueError):
    """A camera or printer setting this agent does not understand."""


def make_camera(setting: str) -> FrameSource:
    """``sim`` or ``v4l2:<index or /dev path>``."""
    if setting == "sim":
        return SimulatedCamera()
    if setting.startswith("v4l2:"):
        target = setting.removeprefix("v4l2:")
        device: int | str = int(target) if target.isdigit() else target
        return OpenCVCamera(device, 1280, 720, 30.0)
    raise DeviceConfigError(f"camera {setting!r}: use 'sim' or 'v4l2:<index|path>'")


def make_printer(setting: str) -> Printer:
    """``png:DIR``, ``zpl:tcp://HOST:PORT`` or ``zpl:/dev/...``."""
    kind, _, target = setting.partition(":")
    if kind == "png" and target:
        return PngPrinter(Path(target))
    if kind == "zpl" and target:
        return ZplPrinter(target)
    raise DeviceConfigError(f"printer {setting!r}: use 'png:DIR' or 'zpl:TARGET'")


def build_devices(config: EdgeConfig) -> Devices:
    """Construct the devices the configuration names."""
    return Devices(
        camera=make_camera(config.camera),
        decoder=default_chain(VOUCHER_FORMATS),
        pin_factory=make_pin_factory(config.pin_factory),
        printer=make_printer(config.printer),
    )
