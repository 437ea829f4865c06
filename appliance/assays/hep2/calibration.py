"""Intensity calibration of the HEp-2 assay: is it valid, and computing it from a reference slide.

The assay measures a field's intensity in 8-bit grey levels above background (the median
over the interphase cells of each cell's brightest-5 % mean, ``intensity.py``). Grey levels
depend on everything between the serum and the pixel: lamp or LED, filter cube, objective,
camera, and above all the exposure time and gain. A lab makes them comparable by pinning
the exposure and gain (auto exposure off) and imaging a reference slide of known intensity
at those settings: ``units_per_grey`` converts the grey levels into the reference's units.
The conversion holds only at the exposure and gain it was made at, so
:func:`intensity_is_calibrated` compares the camera's pinned settings with the calibration's
record, and the result says "relative units" otherwise (docs/hep2-calibration.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.config import Hep2IntensityConfig, SourceConfig

# Camera settings within this relative difference of the calibration's are the same
# settings: a driver rounds the exposure to whole sensor lines or 100 µs steps.
SETTING_TOLERANCE = 0.01
MIN_REFERENCE_FIELDS = 3  # one field could be an unlucky one; three show the spread
# Coefficient of variation of the fields' grey above which the reference is not uniform
# enough (uneven slide, a field out of focus, the lamp warming up): the median would be
# a guess.
MAX_REFERENCE_CV = 0.20
# Brightest-5 % means this close to the 8-bit ceiling (255 less a dark background) are
# clipped: the pixels saturate, so grey no longer grows with intensity.
SATURATED_GREY = 230.0
# Below this the reference stands barely above sensor noise (a few grey levels): the
# calibration is kept but the lab is told to lengthen the exposure.
DIM_GREY = 10.0


class CalibrationError(ValueError):
    """The reference fields cannot give a calibration; the message says why."""


@dataclass(frozen=True)
class Calibration:
    """The calibration a set of reference-slide fields gives."""

    units_per_grey: float  # calibrated units per grey level above background
    reference_units: float  # the reference slide's intensity, in the lab's units
    median_grey: float  # the fields' median intensity in grey levels
    fields: int
    cv: float  # coefficient of variation of the fields' grey levels
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drift:
    """How the reference reads at the current calibration (a periodic check)."""

    units: float  # the median field in calibrated units
    reference_units: float  # what it should read
    fields: int
    cv: float

    @property
    def percent(self) -> float:
        """The reading's difference from the reference, in per cent (negative: reads low)."""
        return 100.0 * (self.units / self.reference_units - 1.0)


def intensity_is_calibrated(source: SourceConfig, intensity: Hep2IntensityConfig,
                            flat_sha256: str = "") -> tuple[bool, str]:
    """Whether intensities are in calibrated units, and the reason in words.

    True only when the calibration record (``hep2.intensity.exposure_ms`` and ``gain``) is
    set, the camera pins the same exposure and gain (``source.exposure_us`` and ``gain``,
    within 1 %), and the flat field applied (``flat_sha256``, its file's sha256, '' for
    none) is the one the calibration was made with (``flat_field_sha256``). Whether the
    driver really holds exposure and gain is the source's ``exposure_pinned``, known only
    once a camera is open.
    """
    cal_us = intensity.exposure_ms * 1000.0
    if cal_us <= 0 or intensity.gain <= 0:
        return False, ("no intensity calibration recorded (hep2.intensity.exposure_ms and "
                       "gain are 0; run `appliance calibrate-iif`): relative units")
    if source.exposure_us <= 0:
        return False, ("camera exposure is automatic (source.exposure_us = 0), the "
                       f"calibration's is {cal_us:g} us: relative units")
    if source.gain <= 0:
        return False, ("camera gain is automatic (source.gain = 0), the calibration's is "
                       f"{intensity.gain:g}: relative units")
    if not _same(source.exposure_us, cal_us):
        return False, (f"camera exposure {source.exposure_us:g} us differs from the "
                       f"calibration's {cal_us:g} us: relative units")
    if not _same(source.gain, intensity.gain):
        return False, (f"camera gain {source.gain:g} differs from the calibration's "
                       f"{intensity.gain:g}: relative units")
    if intensity.flat_field_sha256 != flat_sha256:
        if not intensity.flat_field_sha256:
            change = "was made without a flat field and one is applied now"
        elif not flat_sha256:
            change = "was made with a flat field and none is applied now"
        else:
            change = "was made with another flat field"
        return False, (f"the calibration {change} (hep2.intensity.flat_field_file): run "
                       "`appliance calibrate-iif` again: relative units")
    return True, (f"calibrated at exposure {cal_us:g} us and gain {intensity.gain:g}: "
                  f"{intensity.units_per_grey:g} units per grey level")


