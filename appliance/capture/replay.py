"""Replay of still images from a folder, or of a video file, as if from a camera.

A folder of stills plays like a stage moved from field to field: with ``fps`` > 0
and ``hold_s`` > 0 each picture stays in view for ``round(hold_s * fps)`` frames
(the same decoded picture, new seq and timestamp each time), paced at ``fps``;
then the next file. ``fps`` 0 delivers each file once, as fast as it is read.
The hold is counted in frames, not wall time, so what a replay delivers does not
depend on how busy the machine is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from appliance.capture.frame import Frame
from appliance.capture.source import EndOfStream, RejectedFrame, SourceError, SourceFault
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import InputConfig

# Re-exported for the modules that imported them from here before source.py existed.
__all__ = ["IMAGE_SUFFIXES", "EndOfStream", "Pacer", "RejectedFrame", "ReplaySource",
           "SourceError", "hold_frames"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class Pacer:
    """Spaces successive frames ``1/fps`` apart (``fps`` 0: never waits).

    A late frame is not made up for by a burst: when more than one interval behind,
    the schedule restarts from now. So a wait never exceeds one frame interval.
    """

    def __init__(self, fps: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def wait(self) -> float:
        """Wait until the next frame is due; returns the clock reading after the wait."""
        now = self._clock()
        if self.interval <= 0:
            return now
        if self._due is None or now - self._due > self.interval:
            self._due = now  # first frame, or far behind: no catching up
        elif self._due > now:
            self._sleep(self._due - now)
            now = self._clock()
        self._due += self.interval
        return now


def hold_frames(hold_s: float, fps: float) -> int:
    """Frames one still stays in view: ``round(hold_s * fps)``, at least 1; 1 when fps is 0."""
    if fps <= 0:
        return 1
    return max(1, round(hold_s * fps))


class ReplaySource:
    """Frames from a folder of images (sorted by name) or a video file.

    Decode failures of stills come back as :class:`RejectedFrame` (reported, never
    skipped). The end raises :class:`EndOfStream`, or starts again with ``loop``.
    ``Frame.source`` is the file path (``<video>#<n>`` for the n-th video frame).
    """

    def __init__(self, path: Path | str, *, input_cfg: InputConfig, fps: float = 0.0,
                 hold_s: float = 0.0, loop: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        path = Path(path)
        if not path.exists():
            raise SourceError(f"replay source {path} does not exist")
        self.path = path
        self.source_id = f"replay:{path}"
        self.input_cfg = input_cfg
        self.loop = loop
        self.hold_frames = hold_frames(hold_s, fps)
        self._clock = clock
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._files: list[Path] = []
        if path.is_dir():
            self._files = sorted(p for p in path.iterdir()
                                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"replay folder {path} holds no images "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._opened = False
        self._seq = 0
        self._next_file = 0
        self._held: Frame | None = None
        self._held_left = 0
        self._video: cv2.VideoCapture | None = None
        self._video_frame = 0

    @property
    def files(self) -> list[Path]:
        """The stills in the order they are replayed (empty for a video)."""
        return list(self._files)

    def open(self) -> None:
        """Start at the first file or video frame (no-op when open)."""
        if self._opened:
            return
        if not self._files:
            self._video = self._open_video()
        self._opened = True

    def read(self) -> Frame | RejectedFrame:
        """The next frame (paced), a RejectedFrame for a bad still, or EndOfStream."""
        if not self._opened:
            raise SourceFault(f"{self.source_id} is not open")
        item = self._next_still() if self._files else self._next_video_frame()
        now = self._pacer.wait()
        self._seq += 1
        if isinstance(item, RejectedFrame):
            return RejectedFrame(self._seq, item.source, item.code, item.reason)
        return Frame(image=item.image, seq=self._seq, timestamp=now, source=item.source,
                     pixel_format="file")

    def close(self) -> None:
        """Release the video (idempotent); a later open() starts again."""
        video, self._video = self._video, None
        if video is not None:
            video.release()
        self._opened = False
        self._next_file = 0
        self._held, self._held_left = None, 0
        self._video_frame = 0

    # ------------------------------------------------------------ stills

    def _next_still(self) -> Frame | RejectedFrame:
        """The held picture again while its hold lasts, else the next file decoded."""
        if self._held is not None and self._held_left > 0:
            self._held_left -= 1
            return self._held
        if self._next_file >= len(self._files):
            if not self.loop:
                raise EndOfStream(f"{self.source_id}: all {len(self._files)} files replayed")
            self._next_file = 0
        path = self._files[self._next_file]
        self._next_file += 1
        try:
            image = load_still(path, self.input_cfg)
        except ImageRejected as exc:
            self._held = None
            return RejectedFrame(0, str(path), exc.code, exc.reason)
        # Every repeat shares this array: read-only so no consumer can alter later frames.
        image.flags.writeable = False
        self._held = Frame(image=image, seq=0, timestamp=0.0, source=str(path))
        self._held_left = self.hold_frames - 1
        return self._held

    # ------------------------------------------------------------ video

    def _open_video(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.path} as a video or image folder")
        return cap

    def _next_video_frame(self) -> Frame:
        """The next decoded video frame; at the end start again (loop) or EndOfStream."""
        assert self._video is not None  # open() made it for a video path
        ok, bgr = self._video.read()
        if not ok and self.loop and self._video_frame > 0:
            self._video.release()
            self._video = self._open_video()
            self._video_frame = 0
            ok, bgr = self._video.read()
        if not ok or bgr is None:
            raise EndOfStream(f"{self.source_id}: end of the video after "
                              f"{self._video_frame} frames")
        self._video_frame += 1
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return Frame(image=rgb, seq=0, timestamp=0.0, source=f"{self.path}#{self._video_frame}")
