"""Raspberry Pi camera modules through picamera2 (``picamera2[:CAMERA_INDEX]``).

picamera2 is imported only when the source is opened, so the rest of the appliance
runs where it is not installed. Its ``"RGB888"`` format is named after libcamera's
little-endian pixel word: in memory each pixel is B, G, R, which is why
``Helpers.make_image`` in picamera2 (``picamera2/request.py``) decodes it with PIL's
raw mode ``"BGR"``. The array is reversed along the channels here to give RGB.

Exposure and gain (``source.exposure_us``, ``source.gain``) go into the configuration's
controls as libcamera names them: ``AeEnable`` False, ``ExposureTime`` (integer µs) and
``AnalogueGain``. The sensor rounds the exposure to whole lines and caps it at the frame
duration, so after start the frame metadata is read back:
:attr:`Picamera2Source.exposure_pinned` is True only when it holds what was asked (the
HEp-2 intensity needs it).

With ``source.auto_white_balance`` false the controls also hold ``AwbEnable`` False and
``ColourGains`` (red, blue) from ``source.colour_gains``, read back from the metadata the
same way: automatic white balance would whiten a fluorescence field's green light.

A tuning file (``source.tuning_file``) replaces the sensor's default libcamera tuning: the
Pi's ISP applies that file's gamma curve (``rpi.contrast``) to every frame, and the HEp-2
intensity needs a linear one. The file is read and checked when the source is made, and
given to ``Picamera2(camera_num, tuning=dict)``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.capture.frame import Frame
from appliance.capture.source import SourceError, SourceFault

_log = logging.getLogger(__name__)

INSTALL_HINT = "picamera2 is not installed: apt install python3-picamera2 on Raspberry Pi OS"
# A pinned value read back further than this from the request is not what was asked for
# (line-time rounding of the exposure stays well inside it).
PIN_TOLERANCE = 0.01
# Frames whose metadata are checked after start: libcamera may apply controls a frame or
# two late.
_PIN_CHECK_FRAMES = 4


class Picamera2Source:
    """A Pi camera read with picamera2's ``capture_array`` from the main stream."""

    def __init__(self, camera_index: int = 0, *, width: int = 0, height: int = 0,
                 fps: float = 0.0, read_timeout_s: float = 2.0, preview: bool = False,
                 exposure_us: float = 0.0, gain: float = 0.0, tuning_file: str = "",
                 colour_gains: tuple[float, float] | None = None,
                 camera_factory: Callable[..., Any] | None = None) -> None:
        if camera_index < 0:
            raise SourceError(f"picamera2 source: camera index {camera_index} is negative")
        if bool(width) != bool(height):
            raise SourceError(
                f"picamera2 source: width and height must both be set or both be 0, got "
                f"{width}x{height}"
            )
        self.camera_index = camera_index
        self.source_id = f"picamera2:{camera_index}"
        self.width, self.height, self.fps = width, height, fps
        if exposure_us < 0 or gain < 0:
            raise SourceError(f"picamera2 source: exposure {exposure_us} us and gain {gain} "
                              "must be 0 (automatic) or positive")
        self.exposure_us, self.gain = exposure_us, gain
        if colour_gains is not None and not all(g > 0 for g in colour_gains):
            raise SourceError(f"picamera2 source: colour gains {colour_gains} must be positive")
        self.colour_gains = colour_gains  # None: automatic white balance
        self._wb_problems: list[str] = []
        self.tuning_file = tuning_file
        self._tuning = load_tuning_file(tuning_file) if tuning_file else None
        self._pin_problems: list[str] = ["not open"]
        self.read_timeout_s = read_timeout_s
        self.preview = preview  # run picamera2's DRM preview (the picamera2 display sink)
        self._factory = camera_factory
        self._camera: Any = None
        self._seq = 0

    def open(self) -> None:
        """Configure and start the camera (no-op when open).

        SourceError when picamera2 is missing; SourceFault when the camera cannot start.
        """
        if self._camera is not None:
            return
        factory = self._factory or _picamera2_class()
        try:
            camera = (factory(self.camera_index) if self._tuning is None
                      else factory(self.camera_index, tuning=self._tuning))
        except Exception as exc:  # picamera2 raises IndexError, RuntimeError... for no camera
            raise SourceFault(
                f"cannot open camera {self.camera_index} ({type(exc).__name__}: {exc}); is the "
                "ribbon cable seated and the camera listed by 'rpicam-hello --list-cameras'?"
            ) from exc
        try:
            camera.configure(camera.create_video_configuration(**self._configuration()))
            if self.preview:
                # The camera picture goes to HDMI through DRM; the display sink only adds
                # the annotations with set_overlay.
                camera.start_preview(_drm_preview())
            camera.start()
            self._pin_problems = self._check_pinned(camera)
            self._wb_problems = self._check_white_balance(camera)
        except Exception as exc:
            _close_quietly(camera, self.source_id)
            raise SourceFault(
                f"cannot start camera {self.camera_index} ({type(exc).__name__}: {exc})"
            ) from exc
        self._camera = camera

    @property
    def exposure_pinned(self) -> bool:
        """True when the open camera holds the configured exposure and gain (AE off).

        False when either is automatic (0 in the config), when the sensor did not take a
        value, or while closed: the HEp-2 intensity is then in relative units only.
        """
        return self._camera is not None and not self._pin_problems

    @property
    def exposure_problems(self) -> tuple[str, ...]:
        """Why :attr:`exposure_pinned` is False, in words (empty when pinned)."""
        return tuple(self._pin_problems)

    @property
    def white_balance_problems(self) -> tuple[str, ...]:
        """Why the colour gains asked for are not held (empty when they are, or when the
        white balance was left automatic)."""
        return tuple(self._wb_problems)

    @property
    def white_balance_held(self) -> bool | None:
        """Whether the camera keeps the colour gains asked for (None: AWB left on)."""
        return None if self.colour_gains is None else not self._wb_problems

    @property
    def camera(self) -> Any:
        """The open Picamera2 object (None when closed): the picamera2 display sink's target."""
        return self._camera

    def read(self) -> Frame:
        """The next frame in RGB; SourceFault when the camera gives none."""
        if self._camera is None:
            raise SourceFault(f"{self.source_id} is not open")
        try:
            # A number for wait is a timeout in recent picamera2; older ones just wait.
            array = self._camera.capture_array("main", wait=self.read_timeout_s)
        except Exception as exc:  # timeouts, a dislodged cable, libcamera errors
            raise SourceFault(
                f"{self.source_id}: capture failed ({type(exc).__name__}: {exc})"
            ) from exc
        rgb = _rgb888_to_rgb(array, self.source_id)
        self._seq += 1
        return Frame(image=rgb, seq=self._seq, timestamp=time.monotonic(),
                     source=self.source_id, pixel_format="RGB888",
                     exposure_pinned=self.exposure_pinned,
                     white_balance_held=self.white_balance_held)

    def close(self) -> None:
        """Stop and close the camera (idempotent; safe after a failed open)."""
        camera, self._camera = self._camera, None
        self._pin_problems = ["not open"]
        if camera is not None:
            _close_quietly(camera, self.source_id)

    def _configuration(self) -> dict[str, Any]:
        """Arguments of create_video_configuration; only what is set is asked for."""
        main: dict[str, Any] = {"format": "RGB888"}
        if self.width and self.height:
            main["size"] = (self.width, self.height)
        controls: dict[str, Any] = {"FrameRate": self.fps} if self.fps else {}
        controls.update(exposure_controls(self.exposure_us, self.gain))
        if self.colour_gains is not None:
            controls.update(white_balance_controls(self.colour_gains))
        # queue=False: capture_array waits for a new frame instead of returning a queued one.
        return {"main": main, "queue": False, "controls": controls}

    def _check_white_balance(self, camera: Any) -> list[str]:
        """With colour gains fixed, compare them with the frames' metadata; problems are
        logged as WARNINGs (the colour the HEp-2 wrong-stain check reads would move)."""
        if self.colour_gains is None:
            return []
        problems: list[str] = []
        for _ in range(_PIN_CHECK_FRAMES):
            problems = white_balance_problems(camera.capture_metadata(), self.colour_gains)
            if not problems:
                _log.info("%s: white balance fixed at colour gains %g, %g (AWB off)",
                          self.source_id, *self.colour_gains)
                return []
        for problem in problems:
            _log.warning("%s: %s", self.source_id, problem)
        return problems

    def _check_pinned(self, camera: Any) -> list[str]:
        """Compare the frames' metadata with the pinned values; problems in words."""
        if self.exposure_us <= 0 and self.gain <= 0:
            return ["exposure and gain are automatic (source.exposure_us, source.gain = 0)"]
        problems: list[str] = []
        for _ in range(_PIN_CHECK_FRAMES):
            problems = pin_problems(camera.capture_metadata(), self.exposure_us, self.gain)
            if not problems:
                _log.info("%s: exposure pinned at %g us, gain %g (AE off)", self.source_id,
                          self.exposure_us, self.gain)
                return []
        for problem in problems:
            _log.warning("%s: %s: the HEp-2 intensity is in relative units", self.source_id,
                         problem)
        return problems


