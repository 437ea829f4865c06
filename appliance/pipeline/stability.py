"""Is the microscope view still and sharp? A cheap per-frame judgement (~1-1.5 ms, 1280x960).

Every frame is shrunk once to a grey copy of FOCUS_LONGEST px; from it come

* a thumbnail (THUMBNAIL_LONGEST px, lightly blurred, zero mean / unit contrast), whose
  mean absolute change between frames is the *motion*, and since the start of the still
  period the *drift* (a slow pan that never moves much between two frames);
* a *focus* figure: gradient energy at 1 px over that at 2 px on the strongest edges,
  sensor noise removed, normalised so a smooth (blurred) view reads ~1.0.

It also keeps the focus of the last few seconds of frames with their fingerprints, so
that a still view can say how much sharper the same spot was while the knob was turned
(``ViewState.sharpest_before``): a user who passed through the best focus and stopped on
a softer one.

:class:`StillnessTracker` turns these into a stage per frame (moving, settling, stable,
blurred) and numbers the still periods, so a field is reported once per still period.
The tracker never reads a clock: frames carry their capture times.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from appliance.config import StabilityConfig
from appliance.pipeline.field_memory import (
    SAME_SPOT_SHIFT_PX,
    Fingerprint,
    fingerprint,
    grey_copy,
    register,
)

# Motion and focus are judged on one grey copy this size (1280x960 halves twice onto it).
FOCUS_LONGEST = 320
THUMBNAIL_LONGEST = 160
_MIN_SIDE = 8  # smaller views (no camera delivers them) are refused, not judged
# Sensor noise and JPEG blocks must not read as motion; stage motion of a few px still does.
_THUMB_BLUR_SIGMA = 1.0
# A view with less grey spread than this (lens cap, lamp off, over-exposed) is not stretched
# to unit contrast, or its sensor noise would look like motion on every frame. Tissue and
# even glass under the eyepiece's vignetting spread 20-30 grey levels on the thumbnail.
_MIN_SPREAD = 12.0
# Focus is judged on the strongest tenth of the edges: tissue structure, not glass noise.
_FOCUS_EDGE_SHARE = 0.1
# Strongest edges with less energy than this many times the noise's: nothing to judge.
_FOCUS_MIN_SNR = 6.0
_NO_DETAIL_FOCUS = 1.0  # what a view without detail reads: nothing in it is sharp
# Immerkaer's noise kernel; its response to white noise of sigma s has sigma 6 s.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_NOISE_KERNEL_GAIN = 6.0
_MAD_TO_SIGMA = 1.4826
_NOISE_SAMPLE_STRIDE = 3  # a median over every 3rd row and column is as good, 9x cheaper
# Turning the focus knob changes the focus figure far more than the thumbnail: a change by
# this factor within a still period starts a new one, so a refocused view is judged (and
# can be reported) afresh. Sensor noise and flicker move it by ~0.2% (measured).
FOCUS_RESTART_FACTOR = 1.1
# A period judged blurred (or sharp) starts again when the focus crosses min_focus by this
# factor, so a view fixed just past the threshold is not left marked blurred.
FOCUS_HYSTERESIS = 1.02
# The focus of the frames before a still period is kept this long (a turn of the knob
# through the best focus and back takes a second or two), one frame per step: enough to
# catch the peak, cheap to fingerprint (~10 a second).
FOCUS_HISTORY_S = 5.0
FOCUS_HISTORY_STEP_S = 0.1


class Stage(enum.Enum):
    """What the view is doing on one frame."""

    MOVING = "moving"  # the stage moves (or drifts): no still period
    SETTLING = "settling"  # still for less than stable_s
    STABLE = "stable"  # still for stable_s and sharp: report it
    BLURRED = "blurred"  # still for stable_s but not sharp (being focused)


@dataclass(frozen=True)
class ViewSample:
    """Per-frame measurements behind the stage."""

    motion: float  # mean |change| of the normalised thumbnail since the previous frame
    drift: float  # same, since the first frame of the still period (0 when moving)
    focus: float  # ~1 blurred, clearly above 1 sharp (see sharpness)


@dataclass(frozen=True)
class SharperBefore:
    """The sharpest the same spot was in the seconds before a still period began."""

    focus: float  # its focus figure
    seconds_before: float  # how long before the still period began


@dataclass(frozen=True)
class ViewState:
    """The tracker's verdict on one frame."""

    stage: Stage
    still_id: int | None  # one number per still period, the same on each of its frames
    still_since: float | None  # capture time of the period's first frame
    sample: ViewSample
    fingerprint: Fingerprint | None  # on STABLE and BLURRED frames (once per period)
    # On STABLE and BLURRED frames: the sharpest frame of the same spot (registered
    # within SAME_SPOT_SHIFT_PX) in the FOCUS_HISTORY_S before the period began, when it
    # was sharper than the period; else None.
    sharpest_before: SharperBefore | None = None