def units_per_grey_from_reference(measured_grey: Sequence[float],
                                  reference_units: float) -> Calibration:
    """Units per grey level from reference-slide fields measured at the pinned exposure.

    ``measured_grey`` holds each field's specimen intensity in grey levels above background;
    ``reference_units`` the reference slide's known intensity. The median field decides, so
    one slightly off field does not move the calibration. Raises :class:`CalibrationError`
    for fewer than three fields, a field that is not a positive finite number, a clipped
    field, or a spread (coefficient of variation) above 20 %, naming the field that is off.
    """
    if not (math.isfinite(reference_units) and reference_units > 0):
        raise CalibrationError(f"the reference intensity must be a positive number of units, "
                               f"got {reference_units}")
    greys = [float(g) for g in measured_grey]
    if len(greys) < MIN_REFERENCE_FIELDS:
        raise CalibrationError(f"need at least {MIN_REFERENCE_FIELDS} reference fields, got "
                               f"{len(greys)}: image more fields of the reference slide")
    for i, g in enumerate(greys, start=1):
        if not (math.isfinite(g) and g > 0):
            raise CalibrationError(
                f"field {i} measured {g:g} grey levels above background: not a stained "
                "reference field (empty area, out of focus, shutter closed or lamp off?)")
        if g >= SATURATED_GREY:
            raise CalibrationError(
                f"field {i} measured {g:.1f} grey levels: the brightest pixels clip at the "
                "8-bit ceiling; shorten the exposure or lower the gain and calibrate again")
    median = _median(greys)
    cv = _coefficient_of_variation(greys)
    if cv > MAX_REFERENCE_CV:
        worst = max(range(len(greys)), key=lambda i: abs(greys[i] - median))
        off = (greys[worst] - median) / median
        raise CalibrationError(
            f"the reference fields vary by {cv:.0%} (coefficient of variation; at most "
            f"{MAX_REFERENCE_CV:.0%}): field {worst + 1} reads {greys[worst]:.1f} grey, "
            f"{off:+.0%} from the median {median:.1f}; check its focus and illumination, or "
            "replace it with another field")
    warnings: tuple[str, ...] = ()
    if median < DIM_GREY:
        warnings = (f"the reference reads only {median:.1f} grey levels above background: "
                    "close to the sensor noise; a longer exposure or higher gain would make "
                    "the calibration more precise",)
    return Calibration(units_per_grey=reference_units / median,
                       reference_units=float(reference_units), median_grey=median,
                       fields=len(greys), cv=cv, warnings=warnings)


def reference_drift(measured_grey: Sequence[float], reference_units: float,
                    units_per_grey: float) -> Drift:
    """The reference fields read at the calibration in use (``units_per_grey``).

    The fields are held to the calibration's own checks (at least three, none clipped or
    empty, at most 20 % spread; :class:`CalibrationError` otherwise), so a drift is
    measured on fields that could have made a calibration.
    """
    fresh = units_per_grey_from_reference(measured_grey, reference_units)
    return Drift(units=fresh.median_grey * units_per_grey, reference_units=reference_units,
                 fields=fresh.fields, cv=fresh.cv)


def _same(value: float, reference: float) -> bool:
    """``value`` within :data:`SETTING_TOLERANCE` of a positive ``reference``."""
    return abs(value - reference) <= SETTING_TOLERANCE * reference


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over the mean (the spread of a handful of fields)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / mean
