"""Quality gates for a HEp-2 indirect immunofluorescence field (numpy and cv2).

:func:`measure_hep2_quality` turns a field into a handful of numbers (:class:`Hep2Quality`);
:func:`quality_issues` compares them with the limits. Fatal issues make the field not
scorable; the others are warnings shown beside the result.

Why each measure is built the way it is:

* Wrong stain: a fluorescence field is a dark background with green (FITC) light. A
  brightfield field (HER2 H-DAB, H&E) has a bright background in every channel; where
  dense tissue fills the view and darkens it, its brightest light is still white (the
  lamp through unstained glass or tissue), where a fluorescence field's brightest light
  is coloured. A photo or another fluorochrome has signal that is not mostly green. The
  colour is judged on what rises above each channel's background, over the brightest
  pixels, so the red and blue sensor noise and autofluorescence of a dark field do not
  count. A field with no signal
  above the noise (a negative or empty well) has no colour to judge and is not refused.
  A monochrome camera (the same grey in all three channels, as a grey-scale file or a mono
  sensor is read) has no colour at all: only the bright-background test applies, and a warning
  says that the fluorochrome was not checked.
* Over-exposure: clipped green pixels as a share of the cell pixels, not of the field: the
  intensity reads the brightest 5 % of each cell, so clipping of a few percent of the cells'
  pixels already flattens it, however much dark background surrounds them.
* Focus: the HER2 gate's sharpness ratio (fine- over coarse-scale RMS gradient on the
  strongest edges, noise removed; :func:`appliance.assays.her2.quality.focus_measure`) on
  the green channel at a fixed 0.5 µm per pixel. A ratio of two gradients of the same image
  does not depend on the intensity or the exposure, and a fixed scale makes the same blur
  in micrometres read the same at 10x and 40x.
* Under-exposure: only when the signal cannot be told from the sensor noise and the
  background is black; a negative specimen's faint cells are not an exposure problem.
  A field without cells is not a quality issue either (it may be a negative specimen).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from appliance.assays.hep2.intensity import background_map
from appliance.assays.hep2.segmentation import foreground_mask
from appliance.assays.her2.quality import focus_measure, noise_sigma
from appliance.assays.her2.types import QualityIssue
from appliance.config import Hep2CellsConfig

# Brightfield: every channel's median grey above this (glass seen in transmitted light).
BRIGHTFIELD_MEDIAN = 80.0
# FITC: in the light above background, over the brightest pixels, green at least this many
# times the brighter of red and blue. Measured on the 60 generated fields with signal of
# tools.stress_hep2's specimens: 3.0 and more as drawn (5th percentile), 1.8 through a
# display tone curve (gamma 2.2) or MJPG at quality 75; through a long-pass emission filter
# whose red pixels see 0.3 of the green 1.5 at least, 0.5 of it 1.15-1.3 in the least green.
# What must be refused reads far lower: colour photographs 0.71-0.85, the same fields in
# red (TRITC) 0.33 or blue (DAPI) 0.26 at most, and a yellow fluorochrome (red at 0.9 of
# green) 1.03 at most. 1.4 used to be the limit and refused 22 of 63 long-pass fields; the
# test before that, green's share of the light >= 0.5, refused FITC through a tone curve.
MIN_GREEN_LEAD = 1.15
# Brightfield seen through dense tissue: the brightest 2 % of the pixels are white (every
# channel at least WHITE_MIN_GREY, the dimmest at least WHITE_BALANCE of the brightest).
# Measured (tools/probe_hep2_white_light.py): 252 views of 24 generated HER2 fields (whole
# and cropped down to 96x64) read 101 and more, 0.754 and more (21 escape the median test
# above); 21 generated FITC fields through 7 camera looks read at most 102 (a gamma 2.2
# tone curve, then 0.454) and at most 0.661 (stray light, then dimmer than 50). A
# monochrome field is not asked.
WHITE_MIN_GREY = 90.0
WHITE_BALANCE = 0.65
# Said when the light that fails the FITC test is red-led. A conjugate's red counterstain
# makes every cell red; a long-pass emission filter passes it (a band-pass one does not).
# Measured (tools/probe_hep2_counterstain.py): at 15 grey of red over the cells every
# generated negative field and half of the weak positives (30 units) are refused so.
RED_LIGHT_HINT = (". Red light on every cell is a red counterstain (Evans blue) seen through "
                  "a long-pass emission filter: use a FITC band-pass emission filter, or, "
                  "with a colour camera, set hep2.stain.red_counterstain")
# Colour is judged only on light at least this bright above background (grey levels of the
# brightest channel): a negative well's faint autofluorescence reads below it.
_COLOUR_MIN_GREY = 15.0
_COLOUR_TOP_SHARE = 0.02  # the brightest 2 % of the field's excess light carry its colour
# Monochrome: red and blue within this many grey levels of green (a grey JPEG's rounding)
# at all but this share of the pixels. A colour camera's sensor noise alone breaks it.
_MONOCHROME_GREY = 2
_MONOCHROME_OUTLIERS = 0.001
CLIPPED_GREY = 250
# Share of the cell pixels clipped in green. Patterns stay readable in a bright field,
# so clipping is a warning (the intensity reads low) until most of the cells are white.
MAX_SATURATED = 0.25  # fatal above
WARN_SATURATED = 0.01
# The defaults of hep2.cells.min_focus and soft_focus_below (config.py), for callers that
# judge without a config.
MIN_FOCUS = 1.6  # sharpness ratio below which the field is out of focus
SOFT_FOCUS = 1.76  # below it, a warning
FOCUS_UM_PER_PX = 0.5  # the scale the sharpness is judged at
_MIN_FOCUS_PIXELS = 400  # fewer cell pixels: focus is not judged
# Signal vs noise: the brightest 5 % of the residual smoothed at 1 µm against this many
# standard deviations of the smoothed noise; "black" background below this grey level.
_SIGNAL_NOISE_SIGMAS = 4.0
BLACK_BACKGROUND = 12.0
_SIGNAL_SMOOTH_UM = 1.0


@dataclass(frozen=True)
class Hep2Quality:
    """Measured numbers of one fluorescence field (grey levels are 8-bit, 0..255)."""

    median_rgb: tuple[float, float, float]  # per-channel median (the background, mostly)
    green_lead: float  # green / the brighter of red and blue, brightest light; NaN: none
    signal: float  # brightest 5 % of the smoothed green above background, grey
    noise_floor: float  # smoothed sensor noise times the signal gate's sigmas, grey
    background: float  # median green background, grey
    saturated_fraction: float  # clipped green share of the cell pixels (of the field if none)
    focus: float  # sharpness ratio, ~1 blurred .. 2-4 sharp; 0 = not measurable
    cell_fraction: float  # share of the field the foreground covers
    light: float = 0.0  # brightest 2 %: mean excess grey of the brightest channel
    monochrome: bool = False  # the three channels are one grey: the colour says nothing
    top_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # brightest 2 %: mean raw colour
    red_expected: bool = False  # a red counterstain: the colour measures leave red out


def measure_hep2_quality(rgb: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig, *,
                         red_counterstain: bool = False, focus: bool = True) -> Hep2Quality:
    """Measure colour, exposure, signal and focus of an (H, W, 3) uint8 RGB field.

    ``focus``: False leaves the sharpness unmeasured (0, as with no signal), for a caller
    that does not judge it (a single-cell image, cell_quality.py).

    ``red_counterstain``: red light over the cells is expected (``hep2.stain``), so the
    colour measures leave the red channel out: the brightest light is chosen by green and
    blue, and green's lead is over blue alone (its raw colour, for the white-light test,
    keeps all three)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    green = rgb[..., 1].astype(np.float32)
    mask, bg = foreground_mask(green, um_per_px, cfg)
    signal, floor = signal_and_floor(green, bg, um_per_px)
    measurable = signal > floor
    # Once: all come from the same brightest 2 %.
    lead, light, top_rgb = _top_light(rgb, with_red=not red_counterstain)
    return Hep2Quality(
        median_rgb=_channel_medians(rgb),
        green_lead=(lead if _any_light(rgb, um_per_px, cfg, with_red=not red_counterstain)
                    else float("nan")),
        signal=signal,
        noise_floor=floor,
        background=float(np.median(bg)),
        saturated_fraction=_saturated(green, mask),
        focus=_focus(green, mask, um_per_px) if measurable and focus else 0.0,
        cell_fraction=float(mask.mean()),
        light=light,
        monochrome=is_monochrome(rgb),
        top_rgb=top_rgb,
        red_expected=red_counterstain,
    )


