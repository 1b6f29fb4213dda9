"""The kiosk's hardware, chosen in one place from configuration.

``camera = "sim"`` and ``pin_factory = "mock"`` give the simulator's parts; ``camera =
"v4l2:0"`` (or a device path) and ``pin_factory = "lgpio"``/``"rpigpio"`` give a Pi's.
Printers (``printer`` for receipts, ``label_printer`` for bag and tote labels, the same one
when not set): ``png:DIR`` (simulated), ``zpl:TARGET``, ``escpos:TARGET`` or
``brother_ql:MODEL:LABEL:TARGET``, where TARGET is ``tcp://HOST[:PORT]`` or a device file
such as ``/dev/usb/lp0``.
"""

from dataclasses import dataclass
from pathlib import Path

from edge.config import EdgeConfig
from hardware.camera import FrameSource, OpenCVCamera
from hardware.decoder import KIOSK_FORMATS, DecoderChain, default_chain
from hardware.pins import make_pin_factory
from hardware.printer import BrotherQLPrinter, EscPosPrinter, Printer, ZplPrinter
from simulator.camera import SimulatedCamera
from simulator.printer import PngPrinter


@dataclass
class Devices:
    """What the agent drives: a frame source, a decoder chain, GPIO pins and a printer."""

    camera: FrameSource
    decoder: DecoderChain
    pin_factory: object
    printer: Printer
    labels: Printer | None = None

    @property
    def label_printer(self) -> Printer:
        """Where bag and tote labels go (the receipt printer when there is no other)."""
        return self.labels or self.printer


class DeviceConfigError(ValueError):
    """A camera or printer setting this agent does not understand."""


def make_camera(
    setting: str, width: int = 1280, height: int = 720, fps: float = 30.0
) -> FrameSource:
    """``sim`` or ``v4l2:<index or /dev path>``."""
    if setting == "sim":
        return SimulatedCamera(width, height, fps)
    if setting.startswith("v4l2:"):
        target = setting.removeprefix("v4l2:")
        device: int | str = int(target) if target.isdigit() else target
        return OpenCVCamera(device, width, height, fps)
    raise DeviceConfigError(f"camera {setting!r}: use 'sim' or 'v4l2:<index|path>'")


def make_printer(setting: str) -> Printer:
    """``png:DIR``, ``zpl:TARGET``, ``escpos:TARGET`` or ``brother_ql:MODEL:LABEL:TARGET``."""
    kind, _, target = setting.partition(":")
    if kind == "png" and target:
        return PngPrinter(Path(target))
    if kind == "zpl" and target:
        return ZplPrinter(target)
    if kind == "escpos" and target:
        return EscPosPrinter(target)
    if kind == "brother_ql":
        model, _, rest = target.partition(":")
        label, _, device = rest.partition(":")
        if model and label and device:
            return BrotherQLPrinter(device, model=model, label=label)
    raise DeviceConfigError(
        f"printer {setting!r}: use 'png:DIR', 'zpl:TARGET', 'escpos:TARGET' or "
        "'brother_ql:MODEL:LABEL:TARGET'"
    )


def build_devices(config: EdgeConfig) -> Devices:
    """Construct the devices the configuration names."""
    return Devices(
        camera=make_camera(
            config.camera, config.camera_width, config.camera_height, config.camera_fps
        ),
        decoder=default_chain(KIOSK_FORMATS),
        pin_factory=make_pin_factory(config.pin_factory),
        printer=make_printer(config.printer),
        labels=make_printer(config.label_printer) if config.label_printer else None,
    )
