"""The pooled case score, duplicates, heterogeneity and borderline flags."""

from __future__ import annotations

import pytest

from appliance.assays.her2.case_score import CaseField, counted_fields, score_case
from appliance.assays.her2.control import CellReading, classify_readings
from appliance.assays.her2.rules import score_field
from appliance.assays.her2.types import MembraneClass, Score
from appliance.config import CaseConfig, MeasureConfig, RulesConfig

MEASURE, RULES, CASE = MeasureConfig(), RulesConfig(), CaseConfig()
NOMINAL = tuple(MEASURE.intensity_thresholds)
INTENSE = CellReading(0.8, 1.0)
MODERATE_COMPLETE = CellReading(0.5, 1.0)
FAINT_INCOMPLETE = CellReading(0.3, 0.4)
NONE = CellReading(0.0, 0.0)


def field(number: int, *groups: tuple[CellReading, int], scored: bool = True,
          duplicate_of: int | None = None) -> CaseField:
    return CaseField(number, scored, tuple(c for c, n in groups for _ in range(n)), duplicate_of)


def score(fields: list[CaseField], thresholds: tuple[float, ...] = NOMINAL):
    return score_case(fields, thresholds, measure=MEASURE, rules=RULES, case=CASE)


def test_cells_are_pooled_not_fields_voted() -> None:
    # Two small 1+ fields and one big field with 12% intense: pooled, intense is
    # 30 of 250 = 12% > 10% -> 3+, whereas a vote of fields would say 1+.
    fields = [field(1, (FAINT_INCOMPLETE, 30), (NONE, 20)),
              field(2, (FAINT_INCOMPLETE, 30), (NONE, 20)),
              field(3, (INTENSE, 30), (NONE, 120))]
    result = score(fields)
    pooled = [c for f in fields for c in f.cells]
    direct = score_field(classify_readings(pooled, NOMINAL, MEASURE), RULES)
    assert result.score is Score.THREE is direct.score  # type: ignore[union-attr]
    assert result.tumour_cells == 250 and result.fields_counted == 3
    assert result.percent[MembraneClass.COMPLETE_INTENSE] == pytest.approx(12.0)
    # The 1+ fields differ from the case score: that is the heterogeneity report.
    assert len(result.heterogeneity) == 2
    assert "field 1 scores 1+ (case 3+)" in result.heterogeneity[0]


def test_a_return_to_a_field_counts_once() -> None:
    once = [field(1, (INTENSE, 5), (NONE, 45)), field(2, (FAINT_INCOMPLETE, 50))]
    twice = [*once, field(3, (INTENSE, 5), (NONE, 45), duplicate_of=1)]
    assert score(twice).percent == score(once).percent
    assert score(twice).tumour_cells == 100 and score(twice).fields_total == 3
    verdict = score(twice).fields[2]
    assert not verdict.counted and "same field as field 1" in verdict.note


def test_a_field_first_unscorable_then_scored_counts_through_its_scored_view() -> None:
    fields = [field(1, (NONE, 3), scored=False), field(2, (INTENSE, 40), duplicate_of=1),
              field(3, (INTENSE, 40), duplicate_of=1)]
    assert counted_fields(fields) == {2}
    assert score(fields).tumour_cells == 40


def test_a_superseded_view_gives_way_to_the_reading_that_replaced_it() -> None:
    first = CaseField(1, True, (INTENSE,) * 40, superseded_by=3)
    other = field(2, (FAINT_INCOMPLETE, 50))
    again = field(3, (NONE, 40), duplicate_of=1)  # read again at the right objective
    result = score([first, other, again])
    assert counted_fields([first, other, again]) == {2, 3}
    assert result.percent.get(MembraneClass.COMPLETE_INTENSE, 0.0) == 0.0
    assert result.fields[0].note == "superseded by field 3 (read again): not counted"
    # A new reading that cannot be scored leaves the field out: the old one was made
    # under settings the user replaced.
    refused = CaseField(3, False, (), duplicate_of=1)
    assert counted_fields([first, other, refused]) == {2}


def test_calibrated_thresholds_reclassify_every_pooled_cell() -> None:
    weak = [field(1, (CellReading(0.45, 1.0), 60), (NONE, 40))]  # 0.75 x an intense 0.6
    assert score(weak).score is Score.TWO
    assert score(weak, tuple(t * 0.7 for t in NOMINAL)).score is Score.THREE


def test_too_few_cells_is_not_scorable_with_the_reason() -> None:
    result = score([field(1, (INTENSE, 5))])
    assert result.score is None and "too few tumour cells" in result.rule
    assert result.borderline == ()


def test_borderline_percentages_near_the_cut_off_are_flagged() -> None:
    # 11 of 100 complete intense: 11% is within 3 points of 10%.
    result = score([field(1, (INTENSE, 11), (FAINT_INCOMPLETE, 89))])
    assert result.score is Score.THREE
    assert any("complete intense staining (3+ vs 2+): 11.0%" in b for b in result.borderline)
    clear = score([field(1, (INTENSE, 60), (NONE, 40))])
    assert not any("3+ vs 2+" in b for b in clear.borderline)


def test_a_mean_intensity_near_a_threshold_is_flagged() -> None:
    near = score([field(1, (CellReading(0.62, 1.0), 60), (NONE, 40))])
    assert any("strong threshold 0.60" in b for b in near.borderline)
    far = score([field(1, (CellReading(0.9, 1.0), 60), (NONE, 40))])
    assert not any("threshold" in b for b in far.borderline)


def test_an_empty_case_is_not_scorable() -> None:
    result = score([])
    assert result.score is None and result.fields_counted == 0 and result.tumour_cells == 0
