"""USB cameras through OpenCV's V4L2 backend (``v4l2:/dev/video0`` or ``v4l2:0``).

OpenCV's V4L2 backend waits for a frame with ``select()`` and gives up after
``OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT`` seconds (10 by default, read once per process
by OpenCV), so a stalled camera makes ``read()`` fail after about 10 s, never hang
forever. ``CAP_PROP_READ_TIMEOUT_MSEC`` is also set from ``read_timeout_s``; the
backends that do not know it (V4L2 among them) refuse it harmlessly. The timeouts are
not passed to ``open()``: OpenCV refuses to open with a parameter the backend does not
consume.

With ``source.auto_white_balance`` false, ``CAP_PROP_AUTO_WB`` (the V4L2 control
``white_balance_automatic``) is set to 0 and read back: the camera keeps the white balance
it has, and fluorescence light keeps its colour.

Exposure and gain (``source.exposure_us``, ``source.gain``) are pinned for the HEp-2
intensity, which is only comparable between fields taken at one exposure. On the V4L2
backend ``CAP_PROP_AUTO_EXPOSURE`` takes the raw ``V4L2_CID_EXPOSURE_AUTO`` menu value
(1 = manual, 3 = aperture priority, a UVC camera's usual automatic mode),
``CAP_PROP_EXPOSURE`` is ``exposure_time_absolute`` in units of 100 µs and
``CAP_PROP_GAIN`` is the driver's own gain number. That holds while the environment
variable ``OPENCV_VIDEOIO_V4L_RANGE_NORMALIZED`` is unset: set, it rescales the properties
to [0, 1). ``set()`` does not prove that the driver took a value (OpenCV ignores a clamp
or a refused control), so every pinned value is read back, and
:attr:`V4l2Source.exposure_pinned` says whether the camera holds what was asked.

The small helpers :func:`read_rgb`, :func:`fourcc_text`, :func:`set_read_timeout` and
:func:`opencv_message` are shared with :mod:`appliance.capture.gstreamer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from appliance.capture.frame import Frame
from appliance.capture.source import SourceError, SourceFault

_log = logging.getLogger(__name__)

FOURCCS = ("MJPG", "YUYV", "any")
V4L2_EXPOSURE_MANUAL = 1  # V4L2_CID_EXPOSURE_AUTO menu: manual exposure time and iris
V4L2_EXPOSURE_UNIT_US = 100.0  # exposure_time_absolute counts 100 µs steps
# A pinned value read back further than this from the request is not what was asked for.
PIN_TOLERANCE = 0.01


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the camera sources use."""

    def isOpened(self) -> bool: ...  # OpenCV's name

    def read(self) -> tuple[bool, Any]: ...

    def set(self, prop_id: int, value: float) -> bool: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[..., VideoCaptureLike]


# ---------------------------------------------------------------- shared helpers


def read_rgb(cap: VideoCaptureLike, where: str) -> np.ndarray:
    """Read one frame from an OpenCV capture as contiguous (H, W, 3) uint8 RGB.

    Raises :class:`SourceFault` naming ``where`` and the reason when OpenCV raises,
    returns no frame, or returns something that is not an 8-bit 3-channel picture.
    """
    try:
        ok, bgr = cap.read()
    except cv2.error as exc:
        raise SourceFault(f"{where}: OpenCV error while reading: {opencv_message(exc)}") from exc
    if not ok or bgr is None:
        raise SourceFault(
            f"{where}: no frame (camera unplugged, stalled past the driver's timeout, or the "
            "stream ended)"
        )
    return bgr_to_rgb(bgr, where)


def bgr_to_rgb(bgr: Any, where: str) -> np.ndarray:
    """Check that ``bgr`` is a non-empty (H, W, 3) uint8 array and convert it to RGB."""
    if not isinstance(bgr, np.ndarray):
        raise SourceFault(f"{where}: the capture returned {type(bgr).__name__}, not an image")
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise SourceFault(
            f"{where}: unusable frame of shape {bgr.shape} and type {bgr.dtype} (expected "
            "8-bit BGR with 3 channels; a GStreamer pipeline must convert to "
            "video/x-raw,format=BGR before the appsink)"
        )
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def fourcc_code(text: str) -> int:
    """The ``CAP_PROP_FOURCC`` value of four ASCII characters (first character lowest)."""
    if len(text) != 4 or not text.isascii():
        raise ValueError(f"a fourcc is 4 ASCII characters, got {text!r}")
    return sum(ord(c) << (8 * i) for i, c in enumerate(text))


def fourcc_text(code: float) -> str:
    """The four characters of a ``CAP_PROP_FOURCC`` value, or ``"unknown"``."""
    value = int(code)
    if value <= 0:
        return "unknown"
    chars = bytes((value >> (8 * i)) & 0xFF for i in range(4))
    text = chars.decode("ascii", errors="replace").strip("\x00 ")
    return text if text and text.isprintable() else "unknown"


