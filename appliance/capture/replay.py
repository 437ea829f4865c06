"""Replay of still images from a folder, or of a video file, as if from a camera."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2

from appliance.capture.frame import Frame
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import InputConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class SourceError(RuntimeError):
    """A source cannot be opened (missing folder, unreadable video, bad URI)."""


@dataclass(frozen=True)
class RejectedFrame:
    """A replayed file that could not be decoded: reported, never silently skipped."""

    seq: int
    source: str
    code: str
    reason: str


def parse_source(uri: str) -> Path:
    """The path of a ``replay:PATH`` source URI."""
    kind, _, rest = uri.partition(":")
    if kind != "replay" or not rest:
        raise SourceError(f"source {uri!r}: expected replay:DIR_OR_VIDEO")
    return Path(rest)


class ReplaySource:
    """Frames from a folder of images (sorted by name) or a video file.

    ``fps`` > 0 paces the frames like a camera; 0 delivers them as fast as they
    are taken. ``loop`` starts again at the end. ``stop`` ends the replay early.
    """

    def __init__(self, path: Path, *, input_cfg: InputConfig, fps: float = 0.0,
                 loop: bool = False, stop: threading.Event | None = None) -> None:
        if not path.exists():
            raise SourceError(f"replay source {path} does not exist")
        self.path = path
        self.fps = fps
        self.loop = loop
        self.input_cfg = input_cfg
        self.stop = stop or threading.Event()
        self._files: list[Path] = []
        if path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"replay folder {path} holds no images "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._seq = 0
        self._closed = False

    def frames(self) -> Iterator[Frame | RejectedFrame]:
        """Yield frames (or rejections) until the end, or forever with ``loop``, or stop."""
        next_due = time.monotonic()
        while not (self.stop.is_set() or self._closed):
            for item in self._one_pass():
                if self.fps > 0:
                    next_due += 1.0 / self.fps
                    if self.stop.wait(max(0.0, next_due - time.monotonic())):
                        return
                if self.stop.is_set() or self._closed:
                    return
                yield item
            if not self.loop:
                return

    def _one_pass(self) -> Iterator[Frame | RejectedFrame]:
        if self._files:
            for path in self._files:
                yield self._still(path)
        else:
            yield from self._video()

    def _still(self, path: Path) -> Frame | RejectedFrame:
        self._seq += 1
        try:
            image = load_still(path, self.input_cfg)
        except ImageRejected as exc:
            return RejectedFrame(self._seq, str(path), exc.code, exc.reason)
        return Frame(image=image, seq=self._seq, timestamp=time.monotonic(), source=str(path))

    def _video(self) -> Iterator[Frame | RejectedFrame]:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"cannot open {self.path} as a video or image folder")
        try:
            while not self.stop.is_set():
                ok, bgr = cap.read()
                if not ok:
                    return
                self._seq += 1
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(image=rgb, seq=self._seq, timestamp=time.monotonic(),
                            source=f"{self.path}#{self._seq}")
        finally:
            cap.release()

    def close(self) -> None:
        """End the replay (idempotent). The shared stop event is left alone."""
        self._closed = True
