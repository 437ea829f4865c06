"""The refocus probe: a user's soft pause then a sharp view, through the live report rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.types import Hep2Result
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
    played = probe.play([("soft", soft), ("sharp", sharp)], score, CFG,
                        np.random.default_rng(0), assay, 0.5)
    assert [(name, why) for name, why, _ in played.reports] == [("soft", "new field"),
                                                                ("sharp", "sharper")]
    assert played.focus["sharp"] > 1.1 * played.focus["soft"]
    assert set(score) == {"soft", "sharp"}  # each picture scored once
    # The wrong way (sharp, then soft): one report.
    back = probe.play([("sharp", sharp), ("soft", soft)], score, CFG,
                      np.random.default_rng(1), assay, 0.5)
    assert [(name, why) for name, why, _ in back.reports] == [("sharp", "new field")]


def test_the_chart_draws_missing_figures_as_gaps(tmp_path: Path) -> None:
    rows = [{"defocus_um": d, "soft_reported_scored": s, "replaced_when_sharp": r,
             "pattern_right_first_report": a, "pattern_right_stored": b}
            for d, s, r, a, b in ((0.5, 1.0, 0.2, 0.9, 0.95), (3.0, 0.0, None, None, None))]
    out = tmp_path / "refocus.png"
    probe.plot(rows, out)
    assert out.stat().st_size > 1000


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        probe.main(["--specimens", "0"])
    with pytest.raises(SystemExit):
        probe.main(["--defocus", "a,b"])
