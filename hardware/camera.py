"""Cameras: a frame source that always hands out the newest frame (no backlog).

A camera thread fills a one-frame slot; the agent's loop takes what is there when it is
ready for the next one, and the frames in between are dropped and counted. Decoding a stale
frame would only add latency between the shopper's voucher and the door.
"""

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Protocol

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


class OpenCVCamera:
    """A USB or CSI camera through OpenCV's V4L2 backend, read on its own thread."""

    def __init__(self, device: int | str, width: int, height: int, fps: float) -> None:
        self._device = device
        self._size = (width, height)
        self._fps = fps
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.read_failures = 0

    async def start(self) -> None:
        """Open the device and start the capture thread."""
        self._slot.bind(asyncio.get_running_loop())
        self._stop.clear()
        self._thread = threading.Thread(target=self._capture, name="camera", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        import cv2

        capture = cv2.VideoCapture(self._device, cv2.CAP_V4L2)
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        capture.set(cv2.CAP_PROP_FPS, self._fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        seq = 0
        try:
            while not self._stop.is_set():
                ok, image = capture.read()
                if not ok:
                    self.read_failures += 1
                    self._stop.wait(0.1)  # the device hiccuped; don't spin
                    continue
                seq += 1
                self._slot.put(Frame(np.asarray(image, np.uint8), time.monotonic(), seq))
        finally:
            capture.release()

    async def stop(self) -> None:
        """Stop the thread and release the device."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    async def next_frame(self) -> Frame:
        """The newest frame."""
        return await self._slot.get()
