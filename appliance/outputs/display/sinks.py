"""Display sinks: where the live picture goes (a screen, a preview overlay, a file, nowhere).

A display problem must not stop scoring: sinks that write or hand pictures on at
run time (the file, the picamera2 overlay) count their errors by kind and log the
first of each kind, never raise them. Opening a sink that cannot work (a library
missing, no screen) raises :class:`DisplayError` once, at start, with the reason
and the fix. Passing a picture of the wrong shape is a programming error and
raises ValueError.

The pygame and picamera2 sinks live in their own modules and are imported only
when chosen, so the box runs without those libraries when it has no screen.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from appliance.config import DisplayConfig
from appliance.files import write_atomic
from appliance.outputs import overlay

_log = logging.getLogger(__name__)

SINKS = ("kmsdrm", "window", "offscreen", "picamera2", "file", "none")
JPEG_QUALITY = 85
# PNG level 1: the display file is rewritten every second; size matters less than CPU.
PNG_COMPRESSION = 1


class DisplayError(RuntimeError):
    """A display sink cannot be opened or used; the message says why and what to do."""


@runtime_checkable
class DisplaySink(Protocol):
    """Where composed live pictures go.

    ``size`` is the (width, height) the sink wants pictures composed at, or None for
    any size; ``annotations_only`` sinks show the camera picture themselves and want
    the RGBA annotations (:meth:`LiveComposer.annotations`) instead of the picture.
    ``close`` is idempotent; ``with`` closes the sink on leaving the block.
    """

    @property
    def size(self) -> tuple[int, int] | None: ...

    @property
    def annotations_only(self) -> bool: ...

    @property
    def wants_quit(self) -> bool: ...

    def show(self, picture: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> DisplaySink: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class ErrorTally:
    """Errors counted by kind; the first of each kind is logged as a warning."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.counts: dict[str, int] = {}

    def record(self, kind: str, detail: str) -> None:
        """Count one error of ``kind``; log it if it is the first of its kind."""
        first = kind not in self.counts
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if first:
            _log.warning("%s: %s (%s); further %s errors are counted, not logged", self._what,
                         detail, kind, kind)
        else:
            _log.debug("%s: %s (%s)", self._what, detail, kind)

    @property
    def total(self) -> int:
        """All errors counted so far."""
        return sum(self.counts.values())


def check_rgb(picture: np.ndarray, channels: int = 3) -> None:
    """Raise ValueError unless ``picture`` is a non-empty (H, W, channels) uint8 array."""
    overlay.check_rgb(picture, "display picture", channels)


_S = TypeVar("_S", bound="SinkBase")


