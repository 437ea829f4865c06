"""The refocus probe: a user's soft pause then a sharp view, through the live report rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.her2.types import FieldResult, ModelRef, Score
from appliance.config import Config, with_overrides
from tools import probe_refocus as probe
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

CFG = with_overrides(Config(), {"assay": "hep2"})


@pytest.fixture(scope="module")
def assay() -> Iterator[Hep2Assay]:
    with Hep2Assay.from_config(CFG) as a:
        yield a


def views(defocus: float) -> np.ndarray:
    return generate_hep2_field(Hep2FieldSpec(
        seed=996_820, width=640, height=480, um_per_px=0.5, patterns=(("fine_speckled", 1.0),),
        intensity=100.0, defocus_um=defocus)).image


def test_a_soft_pause_then_a_sharp_view_is_reported_twice(assay: Hep2Assay) -> None:
    soft, sharp = views(0.75), views(0.0)
    score: dict[str, Hep2Result] = {}
    played = probe.play([("soft", soft, 1.5), ("sharp", sharp, 1.5)], score, CFG,
                        np.random.default_rng(0), assay, 0.5)
    assert [(r.view, r.reason, r.warned_sharper_before) for r in played.reports] == [
        ("soft", "new field", False), ("sharp", "sharper", False)]
    assert played.focus["sharp"] > 1.1 * played.focus["soft"]
    assert set(score) == {"soft", "sharp"}  # each picture scored once
    # The wrong way (sharp, then soft): one report.
    back = probe.play([("sharp", sharp, 1.5), ("soft", soft, 1.5)], score, CFG,
                      np.random.default_rng(1), assay, 0.5)
    assert [(r.view, r.reason) for r in back.reports] == [("sharp", "new field")]
    # Through the best focus, held soft: reported with the warning, first among them.
    past = probe.play([("sharp", sharp, 0.3), ("soft", soft, 1.5)], score, CFG,
                      np.random.default_rng(2), assay, 0.5)
    (report,) = past.reports
    assert report.view == "soft" and report.warned_sharper_before
    assert report.result.warnings[0].startswith("this view was sharper")


def test_a_row_counts_what_was_measured() -> None:
    tally = {k: [] for k in probe._KEYS}
    tally.update(soft_first=[True, False], soft_scored=[True, False], replaced=[True],
                 replaced_why=["sharper"], focus_rise=[1.4], right_first=[False],
                 right_stored=[True], false_warning=[False, False, False],
                 control_extra=[0, 0], overshoot_warned=[True], overshoot_right=[False],
                 shift=[0.1, 0.3])
    row = probe._row(0.75, 2, tally)
    assert row["soft_reported_scored"] == 0.5 and row["replaced_when_sharp"] == 1.0
    assert row["right_first_report"] == 0.0 and row["right_stored"] == 1.0
    assert row["overshoot_warned"] == 1.0 and row["false_warnings"] == 0
    assert row["registration_shift_max_px"] == 0.3
    assert "warned 1.00 of 1 soft reports" in probe._line(row)
    empty = probe._row(3.0, 2, {**{k: [] for k in probe._KEYS}, "shift": [0.0]})
    assert empty["replaced_when_sharp"] is None and "replaced when sharp -" in probe._line(empty)


def test_the_chart_draws_missing_figures_as_gaps(tmp_path: Path) -> None:
    rows = [{"defocus_um": d, "soft_reported_scored": s, "replaced_when_sharp": r,
             "right_first_report": a, "right_stored": b, "overshoot_warned": w}
            for d, s, r, a, b, w in ((0.5, 1.0, 0.2, 0.9, 0.95, 0.5),
                                     (3.0, 0.0, None, None, None, None))]
    out = tmp_path / "refocus.png"
    probe.plot(rows, out)
    assert out.stat().st_size > 1000


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        probe.main(["--specimens", "0"])
    with pytest.raises(SystemExit):
        probe.main(["--defocus", "a,b"])


def test_her2_cases_draw_the_same_field_at_any_blur_and_judge_the_score() -> None:
    (case,) = probe.her2_cases(1)  # the first score of SCORES
    sharp, soft = case.draw(0.0), case.draw(1.0)
    assert sharp.shape == soft.shape and not np.array_equal(sharp, soft)
    assert np.array_equal(case.sharp, sharp)
    model = ModelRef(name="m", sha256="ab" * 32, precision="int8", validated_on="generated")

    def result(score: Score, status: str = "scored") -> FieldResult:
        return FieldResult(file="f", seq=1, assay="her2", status=status, model=model,
                           image_width=800, image_height=600, score=score)

    assert case.right(result(Score(probe.SCORES[0])))
    assert not case.right(result(Score(probe.SCORES[1])))
    assert not case.right(result(Score(probe.SCORES[0]), "not_scorable"))
