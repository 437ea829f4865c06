"""Field fingerprints and the memory that reports each microscope field once.

A fingerprint is a tiny grey picture of a view with the camera's uneven light removed
(in log units, minus a blur of a few pixels), so the same tissue seen under another
exposure, or elsewhere in the lamp's vignetting, still lines up. :func:`similarity`
registers one fingerprint onto the other by phase correlation (the stage rarely comes
back to exactly the same place) and correlates the overlap. :class:`FieldMemory` uses it
to tell a new field from a return to one already reported.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from appliance.config import StabilityConfig

# Fixed fingerprint size, whatever the camera's aspect: fingerprints from one camera always
# compare; 96x72 keeps tissue nests and nucleus clusters at 10x-40x and costs ~0.1 ms to match.
FP_WIDTH, FP_HEIGHT = 96, 72
# Shading (vignetting, uneven lamp, exposure) is what varies more slowly than this; a
# narrow high-pass keeps the artefact of the image border in a thin band (_BORDER_PX),
# which the correlation leaves out.
_SHADING_SIGMA = 4.0
_BORDER_PX = 3
# A light blur against sensor noise and JPEG blocks.
_SMOOTH_SIGMA = 1.0
# A return to a field seldom lands on the same spot: shifts up to 30% of each side are
# searched, and at least half the area must overlap for the correlation to mean anything.
MAX_SHIFT_FRACTION = 0.3
MIN_OVERLAP_FRACTION = 0.5
_MIN_CLAIMS = 16  # reported still periods remembered even with a tiny field memory
_FLAT_STD = 1e-3  # a log-grey spread below this is a blank view (lens cap, glass, no light)
NOW_SCORABLE = "now scorable"  # the reason a return to a refused field is reported
SHARPER = "sharper"  # the reason a return to a field reported less sharp is reported
# A return registered within this shift (fingerprint pixels, ~3% of the field's width) is
# the same spot: the stage was not moved, only the focus (whose knob may shift the image a
# few µm), so the two views' focus figures compare. A view shifted further shows other
# cells, whose figure can differ by content on real tissue (on generated fields it moved
# by 1.5% at most for shifts up to 20%: tissue there is alike everywhere).
SAME_SPOT_SHIFT_PX = 3.0


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """A view's normalised grey miniature: (FP_HEIGHT, FP_WIDTH) float32.

    Zero mean and unit standard deviation, or all zeros for a blank view (which then
    matches nothing).
    """

    pixels: np.ndarray

    def __post_init__(self) -> None:
        p = self.pixels
        if p.dtype != np.float32 or p.shape != (FP_HEIGHT, FP_WIDTH):
            raise ValueError(f"Fingerprint.pixels must be float32 ({FP_HEIGHT}, {FP_WIDTH}), "
                             f"got {p.dtype} {p.shape}")
        # A read-only view: a fingerprint is remembered for hours and must never change.
        frozen = p.view()
        frozen.flags.writeable = False
        object.__setattr__(self, "pixels", frozen)

    @property
    def blank(self) -> bool:
        """True for a view without any structure (it matches nothing)."""
        return not bool(np.any(self.pixels))


@dataclass(frozen=True)
class ReportDecision:
    """Whether a still view is reported, why, and which remembered field it matched."""

    report: bool
    reason: str
    matched_key: str | None = None


def grey_copy(image: np.ndarray, longest: int) -> np.ndarray:
    """Grey uint8 copy of an RGB (or grey) uint8 image shrunk to ``longest`` px on its long side.

    Halves with INTER_AREA while the image is at least twice the target (OpenCV's fast
    2x2 path: ~0.25 ms from 1280x960 to 320x240), then one small area resize; never
    enlarges.
    """
    _check_image(image)
    if image.ndim == 3 and max(image.shape[:2]) >= 2 * longest:
        # The first halving in colour: cheaper than converting every full-size pixel.
        image = _halve(image)
    grey = _to_grey(image)
    while max(grey.shape) >= 2 * longest:
        grey = _halve(grey)
    h, w = grey.shape
    if max(h, w) > longest:
        scale = longest / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey


def _check_image(image: np.ndarray) -> None:
    """Refuse anything but an (H, W) grey or (H, W, 3) RGB uint8 image, naming the reason."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) grey or (H, W, 3) RGB image, got shape "
                         f"{image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image {image.shape}")


