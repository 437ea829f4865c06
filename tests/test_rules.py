"""ASCO/CAP 2018 rule engine: every branch and its boundaries, as a table."""

from __future__ import annotations

import pytest

from appliance.assays.her2.rules import (
    classify_cell,
    classify_intensity,
    classify_membrane,
    score_field,
)
from appliance.assays.her2.types import (
    Category,
    FieldScore,
    Intensity,
    MembraneClass,
    NotScorable,
    Score,
)
from appliance.config import MeasureConfig, RulesConfig

M = MembraneClass
CI, CW, II, IF, NO = (M.COMPLETE_INTENSE, M.COMPLETE_WEAK_MODERATE,
                      M.INCOMPLETE_MODERATE_INTENSE, M.INCOMPLETE_FAINT, M.NONE)


def field(**counts: int) -> list[MembraneClass]:
    """A field from counts per class; the rest of 100 cells unstained unless given."""
    names = {"ci": CI, "cw": CW, "ii": II, "if_": IF, "no": NO}
    cells = [names[k] for k, n in counts.items() for _ in range(n)]
    if "no" not in counts:
        cells += [NO] * (100 - len(cells))
    return cells


CASES = [
    # (description, cells, score, category)
    ("3+: intense complete in 11%", field(ci=11), Score.THREE, Category.POSITIVE),
    ("3+: intense complete in 100%", field(ci=100), Score.THREE, Category.POSITIVE),
    ("intense complete exactly 10% is not 3+ (unusual 2+)", field(ci=10), Score.TWO,
     Category.EQUIVOCAL),
    ("3+ wins over more weak complete", field(ci=12, cw=60), Score.THREE, Category.POSITIVE),
    ("2+: weak/moderate complete in 11%", field(cw=11), Score.TWO, Category.EQUIVOCAL),
    ("weak complete exactly 10% is not 2+ (1+)", field(cw=10, if_=5), Score.ONE, Category.LOW),
    ("2+: complete 6% intense + 5% weak = 11% complete", field(ci=6, cw=5), Score.TWO,
     Category.EQUIVOCAL),
    ("unusual 2+: one intense complete cell", field(ci=1), Score.TWO, Category.EQUIVOCAL),
    ("unusual 2+: basolateral moderate/intense in 11%", field(ii=11), Score.TWO,
     Category.EQUIVOCAL),
    ("basolateral exactly 10% is 0 (ultralow)", field(ii=10), Score.ZERO, Category.ULTRALOW),
    ("basolateral 10% + faint 1% is 1+", field(ii=10, if_=1), Score.ONE, Category.LOW),
    ("1+: faint incomplete in 11%", field(if_=11), Score.ONE, Category.LOW),
    ("1+: faint incomplete in 90%", field(if_=90), Score.ONE, Category.LOW),
    ("faint incomplete exactly 10% is 0 ultralow", field(if_=10), Score.ZERO,
     Category.ULTRALOW),
    ("0 ultralow: one faint cell", field(if_=1), Score.ZERO, Category.ULTRALOW),
    ("0 null: no staining at all", field(no=100), Score.ZERO, Category.NULL),
    ("3 of 30 cells is exactly 10%: not 3+", [CI] * 3 + [NO] * 27, Score.TWO,
     Category.EQUIVOCAL),
    ("4 of 30 cells is 13.3%: 3+", [CI] * 4 + [NO] * 26, Score.THREE, Category.POSITIVE),
]


@pytest.mark.parametrize(("desc", "cells", "score", "category"), CASES,
                         ids=[c[0] for c in CASES])
def test_field_score_table(desc: str, cells: list[MembraneClass], score: Score,
                           category: Category) -> None:
    result = score_field(cells, RulesConfig())
    assert isinstance(result, FieldScore), desc
    assert (result.score, result.category) == (score, category), result.rule
    assert result.tumour_cells == len(cells)
    assert sum(result.percent.values()) == pytest.approx(100.0)


def test_no_tumour_cells_is_not_scorable() -> None:
    result = score_field([], RulesConfig())
    assert isinstance(result, NotScorable)
    assert result.code == "too_few_tumour_cells"


def test_minimum_tumour_cells_boundary() -> None:
    cfg = RulesConfig(min_tumour_cells=20)
    assert isinstance(score_field([CI] * 19, cfg), NotScorable)
    assert isinstance(score_field([CI] * 20, cfg), FieldScore)


def test_unusual_floor_is_configurable() -> None:
    cells = field(ci=1)
    assert score_field(cells, RulesConfig()).score is Score.TWO  # type: ignore[union-attr]
    floored = score_field(cells, RulesConfig(unusual_intense_min_percent=2.0))
    assert isinstance(floored, FieldScore)
    # The intense cell still counts as stained: 1% stained → 0, ultralow.
    assert (floored.score, floored.category) == (Score.ZERO, Category.ULTRALOW)


def test_ultralow_floor_is_configurable() -> None:
    result = score_field(field(if_=1), RulesConfig(ultralow_min_percent=2.0))
    assert isinstance(result, FieldScore)
    assert result.category is Category.NULL


@pytest.mark.parametrize(("od", "expected"), [
    (0.0, Intensity.NONE), (0.199, Intensity.NONE), (0.2, Intensity.FAINT),
    (0.399, Intensity.FAINT), (0.4, Intensity.MODERATE), (0.599, Intensity.MODERATE),
    (0.6, Intensity.STRONG), (2.0, Intensity.STRONG),
])
def test_intensity_thresholds(od: float, expected: Intensity) -> None:
    assert classify_intensity(od, (0.2, 0.4, 0.6)) is expected


@pytest.mark.parametrize(("intensity", "completeness", "expected"), [
    (Intensity.NONE, 1.0, NO),
    (Intensity.FAINT, 0.0, NO),
    (Intensity.FAINT, 0.5, IF),
    (Intensity.FAINT, 0.95, CW),  # weak complete is the 2+ pattern
    (Intensity.MODERATE, 0.95, CW),
    (Intensity.MODERATE, 0.6, II),
    (Intensity.STRONG, 0.6, II),
    (Intensity.STRONG, 0.9, CI),  # exactly the complete fraction counts as complete
    (Intensity.STRONG, 0.899, II),
])
def test_membrane_classes(intensity: Intensity, completeness: float,
                          expected: MembraneClass) -> None:
    assert classify_membrane(intensity, completeness, 0.9) is expected


def test_classify_cell_uses_config_thresholds() -> None:
    cfg = MeasureConfig(intensity_thresholds=[0.1, 0.3, 0.5], complete_fraction=0.8)
    assert classify_cell(0.55, 0.85, cfg) == (Intensity.STRONG, CI)
    assert classify_cell(0.55, 0.75, cfg) == (Intensity.STRONG, II)
