"""Cameras: a frame source that always hands out the newest frame (no backlog).

A camera thread fills a one-frame slot; the agent's loop takes what is there when it is
ready for the next one, and the frames in between are dropped and counted. Decoding a stale
frame would only add latency between the shopper's voucher and the door.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Frame:
    """One camera frame: BGR or grayscale pixels, when it was captured, its number."""

    image: NDArray[np.uint8]
    captured_at: float
    seq: int


class FrameSource(Protocol):
    """A camera, real or simulated."""

    async def start(self) -> None:
        """Begin capturing."""
        ...

    async def stop(self) -> None:
        """Stop capturing and release the device."""
        ...

    async def next_frame(self) -> Frame:
        """The newest frame not handed out yet, waiting for one if needed."""
        ...


class LatestFrameSlot:
    """A single-frame mailbox between a producer thread and an asyncio consumer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self.dropped = 0
        self.delivered = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the consumer's event loop (call from that loop)."""
        self._loop = loop
        self._ready = asyncio.Event()

    def put(self, frame: Frame) -> None:
        """Store ``frame``, replacing an unread one. Safe from any thread."""
        with self._lock:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
        loop, ready = self._loop, self._ready
        if loop is not None and ready is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ready.set)

    async def get(self) -> Frame:
        """Wait for and take the newest frame."""
        assert self._ready is not None, "bind() the slot to a loop first"
        while True:
            with self._lock:
                frame, self._frame = self._frame, None
            if frame is not None:
                self.delivered += 1
                return frame
            self._ready.clear()
            await self._ready.wait()


class Capture(Protocol):
    """What the capture thread reads from: ``cv2.VideoCapture`` or the simulator's stand-in."""

    def read(self) -> tuple[bool, Any]:
        """Block until the next frame; ``(False, None)`` when none came."""
        ...

    def release(self) -> None:
        """Free the device."""
        ...


class CaptureCamera:
    """A frame source that reads a :class:`Capture` on its own thread into a one-frame slot.

    Colour frames are turned to grayscale on the capture thread (every decoder wants gray,
    and the conversion is then off the decode path). After ``reopen_after`` failed reads in a
    row the device is closed and opened again (a USB camera that was unplugged and replugged);
    ``healthy`` is False while that lasts, so the agent can report a camera fault.
    """

    def __init__(
        self,
        open_capture: Callable[[], Capture],
        *,
        name: str = "camera",
        reopen_after: int = 20,
    ) -> None:
        self._open_capture = open_capture
        self._name = name
        self._reopen_after = reopen_after
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.read_failures = 0
        self.reopens = 0
        self.healthy = True

    @property
    def dropped(self) -> int:
        """Frames the consumer never took because a newer one replaced them."""
        return self._slot.dropped

    async def start(self) -> None:
        """Open the device and start the capture thread."""
        self._slot.bind(asyncio.get_running_loop())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            capture = self._open_capture()
            failures = 0
            try:
                while not self._stop.is_set() and failures < self._reopen_after:
                    ok, image = capture.read()
                    if not ok or image is None:
                        failures += 1
                        self.read_failures += 1
                        self._stop.wait(0.05)  # the device hiccuped; don't spin
                        continue
                    failures = 0
                    self.healthy = True
                    seq += 1
                    self._slot.put(Frame(_gray(image), time.monotonic(), seq))
            finally:
                capture.release()
            if not self._stop.is_set():
                self.healthy = False
                self.reopens += 1
                self._stop.wait(1.0)

    async def stop(self) -> None:
        """Stop the thread and release the device."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None

    async def next_frame(self) -> Frame:
        """The newest frame."""
        return await self._slot.get()


def _gray(image: Any) -> NDArray[np.uint8]:
    array = np.asarray(image, np.uint8)
    if array.ndim == 2:
        return array
    import cv2

    return np.asarray(cv2.cvtColor(array, cv2.COLOR_BGR2GRAY), np.uint8)


def open_opencv(
    device: int | str, width: int, height: int, fps: float, backend: str = "v4l2"
) -> Capture:
    """``cv2.VideoCapture`` on a V4L2 device (USB, or CSI through libcamera's V4L2 layer),
    asking for ``width``×``height`` at ``fps`` and a one-frame driver buffer. ``backend="any"``
    lets OpenCV choose (video files in tests)."""
    import cv2

    api = cv2.CAP_V4L2 if backend == "v4l2" else cv2.CAP_ANY
    capture = cv2.VideoCapture(device, api)
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    capture.set(cv2.CAP_PROP_FPS, fps)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cast(Capture, capture)


class OpenCVCamera(CaptureCamera):
    """A USB or CSI camera through OpenCV's V4L2 backend, read on its own thread."""

    def __init__(
        self, device: int | str, width: int, height: int, fps: float, backend: str = "v4l2"
    ) -> None:
        super().__init__(lambda: open_opencv(device, width, height, fps, backend), name="camera")