# ------------------------------------------------------------------------ measurements


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Small grey float32 copy of an RGB (or grey) uint8 frame for motion checks.

    THUMBNAIL_LONGEST px on the long side, blurred by 1 px so sensor noise stays below
    the motion threshold, zero mean and unit spread so an exposure change is no motion.
    """
    return _thumbnail_of(grey_copy(image, FOCUS_LONGEST))


def _thumbnail_of(grey: np.ndarray) -> np.ndarray:
    """The motion thumbnail of an already shrunk grey copy."""
    small = np.asarray(cv2.GaussianBlur(grey_copy(grey, THUMBNAIL_LONGEST).astype(np.float32),
                                        (0, 0), _THUMB_BLUR_SIGMA, borderType=cv2.BORDER_REFLECT))
    centred = small - float(small.mean())
    return np.asarray(centred / max(float(centred.std()), _MIN_SPREAD), dtype=np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (0.8-1.1 for unrelated views)."""
    if a.shape != b.shape:
        # A resolution change mid-stream: the views cannot be compared, so they differ.
        return math.inf
    return float(cv2.norm(a, b, cv2.NORM_L1)) / a.size


def sharpness(image: np.ndarray) -> float:
    """Cheap focus figure of an RGB (or grey) uint8 view: ~1.0 blurred, 1.4-1.7 sharp.

    Judged on a grey copy of FOCUS_LONGEST px, so it reads the same at 10x and 40x for a
    given sharpness at that size; a view without detail above the noise reads 1.0.
    """
    return _sharpness_of(grey_copy(image, FOCUS_LONGEST))


def _sharpness_of(grey: np.ndarray) -> float:
    """Gradient energy at 1 px over that at 2 px (x4) on the strongest edges, noise removed.

    A smooth (blurred) profile changes twice as much over 2 px as over 1 px, which makes
    the ratio 1; detail finer than 2 px raises it (towards 4 for pixel-scale texture).
    """
    if min(grey.shape) < _MIN_SIDE:
        raise ValueError(f"a view of {grey.shape[1]}x{grey.shape[0]} px is too small to judge "
                         f"(< {_MIN_SIDE} px)")
    g = grey.astype(np.float32)
    e1, e2 = _lag_energies(g)
    # The edge cut from a strided sample: as good as from all values, several times cheaper.
    sample = np.ascontiguousarray(e2[::3, ::3]).reshape(-1)
    k = max(1, int(sample.size * _FOCUS_EDGE_SHARE))
    cut = float(np.partition(sample, sample.size - k)[sample.size - k])
    edges = np.greater_equal(e2, cut).reshape(-1).astype(np.float32)
    n = float(edges.sum())
    # White noise of variance v adds 2v to each squared difference, 4v to the sum of both.
    noise = 4.0 * _noise_variance(g)
    fine = float(e1.reshape(-1) @ edges) / n - noise
    coarse = float(e2.reshape(-1) @ edges) / n - noise
    if coarse <= _FOCUS_MIN_SNR * max(noise, 1e-6):
        return _NO_DETAIL_FOCUS
    return 4.0 * max(fine, 0.0) / coarse