def set_read_timeout(cap: VideoCaptureLike, read_timeout_s: float, where: str) -> None:
    """Ask the backend for a read timeout; backends without one keep their own."""
    prop = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
    if prop is None:  # an OpenCV older than 4.6
        return
    if not cap.set(prop, read_timeout_s * 1000.0):
        _log.debug("%s: the backend has no read timeout; it applies its own", where)


def opencv_message(exc: BaseException) -> str:
    """OpenCV's messages span lines (file, function, assertion): keep the informative one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------- the source


class V4l2Source:
    """A USB (UVC) camera read with OpenCV's V4L2 backend.

    ``device`` is a path (``/dev/video0``) or an index (``"0"``). Width, height and fps
    of 0 leave the driver's default; ``fourcc`` ``"any"`` leaves the pixel format.
    Frames carry the negotiated pixel format (``MJPG``, ``YUYV``...).
    """

    def __init__(self, device: str, *, width: int = 0, height: int = 0, fps: float = 0.0,
                 fourcc: str = "MJPG", read_timeout_s: float = 2.0,
                 exposure_us: float = 0.0, gain: float = 0.0,
                 auto_white_balance: bool = True,
                 capture_factory: CaptureFactory = cv2.VideoCapture) -> None:
        if not device.strip():
            raise SourceError("v4l2 source: no device given (expected v4l2:/dev/videoN or "
                              "v4l2:N)")
        if fourcc not in FOURCCS:
            raise SourceError(f"v4l2 source: fourcc {fourcc!r} is not one of "
                              f"{', '.join(FOURCCS)}")
        self.device = device.strip()
        self.source_id = f"v4l2:{self.device}"
        self.width, self.height, self.fps = width, height, fps
        self.fourcc = fourcc
        self.read_timeout_s = read_timeout_s
        if exposure_us < 0 or gain < 0:
            raise SourceError(f"v4l2 source: exposure {exposure_us} us and gain {gain} must "
                              "be 0 (automatic) or positive")
        self.exposure_us, self.gain = exposure_us, gain
        self.auto_white_balance = auto_white_balance
        self._wb_problems: list[str] = []
        self._factory = capture_factory
        self._cap: VideoCaptureLike | None = None
        self._pin_problems: list[str] = ["not open"]
        self._pixel_format = "unknown"
        self._seq = 0

    @property
    def is_open(self) -> bool:
        """True between a successful open() and close()."""
        return self._cap is not None

    @property
    def exposure_pinned(self) -> bool:
        """True when the open camera holds the configured exposure and gain (auto off).

        False when either is automatic (0 in the config), when the driver did not take a
        value, or while closed: the HEp-2 intensity is then in relative units only.
        """
        return self._cap is not None and not self._pin_problems

    @property
    def exposure_problems(self) -> tuple[str, ...]:
        """Why :attr:`exposure_pinned` is False, in words (empty when pinned)."""
        return tuple(self._pin_problems)

    @property
    def white_balance_problems(self) -> tuple[str, ...]:
        """Why the automatic white balance asked off is not (empty when off, or when it
        was left automatic)."""
        return tuple(self._wb_problems)

    @property
    def white_balance_held(self) -> bool | None:
        """Whether the camera keeps the white balance asked fixed (None: not asked)."""
        return None if self.auto_white_balance else not self._wb_problems

    def open(self) -> None:
        """Open and configure the camera (no-op when open); SourceFault when it cannot."""
        if self._cap is not None:
            return
        target = int(self.device) if self.device.isdigit() else self.device
        try:
            cap = self._factory(target, cv2.CAP_V4L2)
        except cv2.error as exc:
            raise SourceFault(f"cannot open {self.device}: {opencv_message(exc)}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceFault(f"cannot open {self.device}: {self._absent_reason()}")
        try:
            self._configure(cap)
        except cv2.error as exc:
            cap.release()
            raise SourceFault(f"cannot configure {self.device}: {opencv_message(exc)}") from exc
        self._cap = cap

    def read(self) -> Frame:
        """The next frame in RGB; SourceFault when the camera gives none."""
        if self._cap is None:
            raise SourceFault(f"{self.source_id} is not open")
        rgb = read_rgb(self._cap, self.source_id)
        self._seq += 1
        return Frame(image=rgb, seq=self._seq, timestamp=time.monotonic(),
                     source=self.source_id, pixel_format=self._pixel_format,
                     exposure_pinned=self.exposure_pinned,
                     white_balance_held=self.white_balance_held)

    def close(self) -> None:
        """Release the camera (idempotent; safe after a failed open)."""
        cap, self._cap = self._cap, None
        self._pin_problems = ["not open"]
        if cap is not None:
            cap.release()

    def _configure(self, cap: VideoCaptureLike) -> None:
        """Pixel format first (it decides the sizes on offer), then size, rate, buffering."""
        if self.fourcc != "any":
            cap.set(cv2.CAP_PROP_FOURCC, fourcc_code(self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        # One buffer: the pipeline wants the freshest picture, not a queue of old ones.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        set_read_timeout(cap, self.read_timeout_s, self.source_id)
        # After the frame rate: a driver caps the exposure time at the frame interval.
        self._pin_problems = pin_exposure(cap, self.exposure_us, self.gain, self.source_id)
        self._wb_problems = ([] if self.auto_white_balance
                             else fix_white_balance(cap, self.source_id))
        self._pixel_format = fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        if self.fourcc != "any" and self._pixel_format != self.fourcc:
            _log.warning("%s: asked for %s, the camera delivers %s", self.source_id,
                         self.fourcc, self._pixel_format)
        _log.info("%s opened: %dx%d %s at %.3g fps", self.source_id,
                  int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                  self._pixel_format, cap.get(cv2.CAP_PROP_FPS))

    def _absent_reason(self) -> str:
        """Why an open failed, as far as the file system can tell."""
        path = Path(f"/dev/video{self.device}" if self.device.isdigit() else self.device)
        if not path.exists():
            return f"{path} does not exist (is the camera plugged in?)"
        return (f"{path} exists but is not usable as a V4L2 capture device (in use by another "
                "program, no permission: is the user in the 'video' group?, or a metadata node)")


# ---------------------------------------------------------------- exposure and gain


def pin_exposure(cap: VideoCaptureLike, exposure_us: float, gain: float,
                 where: str) -> list[str]:
    """Turn auto exposure off and set exposure and gain; the problems, in words.

    An empty list means the camera reads back manual mode, the exposure and the gain asked
    for (within :data:`PIN_TOLERANCE`). Each problem is logged as a WARNING because the
    intensity of an IIF field taken so is not comparable with the calibration's.
    """
    problems: list[str] = []
    if exposure_us <= 0:
        problems.append("exposure is automatic (source.exposure_us = 0)")
    else:
        problems += _pin_exposure_time(cap, exposure_us)
    if gain <= 0:
        problems.append("gain is automatic (source.gain = 0)")
    else:
        cap.set(cv2.CAP_PROP_GAIN, gain)
        got = cap.get(cv2.CAP_PROP_GAIN)
        if not _close_to(got, gain):
            problems.append(f"the driver holds gain {got:g}, not the {gain:g} asked for (gain "
                            "control missing, clamped to its range, or automatic gain on)")
    asked = exposure_us > 0 or gain > 0
    for problem in problems:
        # Automatic settings are the normal case outside HEp-2: only a refused pin warns.
        if asked:
            _log.warning("%s: %s: the HEp-2 intensity is in relative units", where, problem)
    if not problems:
        _log.info("%s: exposure pinned at %g us, gain %g (auto exposure off)", where,
                  exposure_us, gain)
    return problems


def fix_white_balance(cap: VideoCaptureLike, where: str) -> list[str]:
    """Turn the automatic white balance off (``CAP_PROP_AUTO_WB``, the V4L2 control
    ``white_balance_automatic``); the camera keeps the balance it has. The problems, in
    words, each logged as a WARNING: the colour the HEp-2 wrong-stain check reads would
    follow the scene."""
    cap.set(cv2.CAP_PROP_AUTO_WB, 0)
    mode = cap.get(cv2.CAP_PROP_AUTO_WB)
    if round(mode) == 0:
        _log.info("%s: automatic white balance off", where)
        return []
    problem = (f"the driver kept automatic white balance ({mode:g}; asked for 0): it may "
               "have no such control, or no manual white balance")
    _log.warning("%s: %s: the colour of fluorescence light may be changed by it", where,
                 problem)
    return [problem]


def _pin_exposure_time(cap: VideoCaptureLike, exposure_us: float) -> list[str]:
    """Manual mode first (the driver ignores the time while automatic), then the time."""
    cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, V4L2_EXPOSURE_MANUAL)
    mode = cap.get(cv2.CAP_PROP_AUTO_EXPOSURE)
    if round(mode) != V4L2_EXPOSURE_MANUAL:
        return [f"the driver kept auto exposure mode {mode:g} (asked for "
                f"{V4L2_EXPOSURE_MANUAL}, manual): it has no manual exposure"]
    steps = max(1, round(exposure_us / V4L2_EXPOSURE_UNIT_US))
    cap.set(cv2.CAP_PROP_EXPOSURE, steps)
    got_us = cap.get(cv2.CAP_PROP_EXPOSURE) * V4L2_EXPOSURE_UNIT_US
    if not _close_to(got_us, exposure_us):
        return [f"the driver holds exposure {got_us:g} us, not the {exposure_us:g} us asked "
                "for (clamped to its range or the frame interval; V4L2 sets it in steps "
                "of 100 us)"]
    return []


def _close_to(got: float, wanted: float) -> bool:
    """``got`` within :data:`PIN_TOLERANCE` of a positive ``wanted``."""
    return abs(got - wanted) <= PIN_TOLERANCE * wanted
