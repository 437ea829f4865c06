"""The HER2 assay on whole fields: scales, sizes, quality refusals, a real IHC photo."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from tools.synth.her2_fields import FieldSpec, generate_field


@pytest.fixture(scope="module")
def assay() -> Iterator[Her2Assay]:
    with Her2Assay.from_config(Config()) as a:
        yield a


def frame(image: np.ndarray, um: float | None = None) -> Frame:
    return Frame(image=image, seq=1, timestamp=0.0, source="test", um_per_px=um)


@pytest.mark.parametrize("um", [0.25, 0.5, 1.0])
def test_every_objective_scores_the_truth(assay: Her2Assay, um: float) -> None:
    for seed, score in ((991_000, "3+"), (991_001, "1+")):
        field = generate_field(FieldSpec(seed=seed, um_per_px=um, target_score=score))
        result = assay.score(frame(field.image, um))
        assert result.scored, result.reason
        assert result.score is not None and result.score.value == field.score
        assert result.um_per_px_source == "frame"


def test_large_still_is_tiled_and_scored(assay: Her2Assay) -> None:
    field = generate_field(FieldSpec(seed=991_010, width=2600, height=1900, um_per_px=0.4,
                                     target_score="3+"))
    result = assay.score(frame(field.image, 0.4))
    assert result.scored and result.score is not None and result.score.value == "3+"
    xs = [c.x for c in result.cells]
    assert max(xs) > 2000  # cells found across the whole picture, not just one tile


def test_cells_are_in_source_coordinates(assay: Her2Assay) -> None:
    field = generate_field(FieldSpec(seed=991_020, um_per_px=0.25, target_score="2+"))
    result = assay.score(frame(field.image, 0.25))
    h, w = field.image.shape[:2]
    assert result.cells
    for c in result.cells:
        assert 0 <= c.x < w and 0 <= c.y < h
    inside = np.mean([field.nucleus_labels[int(c.y), int(c.x)] > 0 for c in result.cells])
    assert inside > 0.8


@pytest.mark.parametrize(("spec", "code"), [
    (FieldSpec(seed=991_030, tissue="empty"), "no_tissue"),
    (FieldSpec(seed=991_031, target_score="3+", defocus_um=6.0), "out_of_focus"),
])
def test_quality_refusals(assay: Her2Assay, spec: FieldSpec, code: str) -> None:
    field = generate_field(spec)
    result = assay.score(frame(field.image, field.um_per_px))
    assert result.status == "not_scorable"
    assert result.reason_code == code, result.reason
    assert result.reason


def test_real_ihc_photo_gives_a_clear_refusal(assay: Her2Assay) -> None:
    # skimage's photo is real H-DAB IHC but not HER2: its DAB fills the cytoplasm. Scoring
    # membranes there would be meaningless; the box must say why it will not.
    from skimage.data import immunohistochemistry

    image = np.ascontiguousarray(immunohistochemistry())
    result = assay.score(frame(image))
    assert result.um_per_px_source == "estimated"
    assert result.status == "not_scorable"
    assert result.reason_code == "cytoplasmic_stain", result.reason
    assert result.reason is not None and "cytoplasmic" in result.reason


def test_cytoplasm_gate_is_what_refuses_the_photo() -> None:
    from skimage.data import immunohistochemistry

    cfg = with_overrides(Config(), {"her2.quality.max_cytoplasm_dab": 5.0})
    with Her2Assay.from_config(cfg) as lenient:
        result = lenient.score(frame(np.ascontiguousarray(immunohistochemistry())))
    assert result.reason_code != "cytoplasmic_stain"
    if result.scored:
        assert sum(result.percent.values()) == pytest.approx(100.0, abs=0.1)


def test_a_bug_in_one_field_becomes_its_refusal(assay: Her2Assay,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(rgb: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    field = generate_field(FieldSpec(seed=991_040, target_score="2+"))
    monkeypatch.setattr(assay, "_infer", broken)
    result = assay.score_guarded(frame(field.image, field.um_per_px))
    assert result.status == "not_scorable"
    assert result.reason_code == "internal_error"
    assert result.reason is not None and "model exploded" in result.reason


def test_a_wrong_objective_setting_is_questioned(assay: Her2Assay) -> None:
    field = generate_field(FieldSpec(seed=991_050, um_per_px=0.3, target_score="2+"))
    right = assay.score(frame(field.image, 0.3))
    assert not any("disagrees" in w for w in right.warnings), right.warnings
    wrong = assay.score(frame(field.image, 1.0))  # the 10x setting on a 40x picture
    assert any("disagrees with the nuclear size" in w for w in wrong.warnings), wrong.warnings
    odd = assay.score(frame(field.image, 3.0))
    assert any("outside the 10x-40x range" in w for w in odd.warnings), odd.warnings
