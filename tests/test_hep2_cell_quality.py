"""The single-cell image's gates (cell_quality.py): what is not one FITC cell is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.cell_quality import (
    CellRefused,
    assumed_scale,
    cell_image_issues,
    whole_cells,
)
from appliance.config import Config, Hep2CellsConfig, with_overrides
from tools.synth.hep2_cell_folder import cell_images, cut_cell
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.synth.her2_fields import FieldSpec, generate_field

CFG = Hep2CellsConfig()
REPO = Path(__file__).resolve().parents[1]


def _grey_rgb(green: np.ndarray) -> np.ndarray:
    return np.repeat(green[..., None], 3, axis=2)


def _fatal(rgb: np.ndarray, um: float | None) -> list[str]:
    return [i.code for i in cell_image_issues(rgb, um, CFG) if i.fatal]


def _fitc_field(pattern: str = "homogeneous", seed: int = 996_101, um: float = 0.5,
                intensity: float = 120.0) -> np.ndarray:
    return generate_hep2_field(Hep2FieldSpec(seed=seed, width=480, height=360, um_per_px=um,
                                             patterns=((pattern, 1.0),),
                                             intensity=intensity)).image


def _fitc_cell(pattern: str = "homogeneous", um: float = 0.5) -> np.ndarray:
    """One whole cell of a generated field, cut with a 15% margin, in colour."""
    f = generate_hep2_field(Hep2FieldSpec(seed=996_102, width=480, height=360, um_per_px=um,
                                          patterns=((pattern, 1.0),), intensity=120.0))
    cell = next(c for c in f.cells if not c.touches_edge and not c.mitotic)
    ys, xs = np.nonzero(f.cell_labels == cell.cell_id)
    m = round(0.15 * (max(np.ptp(ys), np.ptp(xs)) + 1))
    return f.image[max(0, ys.min() - m):ys.max() + m + 1,
                   max(0, xs.min() - m):xs.max() + m + 1].copy()


@pytest.mark.parametrize("um", [None, 0.5])
def test_generated_cells_of_every_class_pass(um: float | None) -> None:
    # Grey (the public datasets' form) and at two scales, 10x included: none is refused,
    # a negative cell's faint light included.
    for scale in (0.35, 0.9):
        for name, stem, green, _ in cell_images(1, um_per_px=scale, first_seed=996_200):
            assert _fatal(_grey_rgb(green), scale if um else None) == [], (name, stem, scale)
    assert _fatal(_fitc_cell(), um) == []


@pytest.mark.parametrize("um", [None, 0.5])
def test_a_brightfield_crop_is_the_wrong_stain(um: float | None) -> None:
    her2 = generate_field(FieldSpec(seed=996_103, width=320, height=240, target_score="3+")).image
    for crop in (her2, her2[60:124, 60:124], her2[100:164, 150:214]):
        assert _fatal(np.ascontiguousarray(crop), um) == ["wrong_stain"]
    white = np.full((64, 64, 3), 250, np.uint8)
    issue = cell_image_issues(white, um, CFG)[0]
    assert issue.code == "wrong_stain" and "darkest 5%: R 250" in issue.reason


def test_a_black_or_even_image_holds_nothing_to_classify() -> None:
    for value in (0, 40):
        grey = np.full((64, 64, 3), value, np.uint8)
        issues = cell_image_issues(grey, None, CFG)
        assert [i.code for i in issues] == ["monochrome", "nothing_in_view"]
        assert issues[-1].fatal and "no light above the sensor noise" in issues[-1].reason


def test_a_clipped_cell_is_over_exposed() -> None:
    cell = _fitc_cell()
    assert _fatal(cell, 0.5) == []
    bright = np.clip(cell.astype(np.float32) * np.array([1.0, 8.0, 1.0]), 0, 255)
    assert _fatal(bright.astype(np.uint8), 0.5) == ["over_exposed"]


def test_a_field_is_not_one_cell() -> None:
    field = _fitc_field()
    assert whole_cells(field[..., 1], 0.5, CFG) > 20
    for um in (None, 0.5):
        issue = next(i for i in cell_image_issues(field, um, CFG) if i.fatal)
        assert issue.code == "not_single_cell" and "score it without --cell" in issue.reason
    # At the declared scale, a corner of a few cells is refused too (three whole cells or
    # more); one cell cut with a margin (bits of its neighbours at the border) is not.
    corner = np.ascontiguousarray(field[:200, :200])
    assert whole_cells(corner[..., 1], 0.5, CFG) >= 3
    assert _fatal(corner, 0.5) == ["not_single_cell"]
    # Without a scale a small image is not asked (a 40x cytoplasm's fragments would be
    # taken for cells): a 190 px corner reads as one cell.
    assert _fatal(np.ascontiguousarray(field[:190, :190]), None) == []
    f = generate_hep2_field(Hep2FieldSpec(seed=996_105, width=480, height=360, um_per_px=0.5,
                                          patterns=(("homogeneous", 1.0),), intensity=120.0))
    for one in [c for c in f.cells if not c.touches_edge and not c.mitotic][:5]:
        green, _ = cut_cell(f.image, f.cell_labels, one.cell_id, 0.15)
        assert whole_cells(green, 0.5, CFG) <= 1


def test_the_assumed_scale_is_that_of_one_cell_filling_the_image() -> None:
    assert assumed_scale((80, 40)) == pytest.approx(0.25)
    assert assumed_scale((3000, 4000)) == 0.1 and assumed_scale((4, 4)) == 2.0


def test_the_assay_and_the_cli_refuse_with_the_code(tmp_path: Path) -> None:
    from appliance.assays.hep2.assay import Hep2Assay

    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        with pytest.raises(CellRefused) as caught:
            assay.classify_cell_image(np.zeros((64, 64), np.uint8), "black.png")
        assert caught.value.code == "nothing_in_view"
        call = assay.classify_cell_image(_fitc_cell(), "cell.png")
        assert call.pattern == "homogeneous"
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(_fitc_field(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "cell.png"), cv2.cvtColor(_fitc_cell(), cv2.COLOR_RGB2BGR))
    proc = subprocess.run([sys.executable, "-m", "appliance", "score", "--assay", "hep2",
                           "--cell", "--json", "--no-store", str(tmp_path / "cell.png"),
                           str(tmp_path / "field.png")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr  # one of two read
    docs = {Path(d["file"]).name: d for d in map(json.loads, proc.stdout.splitlines())}
    assert docs["cell.png"]["pattern"] == "homogeneous"
    assert docs["field.png"]["reason_code"] == "not_single_cell"
    assert "whole cells" in docs["field.png"]["error"]
