"""A kit control's intensity over runs: the lab's quality-control chart, in numbers.

Each run's positive kit control is read in calibrated units (``control.py``). Over runs
those readings scatter around the control's own mean; a lab tracks them on a
Levey-Jennings chart and applies the Westgard multirules (Westgard, Barry, Hunt and
Groth, Clin Chem 1981;27:493-501) to see a drift before it changes a patient's call:

- ``1-2s``: one reading beyond 2 SD of the mean: a warning, look at the others;
- ``1-3s``: one reading beyond 3 SD: reject the run (random error);
- ``2-2s``: two readings in a row beyond 2 SD on the same side: reject (systematic);
- ``4-1s``: four in a row beyond 1 SD on the same side: reject (systematic);
- ``10x``: ten in a row on the same side of the mean: reject (systematic).

Westgard's range rule ``R-4s`` (two controls more than 4 SD apart) is not applied: it
compares the control levels of one run and is applied within the run only (Westgard et
al. 1981; Bio-Rad's Unity documentation: "applied only within the current run"). A HEp-2
run here has one positive control level, so there is nothing to compare within it. Until
2026-12-06 it was applied to consecutive runs, where it rejected a good run for lying
4 SD from the run before it on the other side of the mean: random scatter, not error.

The mean and SD are the lab's established ones where it gives them
(``hep2.control.positive_target``: a lab fixes them once, from a kit lot's first runs, and
keeps them while the lot lasts, from ``hep2.control.target_since``; the service then
judges each run's control live, ``control.westgard_check``). Otherwise they are taken
from the first ``baseline`` calibrated readings of checks that passed (CLSI C24 asks for
at least 20; a failed run does not set what is normal); with fewer, nothing is flagged
and no range is suggested. Either way the target is fixed: a baseline that moved with
the readings shown would take a slow drift in as normal. A failed run's reading is
judged but not carried into later readings' rules. The suggested
``hep2.control.positive_units`` is mean +/- 2 SD. Pure: it reads the stored decisions
only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

MIN_BASELINE = 20
REJECT_RULES = ("1-3s", "2-2s", "4-1s", "10x")


@dataclass(frozen=True)
class ControlReading:
    """One decision on a control well, as stored."""

    decided_at: str
    case_id: str
    expected: str
    valid: bool
    units: float | None  # None: the well was not read (no intensity)
    calibrated: bool
    kit_lot: str = ""  # "" where no lot was recorded

    @staticmethod
    def from_check(case_id: str, decided_at: str, check: dict[str, Any]) -> ControlReading:
        """From a stored HEp-2 control check (``Hep2ControlCheck.to_dict``)."""
        intensity = check.get("intensity") or {}
        value = intensity.get("value")
        return ControlReading(decided_at=decided_at, case_id=case_id,
                              expected=str(check["expected"]), valid=bool(check["valid"]),
                              units=None if value is None else float(value),
                              calibrated=bool(intensity.get("calibrated", False)),
                              kit_lot=str(check.get("kit_lot") or ""))


@dataclass(frozen=True)
class TrendPoint:
    """A reading on the chart: its distance from the mean in SD, and the rules it breaks."""

    reading: ControlReading
    z: float | None  # None: not calibrated, or no baseline yet
    rules: tuple[str, ...]

    @property
    def rejected(self) -> bool:
        """The reading breaks a rejection rule (not only the 1-2s warning)."""
        return any(rule in REJECT_RULES for rule in self.rules)


@dataclass(frozen=True)
class ControlTrend:
    """One kit control's readings over runs, oldest first, judged on the lab's baseline."""

    expected: str
    points: tuple[TrendPoint, ...]
    baseline_n: int  # calibrated readings of passed checks the mean and SD are from
    mean: float | None
    sd: float | None
    established: bool = False  # the mean and SD are the lab's own, not from the readings
    baseline_needed: int = MIN_BASELINE

    @property
    def basis(self) -> str:
        """Where the mean and SD come from, in words (the chart's caption, the CLI)."""
        if self.established:
            return "as the lab established them"
        if self.mean is None:
            return (f"no baseline yet: {self.baseline_n} calibrated readings of passed checks, "
                    f"the rules need {self.baseline_needed}")
        return f"from the first {self.baseline_n} calibrated readings of passed checks"

    def last(self, n: int) -> ControlTrend:
        """The same chart showing its newest ``n`` points only (each still judged with
        the readings before it, and on the same mean and SD)."""
        return replace(self, points=self.points[-n:])

    @property
    def suggested_range(self) -> tuple[float, float] | None:
        """Mean +/- 2 SD, rounded, once the baseline is complete (else None)."""
        if self.mean is None or self.sd is None:
            return None
        return (round(max(0.0, self.mean - 2 * self.sd), 1), round(self.mean + 2 * self.sd, 1))

    @property
    def rejected(self) -> tuple[TrendPoint, ...]:
        """The readings that break a rejection rule."""
        return tuple(p for p in self.points if p.rejected)


def control_trend(readings: Sequence[ControlReading], expected: str, *,
                  baseline: int = MIN_BASELINE,
                  established: tuple[float, float] | None = None) -> ControlTrend:
    """The chart of ``expected``'s readings (class name), oldest first, every calibrated
    reading judged on one mean and SD: ``established`` (the lab's own mean and SD) when
    given, else those of the first ``baseline`` calibrated readings of passed checks
    (ValueError when ``baseline`` is below 2 or the established SD is not positive)."""
    if baseline < 2:
        raise ValueError(f"baseline {baseline}: a standard deviation needs at least 2 readings")
    mine = sorted((r for r in readings if r.expected == expected),
                  key=lambda r: r.decided_at)
    usable = [r.units for r in mine if r.calibrated and r.units is not None and r.valid]
    if established is not None:
        mean, sd = established
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise ValueError(f"established mean {mean}, SD {sd}: the SD must be above 0")
        base_n = 0
    elif len(usable) < baseline:
        return ControlTrend(expected, tuple(TrendPoint(r, None, ()) for r in mine),
                            len(usable), None, None, baseline_needed=baseline)
    else:
        base = usable[:baseline]
        mean = sum(base) / baseline
        sd = math.sqrt(sum((u - mean) ** 2 for u in base) / (baseline - 1))
        base_n = baseline
    zs = [None if not r.calibrated or r.units is None or sd == 0 else (r.units - mean) / sd
          for r in mine]
    # A failed run's reading is judged itself but not carried into the later ones' rules:
    # the lab corrects the run and repeats it, and a repeat must not be rejected for
    # lying on the same side as the reading that failed (2-2s, 4-1s, 10x).
    carried = [None if not r.valid else z for r, z in zip(mine, zs, strict=True)]
    return ControlTrend(expected, tuple(TrendPoint(r, z, _rules([*carried[:i], z]))
                                        for i, (r, z) in enumerate(zip(mine, zs, strict=True))),
                        base_n, mean, sd, established=established is not None,
                        baseline_needed=baseline)


def _rules(zs: Sequence[float | None]) -> tuple[str, ...]:
    """The Westgard rules the last reading of ``zs`` breaks, judged with the readings
    before it (None: uncalibrated, or a failed run's; skipped, not counted as in control)."""
    z = zs[-1]
    if z is None:
        return ()
    run = [v for v in zs if v is not None]  # this reading last
    out = []
    if abs(z) > 2:
        out.append("1-2s")
    if abs(z) > 3:
        out.append("1-3s")
    if len(run) >= 2:
        a, b = run[-2], run[-1]
        if (a > 2 and b > 2) or (a < -2 and b < -2):
            out.append("2-2s")
    if len(run) >= 4 and (all(v > 1 for v in run[-4:]) or all(v < -1 for v in run[-4:])):
        out.append("4-1s")
    if len(run) >= 10 and (all(v > 0 for v in run[-10:]) or all(v < 0 for v in run[-10:])):
        out.append("10x")
    return tuple(out)


def since_utc(text: str, what: str) -> str:
    """A lot's first day or time (ISO; without an offset the box's local time, as the
    lab's calendar is) as the store's UTC time text ("" stays "": from the first stored
    reading); ValueError naming ``what``."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r}: not an ISO date or time (e.g. 2026-11-15 or "
                         "2026-11-15T08:00)") from None
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def judge_reading(history: Sequence[ControlReading], new: ControlReading,
                  target: tuple[float, float]) -> TrendPoint:
    """A new reading of a kit control judged on the lab's target with the stored readings
    before it (``history``: the lot's, any order): the live check of a run's control."""
    earlier = [r for r in history if r.decided_at <= new.decided_at]
    trend = control_trend([*earlier, new], new.expected, established=target)  # its control only
    return trend.points[-1]  # sorted by time, stable: the new reading is last
