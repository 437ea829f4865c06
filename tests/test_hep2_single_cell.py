"""Single-cell images (the ICPR 2014 / I3A form): how the box cuts them, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.cell_files import companion_mask, is_mask_file
from appliance.assays.hep2.crops import crops_for
from appliance.assays.hep2.scale import ASSUMED_CELL_DIAMETER_UM
from appliance.assays.hep2.single_cell import (
    scale_from_mask,
    segmented_mask,
    single_cell_crop,
    threshold_mask,
)
from appliance.config import Hep2CellsConfig
from tools.synth.hep2_cell_folder import cut_cell
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

CFG = Hep2CellsConfig()
REPO = Path(__file__).resolve().parents[1]


def _field(pattern: str = "centromere", seed: int = 72_001, um: float = 0.4) -> Hep2Field:
    return generate_hep2_field(Hep2FieldSpec(seed=seed, width=480, height=360, um_per_px=um,
                                             patterns=((pattern, 1.0),), intensity=120.0))


def _cut(f: Hep2Field, margin: float = 0.15) -> tuple[np.ndarray, np.ndarray, int]:
    """A whole interphase cell cut as the public datasets cut them: its bounding box and a
    margin. (green, the cell's truth mask in the cut, the cell's id)."""
    cell = next(c for c in f.cells if not c.touches_edge and not c.mitotic
                and 20 < c.x < f.image.shape[1] - 20 and 20 < c.y < f.image.shape[0] - 20)
    green, mask = cut_cell(f.image, f.cell_labels, cell.cell_id, margin)
    return green.astype(np.float32), mask, cell.cell_id


def test_the_method_follows_what_is_known() -> None:
    green, mask, _ = _cut(_field())
    declared = single_cell_crop(green, CFG, um_per_px=0.4, scale_source="objective")
    assert (declared.um_per_px, declared.scale_source, declared.mask_source) == (
        0.4, "objective", "segmented")
    assert declared.warnings == ()
    masked = single_cell_crop(green, CFG, mask=mask)
    assert masked.scale_source == "mask" and masked.mask_source == "file"
    assert masked.um_per_px == pytest.approx(scale_from_mask(mask))
    assert "scale from the mask" in masked.warnings[0]
    neither = single_cell_crop(green, CFG)
    assert (neither.um_per_px, neither.scale_source, neither.mask_source) == (
        None, "unknown", "threshold")
    assert "scale unknown" in neither.warnings[0]
    for cut in (declared, masked, neither):
        assert cut.crop.shape == (2, CFG.crop_px, CFG.crop_px) and cut.crop.dtype == np.float32
        assert cut.crop[0].min() >= 0.0 and cut.crop[0].max() <= 1.5
        assert 0.02 < cut.crop[1].mean() < 0.9


def test_with_the_scale_a_cut_cell_is_cropped_as_in_its_field() -> None:
    """The point of the declared scale: the classifier sees the crop it was trained on."""
    f = _field("fine_speckled", seed=72_002, um=0.35)
    green, mask, cell_id = _cut(f)
    field_crops, ids = crops_for(f.image[..., 1].astype(np.float32),
                                 np.where(f.cell_labels == cell_id, cell_id, 0),
                                 f.um_per_px, CFG)
    in_field = field_crops[list(ids).index(cell_id)]
    cut = single_cell_crop(green, CFG, um_per_px=f.um_per_px, mask=mask).crop
    inter = np.logical_and(cut[1] > 0, in_field[1] > 0).sum()
    union = np.logical_or(cut[1] > 0, in_field[1] > 0).sum()
    assert inter / union > 0.9
    inside = in_field[1] > 0
    assert np.corrcoef(cut[0][inside], in_field[0][inside])[0, 1] > 0.9


def test_segmentation_takes_the_cell_under_the_centre() -> None:
    green = np.full((90, 160), 10.0, np.float32)
    cv2.circle(green, (40, 45), 22, 200.0, -1)  # a brighter, larger neighbour at the side
    cv2.circle(green, (80, 45), 16, 120.0, -1)  # the cell the image is centred on
    mask = segmented_mask(green, 0.5, CFG)
    assert mask is not None and mask[45, 80] and not mask[45, 40]
    assert segmented_mask(np.full((60, 60), 10.0, np.float32), 0.5, CFG) is None


def test_scale_from_the_mask_assumes_the_cell_diameter() -> None:
    mask = np.zeros((100, 100), bool)
    cv2.circle(mask.view(np.uint8), (50, 50), 25, 1, -1)
    diameter_px = np.sqrt(4.0 * mask.sum() / np.pi)
    assert scale_from_mask(mask) == pytest.approx(ASSUMED_CELL_DIAMETER_UM / diameter_px)
    assert scale_from_mask(np.eye(10, dtype=bool)[:3]) is None  # 3 pixels: no scale


def test_bad_inputs_are_named() -> None:
    green = np.full((40, 40), 30.0, np.float32)
    with pytest.raises(ValueError, match="the mask is 20x20 px, the image 40x40"):
        single_cell_crop(green, CFG, mask=np.ones((20, 20), bool))
    with pytest.raises(ValueError, match="um_per_px"):
        single_cell_crop(green, CFG, um_per_px=0.0)
    with pytest.raises(ValueError, match="expected an"):
        single_cell_crop(np.zeros((4, 4, 3), np.float32), CFG)
    empty = single_cell_crop(green, CFG, mask=np.zeros((40, 40), bool))
    assert empty.mask_source == "threshold" and "marks no pixel" in empty.warnings[0]
    assert threshold_mask(green).all()  # flat: the whole image is the cell
    # Nothing segmented at a declared scale: the part above the background, said so.
    blank = single_cell_crop(green, CFG, um_per_px=0.5)
    assert blank.mask_source == "threshold" and "found no cell" in blank.warnings[0]


def test_companion_mask_files(tmp_path: Path) -> None:
    (tmp_path / "0042.png").write_bytes(b"")
    (tmp_path / "0042_Mask.tif").write_bytes(b"")
    (tmp_path / "0043.png").write_bytes(b"")
    assert companion_mask(tmp_path / "0042.png") == tmp_path / "0042_Mask.tif"
    assert companion_mask(tmp_path / "0043.png") is None
    assert is_mask_file(tmp_path / "0042_Mask.tif") and not is_mask_file(tmp_path / "0042.png")
    assert not is_mask_file(tmp_path / "notes_mask.txt")


def _write_grey(path: Path, grey: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.clip(grey, 0, 255).astype(np.uint8))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "score", "--assay", "hep2",
                           "--cell", "--json", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=120, check=False)


def test_the_cli_uses_masks_and_the_scale_and_refuses_a_wrong_mask(tmp_path: Path) -> None:
    green, mask, _ = _cut(_field("homogeneous", seed=72_003))
    _write_grey(tmp_path / "a.png", green)
    _write_grey(tmp_path / "a_mask.png", mask * 255.0)
    _write_grey(tmp_path / "b.png", green)
    _write_grey(tmp_path / "c.png", green)
    _write_grey(tmp_path / "c_mask.png", np.full((20, 30), 255.0))
    proc = _cli(*(str(p) for p in sorted(tmp_path.glob("*.png"))))
    assert proc.returncode == 0, proc.stderr
    assert "a_mask.png: a companion mask" in proc.stderr  # skipped, and said so
    docs = {Path(d["file"]).name: d for d in map(json.loads, proc.stdout.splitlines())}
    assert set(docs) == {"a.png", "b.png", "c.png"}
    assert (docs["a.png"]["mask"], docs["a.png"]["um_per_px_source"]) == ("file", "mask")
    assert docs["a.png"]["um_per_px"] > 0
    assert (docs["b.png"]["mask"], docs["b.png"]["um_per_px"]) == ("threshold", None)
    assert any("scale unknown" in w for w in docs["b.png"]["warnings"])
    assert docs["c.png"]["reason_code"] == "mask_mismatch"
    assert "c_mask.png is 30x20 px" in docs["c.png"]["error"]
    scaled = _cli("--um-per-px", "0.4", str(tmp_path / "b.png"))
    assert scaled.returncode == 0, scaled.stderr
    doc = json.loads(scaled.stdout)
    assert (doc["um_per_px"], doc["um_per_px_source"], doc["mask"]) == (0.4, "config",
                                                                        "segmented")
    # A grey image: only that its colour (the fluorochrome) could not be checked.
    assert [w[:16] for w in doc["warnings"]] == ["monochrome image"]
    only_masks = _cli(str(tmp_path / "a_mask.png"))
    assert only_masks.returncode != 0 and "companion mask" in only_masks.stderr