def white_balance_controls(colour_gains: tuple[float, float]) -> dict[str, Any]:
    """libcamera controls that fix the white balance: AWB off, red and blue gains."""
    return {"AwbEnable": False, "ColourGains": (float(colour_gains[0]),
                                                float(colour_gains[1]))}


def white_balance_problems(metadata: Any, colour_gains: tuple[float, float]) -> list[str]:
    """What a frame's metadata shows against the fixed colour gains, in words."""
    if not isinstance(metadata, dict):
        return [f"the camera gave no frame metadata ({type(metadata).__name__})"]
    got = metadata.get("ColourGains")
    if not (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(g, (int, float)) for g in got)):
        return ["the frame metadata has no ColourGains"]
    if any(abs(float(g) - w) > PIN_TOLERANCE * w for g, w in zip(got, colour_gains,
                                                                   strict=True)):
        return [f"the camera holds colour gains ({float(got[0]):g}, {float(got[1]):g}), not "
                f"the ({colour_gains[0]:g}, {colour_gains[1]:g}) asked for (automatic white "
                "balance still on?)"]
    return []


def exposure_controls(exposure_us: float, gain: float) -> dict[str, Any]:
    """libcamera controls that pin what is set (> 0); automatic exposure off if either is."""
    controls: dict[str, Any] = {}
    if exposure_us > 0:
        controls["ExposureTime"] = max(1, round(exposure_us))  # an integer in libcamera
    if gain > 0:
        controls["AnalogueGain"] = float(gain)
    if controls:
        # A fixed exposure with automatic gain would still follow the brightness.
        controls["AeEnable"] = False
    return controls