class SinkBase:
    """``with`` support for sinks: ``close`` on leaving the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class NullSink(SinkBase):
    """Shows nothing (``display.sink = "none"``); pictures are only counted."""

    def __init__(self) -> None:
        self.shown = 0
        self.closed = False

    @property
    def size(self) -> tuple[int, int] | None:
        return None

    @property
    def annotations_only(self) -> bool:
        return False

    @property
    def wants_quit(self) -> bool:
        return False

    def show(self, picture: np.ndarray) -> None:
        """Count the picture."""
        self.shown += 1

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


def _encode(picture: np.ndarray, suffix: str) -> bytes:
    bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    if suffix == ".png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cv2 cannot encode a {picture.shape[1]}x{picture.shape[0]} "
                         f"picture as {suffix}")
    return data.tobytes()


def _error_kind(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class FileSink(SinkBase):
    """The latest live picture as a JPEG or PNG file, rewritten at most every ``interval_s``.

    Pictures arriving sooner are held, not written; the newest held one is written by
    the next ``show`` after the interval, or by ``close``. Write errors (a full disk,
    a missing or read-only folder) are counted in ``errors`` by kind and never raised.
    The sink keeps a reference to the newest picture until it is written: do not
    modify a picture after showing it.
    """

    def __init__(self, path: str | Path, interval_s: float, *,
                 size: tuple[int, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._suffix = self.path.suffix.lower().replace(".jpeg", ".jpg")
        if self._suffix not in (".jpg", ".png"):
            raise DisplayError(f"display file {self.path}: the name must end in .jpg, .jpeg "
                               f"or .png to choose the format")
        if not (interval_s >= 0 and np.isfinite(interval_s)):
            raise DisplayError(f"display file interval must be >= 0 s, got {interval_s!r}")
        self._interval = float(interval_s)
        self._size = size
        self._clock = clock
        self._last_write: float | None = None
        self._pending: np.ndarray | None = None
        self.errors = ErrorTally(f"display file {self.path}")
        self.writes = 0
        self.held = 0
        self.closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.errors.record(_error_kind(exc), f"cannot create the folder: {exc}")

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size

    @property
    def annotations_only(self) -> bool:
        return False

    @property
    def wants_quit(self) -> bool:
        return False

    @property
    def due(self) -> bool:
        """The next ``show`` would write: callers may skip composing pictures until then."""
        return self._last_write is None or self._clock() - self._last_write >= self._interval

    def show(self, picture: np.ndarray) -> None:
        """Write ``picture`` now, or hold it if the last write was under the interval ago."""
        if self.closed:
            raise DisplayError(f"display file {self.path}: show() after close()")
        check_rgb(picture)
        now = self._clock()
        if self._last_write is not None and now - self._last_write < self._interval:
            self._pending = picture
            self.held += 1
            return
        self._write(picture, now)

    def close(self) -> None:
        """Write the newest held picture, if any; further calls do nothing."""
        if self.closed:
            return
        self.closed = True
        if self._pending is not None:
            self._write(self._pending, self._clock())

    def _write(self, picture: np.ndarray, now: float) -> None:
        self._pending = None
        # The interval counts from the attempt: a failing disk is not retried 30 times
        # a second.
        self._last_write = now
        try:
            # No fsync: the picture is rewritten every second or so and is stale a
            # second later; syncing each one would wear an SD card.
            write_atomic(self.path, _encode(picture, self._suffix), durable=False,
                         make_parents=False)
        except OSError as exc:
            self.errors.record(_error_kind(exc), f"cannot write: {exc}")
            return
        except ValueError as exc:
            self.errors.record("encode", str(exc))
            return
        self.writes += 1


def _pygame_sink(driver: str, cfg: DisplayConfig) -> DisplaySink:
    from appliance.outputs.display.pygame_sink import PygameSink

    return PygameSink(driver, (cfg.width, cfg.height))


def _picamera2_sink(cfg: DisplayConfig, picam2: object | None) -> DisplaySink:
    if picam2 is None:
        try:
            import picamera2  # noqa: F401  (only to tell a missing library from a missing camera)
        except ImportError as exc:
            raise DisplayError("display sink 'picamera2' needs the picamera2 library: "
                               "pip install eyepiece[pi] (or apt install python3-picamera2)"
                               ) from exc
        raise DisplayError("display sink 'picamera2' draws over the camera's own preview: it "
                           "needs the picamera2 camera source (source.uri = picamera2:...)")
    from appliance.outputs.display.picamera2_overlay import Picamera2OverlaySink

    size = (cfg.width, cfg.height) if cfg.width and cfg.height else None
    return Picamera2OverlaySink(picam2, size=size)


def open_display(cfg: DisplayConfig, *, picam2: object | None = None) -> DisplaySink:
    """The sink ``cfg.sink`` names, opened.

    ``picam2`` is the running Picamera2 camera (from the picamera2 source); only the
    picamera2 sink uses it. Raises DisplayError naming the reason when the sink is
    unknown or cannot be opened (a library missing, no screen).
    """
    if cfg.sink == "none":
        return NullSink()
    if cfg.sink == "file":
        size = (cfg.width, cfg.height) if cfg.width and cfg.height else None
        return FileSink(cfg.path, cfg.file_interval_s, size=size)
    if cfg.sink in ("kmsdrm", "window", "offscreen"):
        return _pygame_sink(cfg.sink, cfg)
    if cfg.sink == "picamera2":
        return _picamera2_sink(cfg, picam2)
    raise DisplayError(f"unknown display sink {cfg.sink!r}; choose one of {SINKS}")
