"""tools/eval_cases.py: a tiny run through the real workflow, and the figures it derives.

The run uses the unit tests' control slides (their control fields depend only on the seed
and the stain strength): seed 5 at 0.7 is the under-stained run that calibration rescues,
seed 7 at 0.35 the faint run whose control must fail whatever the setting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.assays.her2.assay import Her2Assay
from appliance.config import Config
from tools.eval_cases import (
    NOT_SCORABLE,
    CaseBench,
    CaseOutcome,
    evaluate,
    format_table,
    missed_with_valid_control,
    parse_args,
    plot,
    scale_stats,
    setting_stats,
    show_fields,
    slide_spec,
    to_json,
    tumour_scores,
)
from tools.synth.her2_fields import SCORES
from tools.synth.her2_slide import SlideSpec, generate_slide


@pytest.fixture(scope="module")
def assay() -> Iterator[Her2Assay]:
    with Her2Assay.from_config(Config()) as a:
        yield a


@pytest.fixture(scope="module")
def outcomes(assay: Her2Assay) -> list[CaseOutcome]:
    cfg = assay.cfg
    weak = evaluate(assay, [5], [0.7])
    faint = evaluate(assay, [7], [0.35])
    # The shared assay is handed back as it was lent: its config, outside any case.
    assert assay.cfg is cfg and assay.field_context() is None
    return weak + faint


def outcome(*, valid: bool, score: str, truth: str = "2+", calibration: bool = True,
            fields: tuple[str, ...] = ("2+", "2+"), ratio: float | None = 1.0) -> CaseOutcome:
    return CaseOutcome(seed=1, dab_scale=1.0, calibration=calibration, control_valid=valid,
                       ratio=ratio, truth=truth, score=score, field_truth=("2+", "2+"),
                       field_scores=fields)


def test_tumour_scores_are_seeded_draws_of_the_four_scores() -> None:
    drawn = [tumour_scores(seed) for seed in range(1000, 1040)]
    assert drawn == [tumour_scores(seed) for seed in range(1000, 1040)]
    assert all(len(d) == 3 and set(d) <= set(SCORES) for d in drawn)
    assert {s for d in drawn for s in d} == set(SCORES)
    assert len(set(drawn)) > 20  # slides differ from seed to seed
    spec = slide_spec(1003, 0.6)
    assert (spec.dab_scale, spec.control_level, spec.control_fields) == (0.6, "3+", 3)
    assert (spec.width, spec.height, spec.um_per_px) == (640, 480, 0.5)


def test_calibration_rescues_the_weak_run_and_the_faint_one_fails(
        outcomes: list[CaseOutcome]) -> None:
    assert [(o.seed, o.dab_scale, o.calibration) for o in outcomes] == [
        (5, 0.7, True), (5, 0.7, False), (7, 0.35, True), (7, 0.35, False)]
    weak_on, weak_off, faint_on, faint_off = outcomes
    # One control measurement, two decisions: the ratio does not depend on the setting.
    assert weak_on.ratio == weak_off.ratio and faint_on.ratio == faint_off.ratio
    assert weak_on.ratio is not None and 0.55 < weak_on.ratio < 0.85
    assert weak_on.control_valid and not weak_off.control_valid
    assert any("stain strength" in r for r in weak_on.control_reasons)
    assert any("too weak" in r for r in faint_on.control_reasons), faint_on.control_reasons
    assert faint_on.ratio is not None and faint_on.ratio < 0.6
    assert not faint_on.control_valid and not faint_off.control_valid
    for o in outcomes:
        assert o.truth in SCORES and o.score in (*SCORES, None)
        assert len(o.field_scores) == len(o.field_truth) == 3
        assert set(o.field_scores) <= {*SCORES, NOT_SCORABLE}
    # A failed control leaves the nominal thresholds: both settings measure alike.
    assert faint_on.field_scores == faint_off.field_scores


def test_a_field_refused_by_a_quality_gate_is_stored_in_both_cases(
        assay: Her2Assay, tmp_path: Path) -> None:
    one = generate_slide(SlideSpec(seed=3, control_fields=0, tumour_scores=("1+",),
                                   width=640, height=480))[0]
    blank = replace(one, image=np.full_like(one.image, 236))  # bare glass
    benches = [CaseBench(assay.cfg, tmp_path / f"{on}.sqlite", calibration=on)
               for on in (True, False)]
    try:
        for b in benches:
            b.cases.start_case("c-blank", source="cli")
        shown = show_fields(assay, [one, blank], benches, first_seq=1)
        for bench, (scored, refused) in zip(benches, shown, strict=True):
            assert scored.scored and scored.case is not None
            assert not refused.scored and refused.reason_code == "no_tissue"
            assert [f.result["status"] for f in bench.cases.summary().fields] == [
                "scored", "not_scorable"]
    finally:
        for b in benches:
            b.close()


def test_figures_per_strength_follow_the_outcomes(outcomes: list[CaseOutcome],
                                                  tmp_path: Path) -> None:
    rows = scale_stats(outcomes)
    assert [r.dab_scale for r in rows] == [0.35, 0.7]
    faint, weak = rows
    assert (weak.on.control_pass, weak.off.control_pass) == (1.0, 0.0)
    assert (faint.on.control_pass, faint.off.control_pass) == (0.0, 0.0)
    assert faint.on.case_accuracy_when_valid is None and weak.off.valid_slides == 0
    assert weak.ratio_mean == outcomes[0].ratio and weak.ratio_sd is None
    table = format_table(rows)
    assert "0.35" in table and "0.70" in table and "- (0)" in table
    png = tmp_path / "img" / "eval.png"
    plot(rows, png)
    picture = np.asarray(Image.open(png))
    assert picture.shape[1] > picture.shape[0] > 200 and picture.std() > 5
    doc = json.loads(to_json(rows, outcomes, {"slides": 1}))
    assert len(doc["cases"]) == 4 and doc["per_scale"][1]["on"]["control_pass"] == 1.0


def test_setting_stats_counts_all_cases_and_those_with_a_passed_control() -> None:
    stats = setting_stats([
        outcome(valid=True, score="2+"),
        outcome(valid=True, score="1+", fields=("2+", "1+")),
        outcome(valid=False, score="2+", fields=(NOT_SCORABLE, "1+")),
    ])
    assert stats.slides == 3 and stats.valid_slides == 2
    assert stats.control_pass == pytest.approx(2 / 3)
    assert stats.case_accuracy == pytest.approx(2 / 3)
    assert stats.case_accuracy_when_valid == pytest.approx(1 / 2)
    assert stats.field_accuracy == pytest.approx(3 / 6)
    assert stats.field_accuracy_when_valid == pytest.approx(3 / 4)


def test_only_wrong_cases_with_a_passed_control_are_listed() -> None:
    lines = missed_with_valid_control([
        outcome(valid=True, score="2+"),
        outcome(valid=False, score="1+"),
        replace(outcome(valid=True, score="1+", calibration=False), borderline=("near 10%",)),
    ])
    assert len(lines) == 1
    assert "calibration off" in lines[0] and "case 1+, truth 2+" in lines[0]
    assert "flagged borderline (near 10%)" in lines[0]


def test_the_ratio_spread_uses_only_measured_calibration_on_cases() -> None:
    rows = scale_stats([
        outcome(valid=True, score="2+", ratio=0.9),
        outcome(valid=False, score="2+", ratio=None),
        outcome(valid=True, score="2+", ratio=1.1),
        outcome(valid=True, score="2+", ratio=5.0, calibration=False),
    ])
    assert len(rows) == 1 and rows[0].ratios_measured == 2
    assert rows[0].ratio_mean == pytest.approx(1.0)
    assert rows[0].ratio_sd == pytest.approx(np.std([0.9, 1.1], ddof=1))


def test_command_line_quick_and_bad_values() -> None:
    quick = parse_args(["--quick", "--slides", "9"])
    assert quick.slides == 2 and quick.scales == (0.5, 1.0)
    full = parse_args(["--scales", "0.4, 1.1", "--seed", "2000"])
    assert full.slides == 12 and full.scales == (0.4, 1.1) and full.seed == 2000
    for bad in (["--scales", "0.5,x"], ["--scales", "4"], ["--slides", "0"],
                ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