def is_monochrome(rgb: np.ndarray) -> bool:
    """True when red and blue repeat green (a monochrome camera, a grey-scale file)."""
    g = rgb[..., 1]
    differ = (cv2.absdiff(rgb[..., 0], g) > _MONOCHROME_GREY) | \
        (cv2.absdiff(rgb[..., 2], g) > _MONOCHROME_GREY)
    return int(np.count_nonzero(differ)) <= _MONOCHROME_OUTLIERS * g.size


def green_lead(rgb: np.ndarray) -> float:
    """Green over the brighter of red and blue, in the light above each channel's median
    over the brightest 2 %. A ratio of channels, so a camera's tone curve or its JPEG
    chroma moves it far less than green's share of the sum."""
    return _top_light(rgb)[0]


def brightest_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """Mean raw colour (R, G, B) of the brightest 2 % of the pixels: what
    :func:`is_white_light` judges."""
    return _top_light(rgb)[2]


def _top_light(rgb: np.ndarray, *, with_red: bool = True
               ) -> tuple[float, float, tuple[float, float, float]]:
    """(green's lead, mean excess grey of the brightest channel, mean raw colour) over the
    brightest 2 %. The channels' medians shift every pixel's total alike, so the brightest
    pixels above them are the brightest pixels as taken. Without ``with_red`` the red
    channel neither chooses the pixels nor counts in the lead and the light."""
    excess = rgb.reshape(-1, 3).astype(np.float32)
    median = np.median(excess[:: max(1, excess.shape[0] // 50_000)], axis=0)
    excess -= median
    weighed = excess if with_red else excess[:, 1:]
    total = weighed.sum(axis=1)
    k = max(1, int(_COLOUR_TOP_SHARE * total.size))
    top = np.argpartition(total, total.size - k)[total.size - k:]
    light = np.clip(excess[top], 0, None).sum(axis=0)
    if not with_red:
        light[0] = 0.0
    raw = excess[top].mean(axis=0) + median
    return (float(light[1] / max(float(light[0]), float(light[2]), 1e-6)),
            float(light.max() / k), (float(raw[0]), float(raw[1]), float(raw[2])))


def signal_and_floor(green: np.ndarray, bg: np.ndarray, um_per_px: float) -> tuple[float, float]:
    """Brightest 5 % of the green over background, smoothed at 1 µm, and the noise floor."""
    sigma = max(0.7, _SIGNAL_SMOOTH_UM / um_per_px)
    resid = cv2.GaussianBlur(green - bg, (0, 0), sigma).reshape(-1)
    k = max(1, int(np.ceil(0.05 * resid.size)))
    signal = float(np.partition(resid, resid.size - k)[resid.size - k:].mean())
    # White noise after a Gaussian blur keeps 1 / (2 sqrt(pi) sigma) of its deviation.
    smoothed_noise = noise_sigma(green) / (2.0 * np.sqrt(np.pi) * sigma)
    return signal, _SIGNAL_NOISE_SIGMAS * float(smoothed_noise)


def shows_signal(q: Hep2Quality) -> bool:
    """Real stained light in the field, not a negative well's faint autofluorescence: what
    the colour test, and the check of a declared scale, need to judge anything."""
    return q.light > _COLOUR_MIN_GREY


def quality_issues(q: Hep2Quality, *, min_focus: float = MIN_FOCUS,
                   soft_focus: float = SOFT_FOCUS,
                   max_saturated: float = MAX_SATURATED) -> list[QualityIssue]:
    """Fatal issues and warnings for a fluorescence field, most fundamental first.

    A wrong stain stops everything else; no cells is not an issue (a negative specimen).
    """
    stain = stain_issues(q)
    if any(i.fatal for i in stain):
        return stain
    return (stain + over_exposure_issues(q, max_saturated) + _under_exposure_issues(q)
            + _focus_issues(q, min_focus, soft_focus))


def stain_issues(q: Hep2Quality, background: str = "median") -> list[QualityIssue]:
    """Brightfield light or non-green signal: not a FITC immunofluorescence field (fatal).
    A monochrome field's colour cannot be judged: a warning says so. ``background`` names
    what ``q.median_rgb`` holds, for the reason."""
    if min(q.median_rgb) > BRIGHTFIELD_MEDIAN:
        r, g, b = q.median_rgb
        return [QualityIssue(
            "wrong_stain",
            f"wrong stain: the background is bright in every channel ({background} R {r:.0f}, "
            f"G {g:.0f}, B {b:.0f} of 255, above {BRIGHTFIELD_MEDIAN:.0f}): a brightfield "
            "(transmitted-light) image, not immunofluorescence; the HEp-2 assay needs the "
            "FITC fluorescence field on a dark background",
            fatal=True,
        )]
    if q.monochrome:
        return [QualityIssue(
            "monochrome",
            "monochrome image (the same grey in every colour channel): the fluorochrome "
            "cannot be checked from the colour, so a field of another fluorochrome (TRITC, "
            "DAPI) would not be refused; make sure the FITC filter cube is in, with a "
            "band-pass emission filter (through a long-pass one the camera records a red "
            "counterstain as FITC light" + (
                ", which hep2.stain.red_counterstain cannot undo" if q.red_expected else "")
            + ")",
            fatal=False,
        )]
    if is_white_light(q.top_rgb):
        r, g, b = q.top_rgb
        return [QualityIssue(
            "wrong_stain",
            f"wrong stain: the brightest light is white (R {r:.0f}, G {g:.0f}, B {b:.0f} of "
            "255): a brightfield (transmitted-light) image of dense tissue, or a "
            "photograph, not immunofluorescence (or a camera whose automatic white "
            "balance whitened the green light: turn it off); the HEp-2 assay needs the FITC "
            "fluorescence field on a dark background",
            fatal=True,
        )]
    # The colour of the light is judged only where there is real signal: a negative well's
    # faint autofluorescence is grey-ish and must not read as "the wrong fluorochrome".
    if shows_signal(q) and np.isfinite(q.green_lead) \
            and q.green_lead < MIN_GREEN_LEAD:
        red = q.top_rgb[0] > q.top_rgb[2] and not q.red_expected
        than = "blue (red is the counterstain's)" if q.red_expected else \
            "the brighter of red and blue"
        return [QualityIssue(
            "wrong_stain",
            f"wrong stain: the light above the background is not green enough for FITC: "
            f"green is {q.green_lead:.2f} times {than} (at least "
            f"{MIN_GREEN_LEAD:g} expected): another fluorochrome, a colour photograph, the "
            "wrong filter cube, or a camera's automatic white balance (turn it off)"
            + (RED_LIGHT_HINT if red else ""),
            fatal=True,
        )]
    return []


def is_white_light(top_rgb: tuple[float, float, float]) -> bool:
    """The brightest light is white: every channel bright and near the others (a lamp
    seen through glass or unstained tissue), as fluorescence light never is."""
    return (min(top_rgb) >= WHITE_MIN_GREY
            and min(top_rgb) >= WHITE_BALANCE * max(max(top_rgb), 1e-6))


def over_exposure_issues(q: Hep2Quality, limit: float) -> list[QualityIssue]:
    """Clipped cells: their brightest pixels, hence the intensity, read too low."""
    sat = q.saturated_fraction
    if sat > limit:
        return [QualityIssue(
            "over_exposed",
            f"over-exposed: {sat:.1%} of the cell pixels are clipped in green (limit "
            f"{limit:.1%}); neither pattern nor intensity can be read: shorten the exposure "
            "or lower the gain (and re-calibrate if they were pinned)",
            fatal=True,
        )]
    if sat > WARN_SATURATED:
        return [QualityIssue(
            "over_exposed",
            f"partly over-exposed: {sat:.1%} of the cell pixels are clipped in green; the "
            "intensity reads low (it is at least the value given)",
            fatal=False,
        )]
    return []


def _under_exposure_issues(q: Hep2Quality) -> list[QualityIssue]:
    """No signal above the noise on a black background: the exposure may be too short."""
    if q.signal <= q.noise_floor and q.background < BLACK_BACKGROUND:
        return [QualityIssue(
            "under_exposed",
            f"no signal above the sensor noise (brightest green {q.signal:.1f} grey over a "
            f"{q.background:.0f} background, noise floor {q.noise_floor:.1f}): the exposure "
            "may be too short or the lamp off; a truly negative well also looks like this",
            fatal=False,
        )]
    return []


def _focus_issues(q: Hep2Quality, limit: float, soft: float) -> list[QualityIssue]:
    """Blur merges speckles and dots into a haze: patterns look homogeneous."""
    if q.focus <= 0:  # nothing to judge focus on (no signal, or too few cell pixels)
        return []
    if q.focus < limit:
        return [QualityIssue(
            "out_of_focus",
            f"out of focus: sharpness {q.focus:.2f} is below {limit:.2f}; refocus on the "
            "cells (blur makes speckled patterns look homogeneous)",
            fatal=True,
        )]
    if q.focus < soft:
        return [QualityIssue(
            "out_of_focus",
            f"soft focus: sharpness {q.focus:.2f}, below {soft:.2f}; fine speckles and dots "
            "may read as homogeneous: refocus and look again",
            fatal=False,
        )]
    return []


def _any_light(rgb: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig, *,
               with_red: bool = True) -> bool:
    """Light above the noise in any channel (red or blue fluorescence counts too; red
    not, without ``with_red``)."""
    brightest = np.asarray(cv2.max(cv2.max(rgb[..., 0], rgb[..., 1]) if with_red
                                   else rgb[..., 1], rgb[..., 2]), np.float32)
    signal, floor = signal_and_floor(brightest, background_map(brightest, um_per_px, cfg),
                                     um_per_px)
    return signal > floor


def _channel_medians(rgb: np.ndarray) -> tuple[float, float, float]:
    """Median of each channel on a subsample (50 k pixels pin a median well enough)."""
    flat = rgb.reshape(-1, 3)[:: max(1, rgb.shape[0] * rgb.shape[1] // 50_000)]
    r, g, b = (float(v) for v in np.median(flat, axis=0))
    return r, g, b


def _saturated(green: np.ndarray, mask: np.ndarray) -> float:
    """Clipped share of the cell pixels (of the whole field when there are none)."""
    clipped = green >= CLIPPED_GREY
    region = mask if mask.any() else np.ones_like(mask, dtype=bool)
    return float(np.count_nonzero(clipped & region)) / float(np.count_nonzero(region))


def _focus(green: np.ndarray, mask: np.ndarray, um_per_px: float,
           at_um_per_px: float = FOCUS_UM_PER_PX) -> float:
    """Sharpness ratio of the green at ``at_um_per_px`` (coarser images as they are)."""
    if um_per_px < at_um_per_px:
        h, w = green.shape
        f = um_per_px / at_um_per_px
        size = (max(1, round(w * f)), max(1, round(h * f)))
        green = cv2.resize(green, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if np.count_nonzero(mask) < _MIN_FOCUS_PIXELS:
        return 0.0
    # Include the cells' rims: their edges are where blur shows most.
    rim = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return focus_measure(green, rim)
