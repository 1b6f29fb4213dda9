"""A simulated kiosk camera: voucher QR codes rendered into camera-like frames.

Frames come at a fixed rate from the same capture thread and newest-frame slot a real
camera uses (:class:`~hardware.camera.CaptureCamera`). ``show(text)`` puts a code in front
of the lens for a number of frames; otherwise the camera sees an empty counter.
"""

import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import cv2
import numpy as np
import segno
from numpy.typing import NDArray

from hardware.camera import CaptureCamera

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


class SimulatedCapture:
    """A ``cv2.VideoCapture`` stand-in: ``read()`` blocks for the camera's frame clock and
    returns what the test or demo put in front of the lens, else the empty counter."""

    def __init__(self, camera: "SimulatedCamera") -> None:
        self._camera = camera
        self._next_at = time.monotonic()
        self._n = 0

    def read(self) -> tuple[bool, Image]:
        """The next frame, at ``fps``."""
        cam = self._camera
        delay = self._next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the camera's frame clock (we are on the capture thread)
        self._next_at = max(self._next_at + 1.0 / cam.fps, time.monotonic() - 1.0)
        if cam.failing:
            return False, None  # type: ignore[return-value]
        self._n += 1
        return True, cam.take_frame(self._n)

    def release(self) -> None:
        """Nothing to free."""


class SimulatedCamera(CaptureCamera):
    """A camera at ``fps`` frames a second that sees what the test or demo shows it.

    It is the real :class:`~hardware.camera.CaptureCamera` (capture thread, newest-frame slot,
    reopen on failures) reading a :class:`SimulatedCapture` instead of a V4L2 device.
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        seed: int = 0,
        distortion: Distortion = PRESETS["clean"],
    ) -> None:
        super().__init__(lambda: SimulatedCapture(self), name="sim-camera")
        self.width, self.height, self.fps = width, height, fps
        self.distortion = distortion
        self.failing = False
        self._rng = np.random.default_rng(seed)
        self._queue: deque[Image] = deque()
        self._lock = threading.Lock()
        self._empty = [render_scene(None, self._rng, width, height) for _ in range(3)]

    def show(self, text: str, frames: int = 10) -> None:
        """Hold a QR code of ``text`` in front of the camera for the next ``frames`` frames."""
        d = replace(self.distortion)
        rendered = render_scene(text, self._rng, self.width, self.height, distortion=d)
        with self._lock:
            self._queue.extend([rendered] * frames)

    def blank(self, frames: int = 5) -> None:
        """Show the empty counter for the next ``frames`` frames (the phone is taken away)."""
        with self._lock:
            self._queue.extend([self._empty[0]] * frames)

    def push_frame(self, image: Image) -> None:
        """Make ``image`` the next frame (e.g. a dataset image)."""
        with self._lock:
            self._queue.append(image)

    def take_frame(self, n: int) -> Image:
        """What the lens sees for frame ``n`` (called by the capture)."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self._empty[n % len(self._empty)]
