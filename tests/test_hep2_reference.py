"""The generated reference wells and the lab-style calibration the eval can run on them."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from appliance.assays.hep2.calibration import CalibrationError
from appliance.config import Config, with_overrides
from tools import eval_hep2, hep2_reference
from tools.hep2_dataset import CALIBRATION_SEEDS, COMPOUND_SEEDS, TRAIN_SEEDS, VAL_SEEDS
from tools.hep2_reference import (
    REFERENCE_SCALES,
    REFERENCE_UNITS,
    calibrate_on_reference,
    measure_reference,
    reference_specs,
)

HAVE_MODEL = (Path(__file__).resolve().parents[1] / "models" / "hep2" / "manifest.json").exists()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="models/hep2 is not built yet")


def test_reference_wells_are_the_cut_off_serum_on_seeds_of_their_own() -> None:
    specs = reference_specs()
    assert len(specs) == len(REFERENCE_SCALES) * hep2_reference.FIELDS_PER_WELL
    seeds = [s.seed for s in specs]
    assert len(set(seeds)) == len(seeds)
    others = [TRAIN_SEEDS, VAL_SEEDS, CALIBRATION_SEEDS, COMPOUND_SEEDS,
              range(eval_hep2.FIRST_SEED, eval_hep2.FIRST_SEED + 100_000)]
    assert not any(set(r) & set(seeds) for r in others)
    assert {s.intensity for s in specs} == {REFERENCE_UNITS}
    assert {s.patterns for s in specs} == {(("homogeneous", 1.0),)}
    # A well's fields share its microscope and camera; each well is one objective.
    wells: dict[int | None, set[float | None]] = {}
    for s in specs:
        wells.setdefault(s.camera_seed, set()).add(s.um_per_px)
    assert len(wells) == len(REFERENCE_SCALES)
    assert sorted(next(iter(v)) or 0.0 for v in wells.values()) == sorted(REFERENCE_SCALES)


@needs_model
def test_the_calibration_follows_the_exposure_of_the_reference() -> None:
    """Twice the exposure reads twice the grey: half the units per grey, on the same fields."""
    from appliance.assays.hep2.assay import Hep2Assay

    specs = reference_specs(fields_per_well=1)  # 3 fields: the calibration's minimum
    cfg = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(cfg) as assay:
        once, fields = calibrate_on_reference(assay, specs)
        twice, _ = calibrate_on_reference(assay, [replace(s, exposure=2.0) for s in specs])
    assert [f.seed for f in fields] == [s.seed for s in specs]
    # Bleaching (0-30%) and the measurement keep a field near, not at, its drawn 20 units.
    assert 0.8 < once.units_per_grey < 1.6
    assert twice.units_per_grey == pytest.approx(once.units_per_grey / 2, rel=0.05)


@needs_model
def test_a_reference_field_the_assay_refuses_stops_the_calibration() -> None:
    from appliance.assays.hep2.assay import Hep2Assay

    blurred = replace(reference_specs(fields_per_well=1)[1], defocus_um=6.0)
    cfg = with_overrides(Config(), {"assay": "hep2"})
    with (Hep2Assay.from_config(cfg) as assay,
          pytest.raises(CalibrationError, match=f"reference seed {blurred.seed}")):
        measure_reference(assay, [blurred])


@needs_model
def test_the_eval_runs_calibrated_with_what_the_reference_gave(
        monkeypatch: pytest.MonkeyPatch) -> None:
    small = reference_specs(fields_per_well=1)
    monkeypatch.setattr(eval_hep2, "calibrate_on_reference",
                        partial(calibrate_on_reference, specs=small))
    # The box's configured calibration is undone before measuring the reference.
    base = with_overrides(Config(), {"assay": "hep2", "hep2.intensity.units_per_grey": 3.0})
    cfg, summary = eval_hep2.lab_calibrated(base)
    assert cfg.hep2.intensity.units_per_grey == summary["units_per_grey"]
    assert 0.8 < cfg.hep2.intensity.units_per_grey < 1.6
    fields = summary["fields"]
    assert isinstance(fields, list)
    assert [f["seed"] for f in fields] == [s.seed for s in small]