def _lag_energies(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared differences over 1 px and over 2 px (x plus y), on one (H-2, W-2) grid."""
    base = g[:-2, :-2]
    dx1, dy1 = g[:-2, 1:-1] - base, g[1:-1, :-2] - base
    dx2, dy2 = g[:-2, 2:] - base, g[2:, :-2] - base
    return dx1 * dx1 + dy1 * dy1, dx2 * dx2 + dy2 * dy2


def _noise_variance(g: np.ndarray) -> float:
    """White-noise variance of ``g`` (Immerkaer's kernel, median-based so edges weigh little)."""
    response = cv2.filter2D(g, -1, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)
    step = _NOISE_SAMPLE_STRIDE
    sample = np.abs(response[::step, ::step])
    sigma = float(np.median(sample)) * _MAD_TO_SIGMA / _NOISE_KERNEL_GAIN
    return sigma * sigma


# ---------------------------------------------------------------------------- tracker


@dataclass
class _Period:
    """The still period in progress."""

    still_id: int
    since: float
    anchor: np.ndarray  # thumbnail of its first frame
    ref_focus: float  # focus when it started
    verdict: Stage | None = None  # STABLE or BLURRED once still for stable_s
    fingerprint: Fingerprint | None = None
    sharpest_before: SharperBefore | None = None


@dataclass(frozen=True)
class _FocusSample:
    """One frame's focus, kept for a while with its fingerprint (FOCUS_HISTORY_S)."""

    timestamp: float
    fingerprint: Fingerprint
    focus: float


class StillnessTracker:
    """Per-frame stage of the view and numbered still periods.

    MOVING while the thumbnail changes by more than ``motion_threshold`` between frames
    or by more than ``drift_threshold`` since the period began (a slow pan). A still
    period is SETTLING for ``stable_s``, then STABLE when the focus is at least
    ``min_focus``, else BLURRED; that verdict holds for the whole period. Turning the
    focus knob (focus changing by FOCUS_RESTART_FACTOR, or crossing ``min_focus`` by
    FOCUS_HYSTERESIS against the verdict) starts a new period, so a refocused view gets
    its own still id. Not thread-safe: one capture stage feeds it.
    """

    def __init__(self, cfg: StabilityConfig) -> None:
        self._cfg = cfg
        self._prev: np.ndarray | None = None
        self._last_t: float | None = None
        self._period: _Period | None = None
        self._next_id = 1
        self._history: deque[_FocusSample] = deque()

    def update(self, image: np.ndarray, timestamp: float) -> ViewState:
        """Judge one frame (RGB or grey uint8) captured at ``timestamp`` (monotonic seconds)."""
        if self._last_t is not None and timestamp < self._last_t:
            raise ValueError(f"frame timestamps go back: {timestamp} after {self._last_t}")
        grey = grey_copy(image, FOCUS_LONGEST)
        thumb = _thumbnail_of(grey)
        focus = _sharpness_of(grey)
        self._remember_focus(grey, focus, timestamp)
        motion = 0.0 if self._prev is None else change(self._prev, thumb)
        self._prev, self._last_t = thumb, timestamp
        period = self._period
        drift = 0.0 if period is None else change(period.anchor, thumb)
        if motion > self._cfg.motion_threshold or drift > self._cfg.drift_threshold:
            self._period = None
            return ViewState(Stage.MOVING, None, None, ViewSample(motion, drift, focus), None)
        if period is None or self._refocused(period, focus):
            period = self._start(thumb, focus, timestamp)
            drift = 0.0
        stage = self._stage(period, focus, timestamp, image)
        return ViewState(stage, period.still_id, period.since,
                         ViewSample(motion, drift, focus), period.fingerprint,
                         period.sharpest_before)

    def _remember_focus(self, grey: np.ndarray, focus: float, timestamp: float) -> None:
        """Keep this frame's focus and fingerprint if a step has passed since the last."""
        history = self._history
        if history and timestamp - history[-1].timestamp < FOCUS_HISTORY_STEP_S:
            return
        history.append(_FocusSample(timestamp, fingerprint(grey), focus))
        while history and timestamp - history[0].timestamp > FOCUS_HISTORY_S:
            history.popleft()

    def _sharpest_before(self, period: _Period, fp: Fingerprint, focus: float
                         ) -> SharperBefore | None:
        """The sharpest kept frame of the same spot before ``period`` began, if sharper."""
        # Sharpest first, so the first frame of the same spot is the answer: usually one or
        # two registrations (0.3 ms each) where the whole history would be 50.
        sharper = sorted((s for s in self._history
                          if s.timestamp < period.since and s.focus > focus),
                         key=lambda s: s.focus, reverse=True)
        for sample in sharper:
            found = register(fp, sample.fingerprint)
            if found.similarity >= self._cfg.same_field_similarity \
                    and found.shift <= SAME_SPOT_SHIFT_PX:
                return SharperBefore(sample.focus, period.since - sample.timestamp)
        return None

    def _start(self, thumb: np.ndarray, focus: float, timestamp: float) -> _Period:
        """Begin a new still period at this frame."""
        self._period = _Period(self._next_id, timestamp, thumb, focus)
        self._next_id += 1
        return self._period

    def _refocused(self, period: _Period, focus: float) -> bool:
        """Has the focus changed enough since the period began to judge the view afresh?"""
        ratio = focus / max(period.ref_focus, 1e-6)
        if ratio > FOCUS_RESTART_FACTOR or ratio < 1.0 / FOCUS_RESTART_FACTOR:
            return True
        if period.verdict is Stage.BLURRED:
            return focus >= self._cfg.min_focus * FOCUS_HYSTERESIS
        if period.verdict is Stage.STABLE:
            return focus < self._cfg.min_focus / FOCUS_HYSTERESIS
        return False

    def _stage(self, period: _Period, focus: float, timestamp: float,
               image: np.ndarray) -> Stage:
        """SETTLING until still for stable_s, then the period's fixed verdict."""
        if period.verdict is None:
            if timestamp - period.since < self._cfg.stable_s:
                return Stage.SETTLING
            period.verdict = Stage.STABLE if focus >= self._cfg.min_focus else Stage.BLURRED
            period.fingerprint = fingerprint(image)
            period.sharpest_before = self._sharpest_before(period, period.fingerprint, focus)
        return period.verdict