def _halve(image: np.ndarray) -> np.ndarray:
    """Half size by 2x2 averaging (odd last rows/columns are dropped)."""
    h, w = image.shape[:2]
    return np.asarray(cv2.resize(image, (max(1, w // 2), max(1, h // 2)),
                                 interpolation=cv2.INTER_AREA))


def _to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey of a checked grey or RGB image."""
    if image.ndim == 2:
        return image
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def fingerprint(image: np.ndarray) -> Fingerprint:
    """The fingerprint of a view: (H, W, 3) RGB or (H, W) grey uint8, any size >= 8 px."""
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image {image.shape[:2]} is too small to fingerprint (< 8 px)")
    small = cv2.resize(grey_copy(image, 2 * FP_WIDTH), (FP_WIDTH, FP_HEIGHT),
                       interpolation=cv2.INTER_AREA)
    # In log units the lamp's vignetting and the exposure are additive: the blur carries
    # them away and the normalisation takes what is left of the exposure.
    log = np.log1p(small.astype(np.float32))
    detail = log - cv2.GaussianBlur(log, (0, 0), _SHADING_SIGMA, borderType=cv2.BORDER_REFLECT)
    detail = cv2.GaussianBlur(detail, (0, 0), _SMOOTH_SIGMA, borderType=cv2.BORDER_REFLECT)
    return Fingerprint(_normalised(detail))


def _normalised(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation float32 (all zeros when ``a`` is flat)."""
    a = a.astype(np.float32, copy=False)
    centred = a - float(a.mean())
    std = float(centred.std())
    if std < _FLAT_STD:
        return np.zeros_like(centred)
    return np.asarray(centred / std, dtype=np.float32)


@lru_cache(maxsize=4)
def _hanning(width: int, height: int) -> np.ndarray:
    """Phase correlation window: tapers the borders that would otherwise correlate."""
    return np.asarray(cv2.createHanningWindow((width, height), cv2.CV_32F))


@dataclass(frozen=True)
class Registration:
    """How one view lines up on another: the correlation after registering, and the
    shift found (fingerprint pixels; 0, 0 when the views could not be compared)."""

    similarity: float
    shift_x: float = 0.0
    shift_y: float = 0.0

    @property
    def shift(self) -> float:
        """The shift's length, fingerprint pixels."""
        return math.hypot(self.shift_x, self.shift_y)


def similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Correlation in [-1, 1] of two views after registering ``b`` onto ``a``.

    0.0 when either view is blank, when the registration finds a shift beyond
    MAX_SHIFT_FRACTION of a side, or when less than MIN_OVERLAP_FRACTION of the area
    overlaps: such views cannot be the same field.
    """
    return register(a, b).similarity


def register(a: Fingerprint, b: Fingerprint) -> Registration:
    """:func:`similarity` with the shift it registered ``b`` by."""
    if a.blank or b.blank:
        return Registration(0.0)
    h, w = a.pixels.shape
    win = _hanning(w, h)
    # Windowed copies: OpenCV's phaseCorrelate given a window writes it into its inputs.
    (sx, sy), _ = cv2.phaseCorrelate(a.pixels * win, b.pixels * win)
    if abs(sx) > MAX_SHIFT_FRACTION * w or abs(sy) > MAX_SHIFT_FRACTION * h:
        return Registration(0.0)
    if (w - abs(sx)) * (h - abs(sy)) < MIN_OVERLAP_FRACTION * w * h:
        return Registration(0.0)
    # OpenCV's convention: b[y + sy, x + sx] = a[y, x]. Sampling b there (cubic: sub-pixel,
    # as a whole-pixel error costs much correlation on fine tissue at 10x) aligns it to a.
    to_b = np.array([[1.0, 0.0, sx], [0.0, 1.0, sy]], np.float32)
    aligned = cv2.warpAffine(b.pixels, to_b, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    # Only where both views saw the tissue, away from either fingerprint's border band.
    x0, x1 = math.ceil(max(0.0, -sx) + _BORDER_PX), math.floor(min(w, w - sx) - _BORDER_PX)
    y0, y1 = math.ceil(max(0.0, -sy) + _BORDER_PX), math.floor(min(h, h - sy) - _BORDER_PX)
    return Registration(_correlation(a.pixels[y0:y1, x0:x1], aligned[y0:y1, x0:x1]),
                        float(sx), float(sy))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-shape arrays (0.0 when either is flat)."""
    ca = a - float(a.mean())
    cb = b - float(b.mean())
    denom = float(np.sqrt(float((ca * ca).sum()) * float((cb * cb).sum())))
    if denom <= 1e-12:
        return 0.0
    return max(-1.0, min(1.0, float((ca * cb).sum()) / denom))


@dataclass(frozen=True)
class _Entry:
    still_id: int
    fingerprint: Fingerprint
    scored: bool
    focus: float | None  # the view's focus figure when it was reported (None: not known)


class FieldMemory:
    """Decides which still views are reported: each still period once, each field once.

    A view that matches a remembered field (similarity >= ``same_field_similarity``) is a
    return to it and is not reported again, unless the remembered report was not scored
    (out of focus, say) and this one is: the user fixed the view, so it is reported and
    replaces the old entry; or this view shows the same spot (registered within
    SAME_SPOT_SHIFT_PX: the stage not moved, only the focus) sharper than the remembered
    report by ``sharper_factor`` (the user focused better after the report), reported the
    same way. A return to another spot of the field is never "sharper": a shifted view's
    focus figure differs with its content, not only with the focus. At most ``memory``
    fields are kept; a return refreshes a field, and the field longest without one is
    forgotten first.

    Not thread-safe: one pipeline stage owns it.
    """

    def __init__(self, cfg: StabilityConfig) -> None:
        self._threshold = cfg.same_field_similarity
        self._sharper = cfg.sharper_factor
        self._capacity = cfg.memory
        self._fields: OrderedDict[str, _Entry] = OrderedDict()
        # Still periods claimed by a report (-> the key stored for it), newest last.
        self._claimed: OrderedDict[int, str | None] = OrderedDict()
        self._replaces: dict[int, str] = {}  # still_id -> key its "now scorable" report replaces
        # The field each recent still period matched, so that asking again on its later
        # frames does not search the whole memory again.
        self._matched: OrderedDict[int, tuple[str, float]] = OrderedDict()  # (key, shift)

    def __len__(self) -> int:
        return len(self._fields)

    @property
    def capacity(self) -> int:
        """Most fields remembered (``memory`` in the configuration)."""
        return self._capacity

    def keys(self) -> list[str]:
        """Remembered field keys, the next to be forgotten first."""
        return list(self._fields)

    def decide(self, still_id: int, fp: Fingerprint, scored: bool,
               focus: float | None = None) -> ReportDecision:
        """Whether the view of still period ``still_id`` is reported.

        ``scored`` says whether this view's result is (or is expected to be) scorable, and
        ``focus`` is its focus figure (``stability.sharpness``; None: not compared). A
        decision to report claims the still period: asked again about it, the answer is
        "same still period", whether or not :meth:`remember` has been called yet. The
        field a still period matched is looked up once and reused for its later frames.
        """
        if still_id in self._claimed:
            return ReportDecision(False, "same still period", self._claimed[still_id])
        key, shift = self._match(still_id, fp)
        if key is None:
            self._claim(still_id, None)
            return ReportDecision(True, "new field", None)
        entry = self._fields[key]
        if scored and not entry.scored:
            self._claim(still_id, key)
            self._replaces[still_id] = key
            return ReportDecision(True, NOW_SCORABLE, key)
        if scored and shift <= SAME_SPOT_SHIFT_PX and self._is_sharper(focus, entry.focus):
            self._claim(still_id, key)
            self._replaces[still_id] = key
            return ReportDecision(True, SHARPER, key)
        self._fields.move_to_end(key)  # a return keeps the field in memory longer
        return ReportDecision(False, f"return to field {key}", key)

    def remember(self, key: str, still_id: int, fp: Fingerprint, scored: bool, *,
                 replaces: str | None = None, focus: float | None = None) -> None:
        """Store a reported field under ``key`` (its result id, say), seen at ``focus``.

        A report decided "now scorable" or "sharper" replaces the entry it matched, and one made
        again for another reason (new settings) names the entry it ``replaces``.
        Re-using a key replaces that entry too. The oldest fields are forgotten beyond
        ``memory``.
        """
        if not key:
            raise ValueError("a remembered field needs a non-empty key")
        for replaced in (self._replaces.pop(still_id, None), replaces):
            if replaced is not None:
                self._fields.pop(replaced, None)
        self._fields.pop(key, None)
        self._fields[key] = _Entry(still_id, fp, scored, focus)
        self._claim(still_id, key)
        while len(self._fields) > self._capacity:
            self._fields.popitem(last=False)

    def _is_sharper(self, focus: float | None, reported: float | None) -> bool:
        """Is a view at ``focus`` clearly sharper than the report made at ``reported``?"""
        if focus is None or reported is None:
            return False
        return focus >= reported * self._sharper

    def _match(self, still_id: int, fp: Fingerprint) -> tuple[str | None, float]:
        """Key of the remembered field this still period shows (None for a new field), and
        the shift it was registered by (fingerprint pixels)."""
        known = self._matched.get(still_id)
        if known is not None and known[0] in self._fields:
            return known
        key, shift = self._best_match(fp)
        if key is not None:
            self._matched[still_id] = (key, shift)
            self._matched.move_to_end(still_id)
            while len(self._matched) > _MIN_CLAIMS:
                self._matched.popitem(last=False)
        return key, shift

    def _best_match(self, fp: Fingerprint) -> tuple[str | None, float]:
        """The remembered field most similar to ``fp``, at or above the threshold, and the
        shift it registers by."""
        best: str | None = None
        best_sim, best_shift = self._threshold, 0.0
        for key, entry in self._fields.items():
            found = register(entry.fingerprint, fp)
            if found.similarity >= best_sim:
                best, best_sim, best_shift = key, found.similarity, found.shift
        return best, best_shift

    def _claim(self, still_id: int, key: str | None) -> None:
        """Mark a still period as reported; the oldest claims are dropped beyond the capacity."""
        self._claimed[still_id] = key
        self._claimed.move_to_end(still_id)
        # Still ids only grow and the period in view is always the newest claim, so the
        # old ones can never be asked about again.
        while len(self._claimed) > max(self._capacity, _MIN_CLAIMS):
            old, _ = self._claimed.popitem(last=False)
            self._replaces.pop(old, None)
