"""Normalised HEp-2 cell crops: geometry independent of the objective, normalisation, borders."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.assays.hep2.crops import CLIP_MAX, cell_crop, crops_for
from appliance.config import Hep2CellsConfig

CFG = Hep2CellsConfig()
# A cell described at the specimen (µm): nucleus radius and a few bright speckles.
RADIUS_UM = 7.0
SPECKLES_UM = ((-3.0, -2.0), (2.5, -3.5), (1.0, 3.0), (-2.0, 3.5), (4.0, 1.0))


def draw_cell(um_per_px: float, centre_um: tuple[float, float], size_px: tuple[int, int],
              *, gain: float = 100.0, background: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A speckled round cell rendered at ``um_per_px``: (green, mask)."""
    h, w = size_px
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x_um = (xx + 0.5) * um_per_px - centre_um[0]
    y_um = (yy + 0.5) * um_per_px - centre_um[1]
    r2 = x_um**2 + y_um**2
    mask = r2 <= RADIUS_UM**2
    signal = 0.3 * mask.astype(np.float64)
    for sx, sy in SPECKLES_UM:
        signal += np.exp(-((x_um - sx) ** 2 + (y_um - sy) ** 2) / (2 * 1.0**2)) * mask
    green = (background + gain * signal).astype(np.float32)
    return green, mask


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_crop_shape_and_dtype() -> None:
    green, mask = draw_cell(0.5, (40.0, 30.0), (120, 160))
    crop = cell_crop(green, mask, centroid(mask), 0.5, CFG)
    assert crop.shape == (2, CFG.crop_px, CFG.crop_px)
    assert crop.dtype == np.float32


def test_crop_does_not_depend_on_the_objective() -> None:
    g40, m40 = draw_cell(0.25, (40.0, 30.0), (240, 320))  # 40x
    g20, m20 = draw_cell(0.5, (40.0, 30.0), (120, 160))  # 20x: the same cell, half the pixels
    c40 = cell_crop(g40, m40, centroid(m40), 0.25, CFG)
    c20 = cell_crop(g20, m20, centroid(m20), 0.5, CFG)
    assert np.abs(c40[0] - c20[0]).mean() < 0.03
    assert np.corrcoef(c40[0].ravel(), c20[0].ravel())[0, 1] > 0.97
    # The masks agree except along the rim.
    assert np.mean(c40[1] != c20[1]) < 0.03
    # The cell spans 14 µm of the 32 µm crop, i.e. ~28 of 64 px, whatever the objective.
    cols = np.nonzero(c20[1].any(axis=0))[0]
    assert 26 <= cols.max() - cols.min() + 1 <= 30


def test_crop_is_centred_on_the_cell() -> None:
    green, mask = draw_cell(0.5, (37.3, 28.9), (120, 160))
    crop = cell_crop(green, mask, centroid(mask), 0.5, CFG)
    ys, xs = np.nonzero(crop[1])
    centre = (CFG.crop_px - 1) / 2
    assert abs(xs.mean() - centre) < 0.6
    assert abs(ys.mean() - centre) < 0.6


def test_normalisation_removes_intensity_and_background() -> None:
    dim_g, mask = draw_cell(0.5, (40.0, 30.0), (120, 160), gain=40.0, background=5.0)
    bright_g, _ = draw_cell(0.5, (40.0, 30.0), (120, 160), gain=180.0, background=30.0)
    dim = cell_crop(dim_g, mask, centroid(mask), 0.5, CFG)
    bright = cell_crop(bright_g, mask, centroid(mask), 0.5, CFG)
    np.testing.assert_allclose(dim[0], bright[0], atol=0.02)
    inside = bright[1] > 0
    # Divided by the cell's own 99th percentile: the brightest 1% sits around 1.
    assert 0.85 < np.percentile(bright[0][inside], 99) < 1.15
    assert bright[0].min() >= 0.0 and bright[0].max() <= CLIP_MAX
    # The background around the cell is subtracted away.
    assert np.abs(bright[0][~inside]).mean() < 0.02


def test_hot_pixels_are_clipped() -> None:
    green, mask = draw_cell(0.5, (40.0, 30.0), (120, 160))
    cy, cx = (int(v) for v in np.argwhere(mask)[0])
    green[cy, cx] = 1e5  # one saturated speck far above the cell's 99th percentile
    crop = cell_crop(green, mask, centroid(mask), 0.5, CFG)
    assert crop[0].max() <= CLIP_MAX


def test_zero_padding_at_the_image_border() -> None:
    # The cell sits in the top-left corner: most of the 32 µm crop lies outside the image.
    green, mask = draw_cell(0.5, (7.5, 7.5), (60, 80), background=20.0)
    crop = cell_crop(green, mask, centroid(mask), 0.5, CFG)
    # The image starts ~8 µm left/up of the cell centre, i.e. ~16 crop px from the middle.
    outside = crop[:, :10, :]
    assert np.all(outside == 0.0)
    assert np.all(crop[:, :, :10] == 0.0)
    assert crop[1].sum() > 100  # the cell itself is there


def test_crops_for_every_labelled_cell() -> None:
    g1, m1 = draw_cell(0.5, (20.0, 20.0), (120, 200))
    g2, m2 = draw_cell(0.5, (70.0, 35.0), (120, 200), gain=200.0)
    green = np.maximum(g1, g2)
    labels = np.zeros(green.shape, np.int32)
    labels[m1] = 7
    labels[m2] = 3
    crops, ids = crops_for(green, labels, 0.5, CFG)
    assert ids.tolist() == [3, 7]
    assert crops.shape == (2, 2, CFG.crop_px, CFG.crop_px)
    single = cell_crop(green, m2, centroid(m2), 0.5, CFG)
    np.testing.assert_allclose(crops[0], single, atol=0.02)
    # Same pattern, different brightness: the same crop once normalised.
    np.testing.assert_allclose(crops[0][0], crops[1][0], atol=0.03)


def test_crops_for_no_cells() -> None:
    crops, ids = crops_for(np.zeros((50, 60), np.float32), np.zeros((50, 60), np.int32), 0.5,
                           CFG)
    assert crops.shape == (0, 2, CFG.crop_px, CFG.crop_px)
    assert ids.shape == (0,)


@pytest.mark.parametrize(("mask_shape", "um", "match"), [
    ((50, 60), 0.5, "empty"), ((40, 60), 0.5, "shape"), ((50, 60), 0.0, "um_per_px"),
])
def test_bad_input_is_refused(mask_shape: tuple[int, int], um: float, match: str) -> None:
    green = np.zeros((50, 60), np.float32)
    with pytest.raises(ValueError, match=match):
        cell_crop(green, np.zeros(mask_shape, bool), (30.0, 25.0), um, CFG)


def test_crops_of_a_generated_field() -> None:
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    field = generate_hep2_field(Hep2FieldSpec(seed=11, width=240, height=180, um_per_px=0.5,
                                              patterns=(("centromere", 1.0),)))
    crops, ids = crops_for(field.image[..., 1].astype(np.float32), field.cell_labels,
                           field.um_per_px, CFG)
    assert sorted(ids.tolist()) == sorted(c.cell_id for c in field.cells)
    whole = [i for i, cid in enumerate(ids)
             if not next(c for c in field.cells if c.cell_id == cid).touches_edge]
    assert whole
    for i in whole:
        inside = crops[i, 1] > 0
        # Each crop is normalised on its own cell, bright or dim.
        assert 0.8 < np.percentile(crops[i, 0][inside], 99) < 1.2
        assert crops[i, 1, 30:34, 30:34].all()  # the meant cell sits in the middle
