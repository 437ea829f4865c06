"""Positive-control decisions and calibration, on constructed cell measurements."""

from __future__ import annotations

import random

import pytest

from appliance.assays.her2.control import (
    CellReading,
    classify_readings,
    evaluate_control,
    nominal,
    scaled,
)
from appliance.assays.her2.types import MembraneClass
from appliance.config import ControlConfig, MeasureConfig, RulesConfig

MEASURE = MeasureConfig()
RULES = RulesConfig()


def cells(n: int, od: float, completeness: float, *, seed: int = 0,
          spread: float = 0.05) -> list[CellReading]:
    rng = random.Random(seed)
    return [CellReading(max(0.0, rng.gauss(od, spread)), completeness) for _ in range(n)]


def strong_control(scale: float = 1.0, n: int = 120) -> list[list[CellReading]]:
    """A 3+ control: 85% complete membranes at ~0.75 OD x scale, the rest moderate."""
    intense = cells(int(0.85 * n), 0.75 * scale, 1.0, seed=1, spread=0.06 * scale)
    moderate = cells(n - len(intense), 0.5 * scale, 1.0, seed=2, spread=0.03 * scale)
    both = intense + moderate
    return [both[: n // 2], both[n // 2:]]


def test_a_good_3plus_control_is_valid_and_calibrates_near_one() -> None:
    result = evaluate_control(strong_control(), "3+", measure=MEASURE, rules=RULES,
                              control=ControlConfig())
    assert result.valid, result.reasons
    assert result.measured_score == "3+" and result.cells == 120 and result.fields == 2
    assert result.ratio is not None and 0.9 < result.ratio < 1.1
    assert result.calibration.source == "control"
    assert result.calibration.thresholds == pytest.approx(
        [t * result.ratio for t in MEASURE.intensity_thresholds])


@pytest.mark.parametrize("scale", [0.65, 0.75, 0.9, 1.3])
def test_an_under_or_over_stained_run_calibrates_by_its_stain_strength(scale: float) -> None:
    result = evaluate_control(strong_control(scale), "3+", measure=MEASURE, rules=RULES,
                              control=ControlConfig())
    assert result.valid, result.reasons
    assert result.ratio == pytest.approx(scale, rel=0.08)
    # With the calibrated thresholds the control reads as the nominal run does.
    nominal_classes = classify_readings([c for f in strong_control() for c in f],
                                        MEASURE.intensity_thresholds, MEASURE)
    calibrated = classify_readings([c for f in strong_control(scale) for c in f],
                                   result.calibration.thresholds, MEASURE)
    agree = sum(a is b for a, b in zip(nominal_classes, calibrated, strict=True))
    assert agree / len(calibrated) > 0.9


def test_an_under_stained_run_without_calibration_fails_its_3plus_control() -> None:
    result = evaluate_control(strong_control(0.7), "3+", measure=MEASURE, rules=RULES,
                              control=ControlConfig(calibration=False))
    # Nominal thresholds: the weaker membranes are no longer "intense" in most cells.
    assert not result.valid
    assert result.calibration == nominal(MEASURE)
    assert any("complete intense staining in" in r for r in result.reasons)


@pytest.mark.parametrize("scale, words", [(0.4, "too weak"), (2.0, "too strong")])
def test_a_stain_far_from_the_reference_fails_whatever_the_calibration(
        scale: float, words: str) -> None:
    result = evaluate_control(strong_control(scale), "3+", measure=MEASURE, rules=RULES,
                              control=ControlConfig())
    assert not result.valid
    assert any(words in r for r in result.reasons), result.reasons
    assert result.calibration.source == "nominal"


def test_too_few_cells_or_complete_membranes_fail_with_the_reason() -> None:
    few = evaluate_control([cells(20, 0.75, 1.0)], "3+", measure=MEASURE, rules=RULES,
                           control=ControlConfig())
    assert not few.valid and "too few tumour cells" in few.reasons[0]
    incomplete = evaluate_control([cells(100, 0.75, 0.5)], "3+", measure=MEASURE, rules=RULES,
                                  control=ControlConfig())
    assert not incomplete.valid and "completely stained cells" in incomplete.reasons[0]


def test_a_3plus_control_that_is_only_2plus_fails() -> None:
    moderate = [cells(100, 0.5, 1.0, spread=0.02)]
    result = evaluate_control(moderate, "3+", measure=MEASURE, rules=RULES,
                              control=ControlConfig(calibration=False, min_ratio=0.5))
    assert not result.valid
    assert result.measured_score == "2+"
    assert any("expected 3+" in r for r in result.reasons)


def test_a_1plus_control_is_checked_but_never_calibrates() -> None:
    faint = cells(70, 0.3, 0.5, spread=0.03) + cells(30, 0.0, 0.0, spread=0.0)
    result = evaluate_control([faint], "1+", measure=MEASURE, rules=RULES,
                              control=ControlConfig())
    assert result.valid, result.reasons
    assert result.calibration == nominal(MEASURE) and result.ratio is None
    unstained = evaluate_control([cells(100, 0.0, 0.0, spread=0.0)], "1+", measure=MEASURE,
                                 rules=RULES, control=ControlConfig())
    assert not unstained.valid and unstained.measured_score == "0"


def test_a_negative_control_must_score_0() -> None:
    clean = evaluate_control([cells(80, 0.0, 0.0, spread=0.0)], "0", measure=MEASURE,
                             rules=RULES, control=ControlConfig())
    assert clean.valid
    stained = evaluate_control([cells(80, 0.5, 1.0)], "0", measure=MEASURE, rules=RULES,
                               control=ControlConfig())
    assert not stained.valid


def test_check_to_dict_is_json_ready_and_names_the_calibration() -> None:
    d = evaluate_control(strong_control(0.8), "3+", measure=MEASURE, rules=RULES,
                         control=ControlConfig()).to_dict()
    assert d["valid"] is True and d["expected"] == "3+"
    assert d["calibration"]["source"] == "control"
    assert d["calibration"]["factor"] == pytest.approx(0.8, rel=0.08)
    assert len(d["calibration"]["thresholds"]) == 3


def test_scaled_thresholds_and_their_description() -> None:
    cal = scaled(MEASURE, 0.5)
    assert cal.thresholds == pytest.approx((0.1, 0.2, 0.3))
    assert "x0.50" in cal.describe() and "nominal" in nominal(MEASURE).describe()


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="4\\+"):
        evaluate_control(strong_control(), "4+", measure=MEASURE, rules=RULES,
                         control=ControlConfig())


def test_classify_readings_follows_the_given_thresholds() -> None:
    reading = [CellReading(0.35, 1.0)]
    assert classify_readings(reading, (0.2, 0.4, 0.6), MEASURE) == [
        MembraneClass.COMPLETE_WEAK_MODERATE]
    assert classify_readings(reading, (0.1, 0.2, 0.3), MEASURE) == [
        MembraneClass.COMPLETE_INTENSE]
