"""The well eval: how its wells are drawn, summarised and compared with single fields."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tools import eval_hep2, eval_hep2_wells
from tools.eval_hep2 import SpecimenOutcome
from tools.eval_hep2_wells import (
    WellOutcome,
    changed_calls,
    field_specs,
    format_table,
    summaries,
    well_cases,
)
from tools.hep2_dataset import CALIBRATION_SEEDS, TRAIN_SEEDS, VAL_SEEDS
from tools.hep2_reference import reference_specs
from tools.synth.hep2_fields import generate_hep2_field

HAVE_MODEL = (Path(__file__).resolve().parents[1] / "models" / "hep2" / "manifest.json").exists()


def test_each_well_has_its_own_seeds_apart_from_every_other_set() -> None:
    cases = well_cases(2, 3, eval_hep2_wells.FIRST_SEED)
    assert len(cases) == 2 * len(eval_hep2.specimen_cases(1))
    seeds = [c.spec.seed + k for c in cases for k in range(3)]
    assert len(set(seeds)) == len(seeds)
    others = (set(TRAIN_SEEDS) | set(VAL_SEEDS) | set(CALIBRATION_SEEDS)
              | {s.seed for s in reference_specs()}
              | set(range(eval_hep2.FIRST_SEED, eval_hep2.FIRST_SEED + 100_000)))
    assert not others & set(seeds)


def test_the_other_fields_keep_the_serum_and_the_microscope_and_draw_their_own_cells() -> None:
    case = next(c for c in well_cases(1, 3, 830_000) if c.kind == "mixed")
    first = generate_hep2_field(case.spec)
    specs = field_specs(case, first, 3)
    assert [s.seed for s in specs] == [case.spec.seed + 1, case.spec.seed + 2]
    for spec in specs:
        again = generate_hep2_field(spec)
        assert again.patterns == first.patterns and again.um_per_px == first.um_per_px
        assert again.intensity == pytest.approx(first.intensity, rel=1e-6)
        assert again.spec.camera_seed == first.spec.camera_seed
        assert again.spec.combined == first.spec.combined
        assert again.cells != first.cells  # a field of its own


def outcome(seed: int, kind: str, truth: tuple[str, ...], called: tuple[str, ...],
            positive: bool = True) -> SpecimenOutcome:
    return SpecimenOutcome(seed=seed, kind=kind, um_per_px=0.5, truth_patterns=truth,
                           truth_positive=True, truth_intensity=40.0, truth_level="weak",
                           status="scored", reported=called, positive=positive,
                           intensity=40.0, level="weak", reason=None, cells=50, ms=1.0)


def test_the_wells_are_compared_with_their_first_field_and_every_field() -> None:
    pair = ("homogeneous", "nucleolar_homogeneous")
    found = outcome(1, "mixed", pair, pair)
    half = outcome(1, "mixed", pair, pair[:1])
    wells = [WellOutcome(fields=(half, found, half), well=found),
             WellOutcome(fields=(found, found, found), well=replace(found, seed=4)),
             WellOutcome(fields=(outcome(7, "single", ("golgi",), ("golgi",)),) * 3,
                         well=outcome(7, "single", ("golgi",), ("golgi",), positive=False))]
    figures = summaries(wells)
    assert figures["first_field"]["mixed_both_reported"] == 0.5
    assert figures["every_field"]["mixed_both_reported"] == pytest.approx(4 / 6)
    assert figures["well"]["mixed_both_reported"] == 1.0
    assert figures["well"]["positive_negative_agreement"] == pytest.approx(2 / 3)
    table = format_table(figures, 3)
    assert "well of 3" in table and "mixed: both reported" in table
    changed = changed_calls(wells)
    assert len(changed) == 2
    assert changed[0].startswith("better seed 1 mixed")
    assert changed[1].startswith("worse  seed 7 single")


@pytest.mark.skipif(not HAVE_MODEL, reason="models/hep2 is not built yet")
def test_a_well_is_scored_field_by_field_then_pooled() -> None:
    from appliance.assays.hep2.assay import Hep2Assay
    from appliance.config import Config, with_overrides

    case = next(c for c in well_cases(1, 2, 830_000) if c.spec.patterns
                and c.spec.patterns[0][0] == "centromere")
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        got = eval_hep2_wells.score_well(assay, case, 2, 0, assay.cfg.hep2.intensity)
    assert [f.seed for f in got.fields] == [case.spec.seed, case.spec.seed + 1]
    assert got.well.seed == case.spec.seed and got.well.kind == "single"
    assert got.well.cells == sum(f.cells for f in got.fields)
    assert got.well.called[:1] == ("centromere",)


def test_a_refused_calibration_stops_the_tool(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.assays.hep2.calibration import CalibrationError

    def refuse(_cfg: object) -> None:
        raise CalibrationError("field 2 measured 0 grey levels")

    monkeypatch.setattr(eval_hep2, "lab_calibrated", refuse)
    assert eval_hep2_wells.main(["--wells", "1", "--calibrate"]) == 2
    assert "refused: field 2 measured 0" in capsys.readouterr().err