def pin_problems(metadata: Any, exposure_us: float, gain: float) -> list[str]:
    """What a frame's metadata shows against the pinned exposure and gain, in words."""
    if not isinstance(metadata, dict):
        return [f"the camera gave no frame metadata ({type(metadata).__name__})"]
    problems: list[str] = []
    checks = (("ExposureTime", exposure_us, "exposure", "us", "source.exposure_us"),
              ("AnalogueGain", gain, "gain", "", "source.gain"))
    for key, wanted, what, unit, setting in checks:
        if wanted <= 0:
            problems.append(f"{what} is automatic ({setting} = 0)")
            continue
        got = metadata.get(key)
        if not isinstance(got, (int, float)):
            problems.append(f"the frame metadata has no {key}")
        elif abs(float(got) - wanted) > PIN_TOLERANCE * wanted:
            problems.append(f"the camera holds {what} {float(got):g}{unit and ' ' + unit}, not "
                            f"the {wanted:g}{unit and ' ' + unit} asked for (outside the "
                            "sensor's range or longer than the frame duration)")
    return problems


def load_tuning_file(path: str) -> dict[str, Any]:
    """A libcamera tuning file's JSON, or SourceError saying why it cannot be used."""
    where = f"source.tuning_file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
    try:
        tuning = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(tuning, dict) or not isinstance(tuning.get("algorithms"), list):
        raise SourceError(f"{where}: not a libcamera tuning file (no 'algorithms' list); "
                          "start from the sensor's own, e.g. /usr/share/libcamera/ipa/rpi/"
                          "pisp/imx477.json")
    return tuning


def _picamera2_class() -> Callable[..., Any]:
    """Import picamera2 now, or explain how to install it."""
    try:
        import picamera2  # optional: Raspberry Pi OS only
    except ImportError as exc:
        raise SourceError(INSTALL_HINT) from exc
    camera_class: Callable[..., Any] = picamera2.Picamera2
    return camera_class


def _drm_preview() -> Any:
    """picamera2's DRM preview kind (full screen on HDMI, no X server)."""
    try:
        from picamera2 import Preview
    except ImportError as exc:
        raise SourceError(INSTALL_HINT) from exc
    return Preview.DRM


def _rgb888_to_rgb(array: Any, where: str) -> np.ndarray:
    """picamera2 "RGB888" (B, G, R in memory) to a contiguous RGB array."""
    if (not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3
            or array.shape[2] != 3 or array.size == 0):
        shape = getattr(array, "shape", None)
        raise SourceFault(f"{where}: unusable frame (shape {shape}); expected RGB888 (H, W, 3)")
    return np.ascontiguousarray(array[:, :, ::-1])


def _close_quietly(camera: Any, where: str) -> None:
    """Stop then close; a camera that fails to stop is still closed, and the error logged."""
    for step in ("stop", "close"):
        try:
            getattr(camera, step)()
        except Exception as exc:  # closing must release what it can, and say what failed
            _log.warning("%s: %s failed: %s: %s", where, step, type(exc).__name__, exc)
