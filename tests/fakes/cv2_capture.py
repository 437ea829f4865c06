"""A stand-in for ``cv2.VideoCapture`` with a scripted camera behind it.

It follows OpenCV's API as documented for ``cv::VideoCapture``: the constructor opens
when given a source; ``open(source, apiPreference)`` releases first and returns
whether it opened; ``isOpened()``; ``read()`` returns ``(True, BGR ndarray)`` or
``(False, None)``; ``set(prop, value)`` returns whether the backend accepted the
property; ``get(prop)`` returns a float (0 for properties the backend does not know);
``release()`` may be called any number of times. The ``CAP_PROP_FOURCC`` value packs
four characters, the first in the lowest byte.

The camera (:class:`FakeCamera`) is shared by every capture made from it, as a
device is shared by every ``open``: it scripts what opens return and what each read
does (an array is a frame, ``None`` a failed read, an exception is raised). When the
script is empty it keeps delivering numbered frames, like a live camera.

Exposure and gain follow OpenCV's V4L2 backend without range normalisation:
``CAP_PROP_AUTO_EXPOSURE`` is the raw ``V4L2_CID_EXPOSURE_AUTO`` menu (1 manual, 3 aperture
priority, a UVC camera's default), ``CAP_PROP_EXPOSURE`` is ``exposure_time_absolute`` in
100 µs steps, ``CAP_PROP_GAIN`` the driver's gain number. As in OpenCV, ``set()`` returns
True even when the driver clamps the value to its range or ignores it (a camera without
manual exposure keeps its automatic mode; the time is inactive while automatic): only
``get()`` tells what the device holds. ``CAP_PROP_AUTO_WB`` is the boolean
``white_balance_automatic`` control (1 on, a UVC camera's default).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

# Properties each backend accepts in set(); anything else returns False like OpenCV.
V4L2_PROPS = frozenset({cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH,
                        cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS, cv2.CAP_PROP_BUFFERSIZE,
                        cv2.CAP_PROP_AUTO_EXPOSURE, cv2.CAP_PROP_EXPOSURE,
                        cv2.CAP_PROP_GAIN, cv2.CAP_PROP_AUTO_WB})
EXPOSURE_PROPS = frozenset({cv2.CAP_PROP_AUTO_EXPOSURE, cv2.CAP_PROP_EXPOSURE,
                            cv2.CAP_PROP_GAIN, cv2.CAP_PROP_AUTO_WB})
GSTREAMER_PROPS = frozenset({cv2.CAP_PROP_READ_TIMEOUT_MSEC})

ReadStep = np.ndarray | BaseException | None


def fourcc(text: str) -> int:
    """OpenCV's packing of a four-character code."""
    return sum(ord(c) << (8 * i) for i, c in enumerate(text))


