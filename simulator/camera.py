"""A simulated kiosk camera: voucher QR codes rendered into camera-like frames.

Frames come at a fixed rate from a thread, like a real camera, through the same
:class:`~hardware.camera.LatestFrameSlot`. ``show(text)`` puts a code in front of the lens
for a number of frames; otherwise the camera sees an empty counter.
"""

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import cv2
import numpy as np
import segno
from numpy.typing import NDArray

from hardware.camera import Frame, LatestFrameSlot

Image = NDArray[np.uint8]


@dataclass(frozen=True)
class Distortion:
    """How far a frame is from a clean, square-on, sharp picture."""

    module_px: float = 6.0
    tilt: float = 0.0  # perspective: fraction of the code's width the far edge shrinks by
    rotation_deg: float = 0.0
    blur_sigma: float = 0.0
    glare: float = 0.0  # 0..1 strength of a bright spot over the code
    noise_sigma: float = 4.0
    contrast: float = 1.0  # 1 = black on white; 0.3 = grey on grey


PRESETS: dict[str, Distortion] = {
    "clean": Distortion(),
    "tilted": Distortion(tilt=0.25, rotation_deg=12.0),
    "blurred": Distortion(blur_sigma=1.6),
    "glare": Distortion(glare=0.55),
    "noisy": Distortion(noise_sigma=18.0),
    "low_contrast": Distortion(contrast=0.35),
    "small": Distortion(module_px=3.0),
}


def _qr_image(text: str, module_px: float, contrast: float) -> Image:
    matrix = np.array(segno.make_qr(text, error="m").matrix, dtype=np.uint8)
    matrix = np.pad(matrix, 4)  # quiet zone
    size = max(1, round(matrix.shape[0] * module_px))
    code = cv2.resize(matrix * 255, (size, size), interpolation=cv2.INTER_NEAREST)
    dark, light = 128 - 110 * contrast, 128 + 110 * contrast
    return np.where(code > 0, dark, light).astype(np.uint8)


def _background(rng: np.random.Generator, width: int, height: int) -> Image:
    gradient = np.linspace(90, 150, width, dtype=np.float32)[None, :]
    base = np.repeat(gradient, height, axis=0)
    base += (
        rng.normal(0, 6, (height // 40 + 1, width // 40 + 1))
        .repeat(40, 0)
        .repeat(40, 1)[:height, :width]
    )
    return np.clip(base, 0, 255).astype(np.uint8)


def _place(frame: Image, code: Image, d: Distortion, rng: np.random.Generator) -> Image:
    h, w = frame.shape
    size = code.shape[0]
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    cy = h / 2 + rng.uniform(-0.1, 0.1) * h
    half = size / 2
    shrink = d.tilt * size / 2
    src = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float32)
    corners = [[-half, -half + shrink], [half, -half], [half, half], [-half, half - shrink]]
    dst = np.array(corners, dtype=np.float32)
    angle = np.deg2rad(d.rotation_deg)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (dst @ rot.T + [cx, cy]).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(code, matrix, (w, h), borderValue=0)
    mask = cv2.warpPerspective(np.full_like(code, 255), matrix, (w, h), borderValue=0)
    placed: Image = np.where(mask > 0, warped, frame).astype(np.uint8)
    return placed


def _glare(frame: Image, strength: float, rng: np.random.Generator) -> Image:
    h, w = frame.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2 + rng.uniform(-80, 80), h / 2 + rng.uniform(-60, 60)
    spot = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.12 * w) ** 2)))
    out = frame.astype(np.float32) + strength * 255 * spot
    glared: Image = np.clip(out, 0, 255).astype(np.uint8)
    return glared


def render_scene(
    text: str | None,
    rng: np.random.Generator,
    width: int = 1280,
    height: int = 720,
    *,
    distortion: Distortion = PRESETS["clean"],
) -> Image:
    """A grayscale camera frame of a counter, with ``text`` as a QR code on it if given."""
    frame = _background(rng, width, height)
    if text is not None:
        code = _qr_image(text, distortion.module_px, distortion.contrast)
        frame = _place(frame, code, distortion, rng)
    if distortion.blur_sigma > 0:
        frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), distortion.blur_sigma), np.uint8)
    if distortion.glare > 0:
        frame = _glare(frame, distortion.glare, rng)
    if distortion.noise_sigma > 0:
        noisy = frame.astype(np.float32) + rng.normal(0, distortion.noise_sigma, frame.shape)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
    return frame


class SimulatedCamera:
    """A camera at ``fps`` frames a second that sees what the test or demo shows it."""

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        seed: int = 0,
        distortion: Distortion = PRESETS["clean"],
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.distortion = distortion
        self._rng = np.random.default_rng(seed)
        self._slot = LatestFrameSlot()
        self._queue: deque[Image] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._empty: list[Image] = []
        self._seq = 0

    @property
    def dropped(self) -> int:
        """Frames the consumer never took because a newer one replaced them."""
        return self._slot.dropped

    def show(self, text: str, frames: int = 10) -> None:
        """Hold a QR code of ``text`` in front of the camera for the next ``frames`` frames."""
        d = replace(self.distortion)
        with self._lock:
            rendered = [render_scene(text, self._rng, self.width, self.height, distortion=d)]
            self._queue.extend(rendered * frames)

    def blank(self, frames: int = 5) -> None:
        """Show the empty counter for the next ``frames`` frames (the phone is taken away)."""
        with self._lock:
            self._queue.extend([render_scene(None, self._rng, self.width, self.height)] * frames)

    def push_frame(self, image: Image) -> None:
        """Make ``image`` the next frame (e.g. a dataset image)."""
        with self._lock:
            self._queue.append(image)

    async def start(self) -> None:
        """Start producing frames."""
        self._slot.bind(asyncio.get_running_loop())
        self._empty = [render_scene(None, self._rng, self.width, self.height) for _ in range(3)]
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, name="sim-camera", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        period = 1.0 / self.fps
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                image = self._queue.popleft() if self._queue else None
            if image is None:
                image = self._empty[self._seq % len(self._empty)]
            self._seq += 1
            self._slot.put(Frame(image, time.monotonic(), self._seq))
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))  # the camera's frame clock

    async def stop(self) -> None:
        """Stop producing frames."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None

    async def next_frame(self) -> Frame:
        """The newest frame."""
        return await self._slot.get()
