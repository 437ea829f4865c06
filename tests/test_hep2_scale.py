"""The HEp-2 field scale, estimated from the cells where nothing declares it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.scale import (
    PROVISIONAL_UM_PER_PX,
    core_ratios,
    estimate_scale,
    object_diameter_um,
)
from appliance.assays.hep2.segmentation import segment_cells
from appliance.capture.frame import Frame
from appliance.config import Config, Hep2CellsConfig, with_overrides
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

CFG = Hep2CellsConfig()


def _green(um: float, seed: int = 72_300, pattern: str = "centromere") -> np.ndarray:
    f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=640, height=480, um_per_px=um,
                                          patterns=((pattern, 1.0),), intensity=120.0))
    return f.image[..., 1].astype(np.float32)


@pytest.mark.parametrize("um", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("pattern", ["centromere", "homogeneous"])
def test_nuclear_fields_are_estimated_within_a_quarter(um: float, pattern: str) -> None:
    found = estimate_scale(_green(um, pattern=pattern), CFG)
    assert found.source == "estimated"
    assert found.um_per_px == pytest.approx(um, rel=0.25)
    assert "set the objective" in found.warnings[0]


def test_a_cytoplasmic_field_is_read_as_whole_cells() -> None:
    """Its objects are whole cells, not nuclei: taken for nuclei it would read a third off."""
    green = _green(0.6, pattern="cyto_reticular")
    cells = segment_cells(green, 0.6, CFG)
    cyto = float(np.median(core_ratios(green, cells, 0.6)))
    nuclear_green = _green(0.6, pattern="homogeneous")
    nuclear = float(np.median(core_ratios(
        nuclear_green, segment_cells(nuclear_green, 0.6, CFG), 0.6)))
    assert cyto < 0.8 < nuclear
    assert estimate_scale(green, CFG).um_per_px == pytest.approx(0.6, rel=0.25)


def test_core_ratio_of_a_disc_and_a_ring() -> None:
    green = np.full((200, 300), 10.0, np.float32)
    cv2.circle(green, (80, 100), 30, 150.0, -1)  # a stained nucleus
    cv2.circle(green, (210, 100), 40, 150.0, -1)  # a stained cytoplasm ...
    cv2.circle(green, (210, 100), 22, 12.0, -1)  # ... around a dark nucleus
    cells = segment_cells(green, 0.5, CFG)
    ratios = core_ratios(green, cells, 0.5)
    by_x = dict(zip(np.round(cells.centroids[:, 0], -1), ratios, strict=True))
    assert by_x[80.0] > 0.9 and by_x[210.0] < 0.3


def test_object_diameter_runs_from_whole_cells_to_nuclei() -> None:
    assert object_diameter_um(0.0) == object_diameter_um(0.3) == pytest.approx(25.7, abs=0.1)
    assert object_diameter_um(2.0) == object_diameter_um(1.0) == pytest.approx(17.4, abs=0.1)
    assert object_diameter_um(0.5) > object_diameter_um(0.8)


def test_the_estimate_follows_the_objective() -> None:
    near, far = (estimate_scale(_green(um, seed=72_301), CFG).um_per_px for um in (0.3, 0.9))
    assert 2.4 < far / near < 3.6  # truly 3


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