def live_frame(n: int, size: tuple[int, int]) -> np.ndarray:
    """The n-th frame of a live camera (BGR): a gradient whose corner encodes n."""
    w, h = size
    bgr = np.zeros((h, w, 3), np.uint8)
    bgr[:, :, 0] = 40  # blue
    bgr[:, :, 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    bgr[:, :, 2] = 200  # red
    bgr[0, 0] = (n % 256, (n // 256) % 256, 7)
    return bgr


class FakeCamera:
    """The device behind the captures: formats, size, and a script of opens and reads."""

    def __init__(self, *, size: tuple[int, int] = (64, 48), fourccs: Iterable[str] = ("YUYV",
                 "MJPG"), backend: int = cv2.CAP_V4L2,
                 reads: Iterable[ReadStep] = (),
                 exposure_range: tuple[int, int] = (3, 2047),
                 gain_range: tuple[int, int] | None = (0, 255),
                 manual_exposure: bool = True, manual_white_balance: bool = True) -> None:
        self.size = size
        # The device's controls, as v4l2-ctl would list them (exposure in 100 µs steps).
        self.exposure_range = exposure_range
        self.gain_range = gain_range  # None: the camera has no gain control
        self.manual_exposure = manual_exposure  # False: the auto-exposure menu has no manual
        # False: white_balance_automatic cannot be turned off (or the camera has none)
        self.manual_white_balance = manual_white_balance
        self.controls: dict[int, float] = {cv2.CAP_PROP_AUTO_EXPOSURE: 3.0,
                                           cv2.CAP_PROP_EXPOSURE: 156.0,
                                           cv2.CAP_PROP_GAIN: 0.0,
                                           cv2.CAP_PROP_AUTO_WB: 1.0}
        self.fourccs = tuple(fourccs)
        self.backend = backend
        self.reads: deque[ReadStep] = deque(reads)
        self.open_results: deque[bool] = deque()
        self.captures: list[FakeVideoCapture] = []
        self.opened_with: list[tuple[Any, int]] = []
        self.live_count = 0

    def capture(self, *args: Any) -> FakeVideoCapture:
        """Use as ``capture_factory``: ``cv2.VideoCapture(source, apiPreference)``."""
        cap = FakeVideoCapture(self, *args)
        self.captures.append(cap)
        return cap

    def script(self, *steps: ReadStep) -> None:
        """Append read steps: array = frame, None = no frame, exception = raised."""
        self.reads.extend(steps)

    def fail_opens(self, count: int) -> None:
        """The next ``count`` opens fail (device unplugged), then opens succeed again."""
        self.open_results.extend([False] * count)

    def set_control(self, prop: int, value: float) -> None:
        """What the driver does with a control write: clamp, ignore, or take it."""
        if prop == cv2.CAP_PROP_AUTO_EXPOSURE:
            mode = round(value)
            if mode in (1, 3) and (mode == 3 or self.manual_exposure):
                self.controls[prop] = float(mode)
            return
        if prop == cv2.CAP_PROP_EXPOSURE:
            if self.controls[cv2.CAP_PROP_AUTO_EXPOSURE] != 1:
                return  # inactive while automatic: the write is refused, OpenCV ignores it
            lo, hi = self.exposure_range
            self.controls[prop] = float(min(max(round(value), lo), hi))
            return
        if prop == cv2.CAP_PROP_AUTO_WB:
            if self.manual_white_balance and round(value) in (0, 1):
                self.controls[prop] = float(round(value))
            return
        if prop == cv2.CAP_PROP_GAIN and self.gain_range is not None:
            lo, hi = self.gain_range
            self.controls[prop] = float(min(max(round(value), lo), hi))

    def next_read(self) -> tuple[bool, np.ndarray | None]:
        if not self.reads:
            self.live_count += 1
            return True, live_frame(self.live_count, self.size)
        step = self.reads.popleft()
        if isinstance(step, BaseException):
            raise step
        if step is None:
            return False, None
        return True, step


class FakeVideoCapture:
    """What ``cv2.VideoCapture(...)`` returns, for a :class:`FakeCamera`."""

    def __init__(self, camera: FakeCamera, *args: Any) -> None:
        self._camera = camera
        self._opened = False
        self.released = 0
        self.props: dict[int, float] = {}
        self.set_calls: list[tuple[int, float]] = []
        self._fourcc = fourcc(camera.fourccs[0])
        if args:
            self.open(*args)

    def open(self, source: Any, apiPreference: int = cv2.CAP_ANY,  # OpenCV's names
             params: list[int] | None = None) -> bool:
        self.release()
        self._camera.opened_with.append((source, apiPreference))
        if apiPreference not in (cv2.CAP_ANY, self._camera.backend):
            return False  # a backend this device is not reached through
        if params:
            return False  # OpenCV bails out on parameters the backend does not consume
        result = self._camera.open_results.popleft() if self._camera.open_results else True
        self._opened = result
        return result

    def isOpened(self) -> bool:  # OpenCV's name
        return self._opened

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        if not self._opened:
            return False, None
        return self._camera.next_read()

    def set(self, propId: int, value: float) -> bool:  # OpenCV's parameter names
        self.set_calls.append((propId, value))
        accepted = V4L2_PROPS if self._camera.backend == cv2.CAP_V4L2 else GSTREAMER_PROPS
        if not self._opened or propId not in accepted:
            return False
        if propId == cv2.CAP_PROP_FOURCC:
            if not any(fourcc(f) == int(value) for f in self._camera.fourccs):
                return False  # the driver does not offer that format
            self._fourcc = int(value)
        if propId in EXPOSURE_PROPS:
            self._camera.set_control(propId, value)
            return True  # OpenCV ignores what the driver answers (clamp, refusal)
        self.props[propId] = float(value)
        return True

    def get(self, propId: int) -> float:  # OpenCV's parameter names
        if not self._opened:
            return 0.0
        if propId == cv2.CAP_PROP_FOURCC:
            return float(self._fourcc)
        if propId == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.props.get(propId, self._camera.size[0]))
        if propId == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.props.get(propId, self._camera.size[1]))
        if propId in EXPOSURE_PROPS:
            if propId == cv2.CAP_PROP_GAIN and self._camera.gain_range is None:
                return 0.0  # no gain control on this device: nothing to read back
            return self._camera.controls[propId]
        return self.props.get(propId, 0.0)

    def release(self) -> None:
        if self._opened:
            self.released += 1
        self._opened = False
