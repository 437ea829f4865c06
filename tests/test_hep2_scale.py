"""The HEp-2 field scale, estimated from the cells where nothing declares it."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.scale import PROVISIONAL_UM_PER_PX, estimate_scale
from appliance.capture.frame import Frame
from appliance.config import Config, Hep2CellsConfig, with_overrides
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

CFG = Hep2CellsConfig()


def _green(um: float, seed: int = 72_300) -> np.ndarray:
    f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=640, height=480, um_per_px=um,
                                          patterns=(("centromere", 1.0),), intensity=120.0))
    return f.image[..., 1].astype(np.float32)


@pytest.mark.parametrize("um", [0.3, 0.6])
def test_a_nuclear_field_is_estimated_within_40_percent(um: float) -> None:
    found = estimate_scale(_green(um), CFG)
    assert found.source == "estimated"
    assert found.um_per_px == pytest.approx(um, rel=0.4)
    assert "set the objective" in found.warnings[0]


def test_the_estimate_follows_the_objective() -> None:
    near, far = (estimate_scale(_green(um, seed=72_301), CFG).um_per_px for um in (0.3, 0.9))
    assert 2.2 < far / near < 3.8  # truly 3


def test_a_field_without_cells_gets_the_provisional_scale_and_says_so() -> None:
    blank = np.random.default_rng(0).normal(8.0, 1.0, (480, 640)).astype(np.float32)
    found = estimate_scale(blank, CFG)
    assert (found.source, found.um_per_px) == ("assumed", PROVISIONAL_UM_PER_PX)
    assert "too few cells" in found.warnings[0]


def test_the_assay_estimates_only_when_nothing_declares_the_scale() -> None:
    image = generate_hep2_field(Hep2FieldSpec(seed=72_302, width=640, height=480,
                                              um_per_px=0.45,
                                              patterns=(("homogeneous", 1.0),))).image
    frame = Frame(image=image, seq=1, timestamp=0.0, source="f")
    base = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(base) as assay:
        estimated = assay.score(frame)
    with Hep2Assay.from_config(with_overrides(base, {"optics.objective": "20x"})) as assay:
        declared = assay.score(frame)
    assert estimated.um_per_px_source == "estimated"
    assert any("set the objective" in w for w in estimated.warnings)
    assert declared.um_per_px_source == "objective"
    assert not any("scale estimated" in w for w in declared.warnings)
