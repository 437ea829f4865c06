"""HEp-2 segmentation and intensity: drawn fields with known cells, then generated IIF fields."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.intensity import (
    background_map,
    cell_brightness,
    field_brightness,
    intensity_level,
    specimen_intensity,
    to_units,
)
from appliance.assays.hep2.segmentation import (
    _flood_from_markers,
    clump_limit,
    fill_holes,
    segment_cells,
    split_clumps,
    split_touching,
)
from appliance.config import Hep2CellsConfig, Hep2IntensityConfig
from tools.hep2_dataset import match_cells
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

CELLS = Hep2CellsConfig()
LEVELS = Hep2IntensityConfig()
UM_PER_PX = 0.5  # a 14 µm nucleus is 28 px across


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``img`` plus white Gaussian sensor noise."""
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0.0, sigma, img.shape)).astype(np.float32)


def _disc_field(centres: list[tuple[int, int]], radius: int, level: float,
                background: float = 8.0, shape: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A dark field with bright uniform discs (no noise)."""
    img = np.full(shape, background, np.float32)
    for x, y in centres:
        cv2.circle(img, (x, y), radius, float(background + level), -1)
    return img


# ---------------------------------------------------------------- segmentation, drawn


def test_two_touching_discs_are_split_near_the_neck() -> None:
    img = _noisy(_disc_field([(200, 200), (256, 200)], 30, 90.0), 2.0, 1)
    cells = segment_cells(img, UM_PER_PX, CELLS)
    assert cells.count == 2
    xs = sorted(cells.centroids[:, 0])
    assert xs[0] == pytest.approx(200, abs=6) and xs[1] == pytest.approx(256, abs=6)
    # The halves are alike, each about one disc grown by the generous margin (~6 px).
    assert cells.areas_px.min() > 0.9 * cells.areas_px.max()
    assert np.all((cells.areas_px > np.pi * 30**2) & (cells.areas_px < np.pi * 38**2))


def test_separate_cells_of_different_strength_are_all_found() -> None:
    # Cells of one specimen differ in brightness, by a factor of a few at most.
    centres = [(100, 100), (300, 120), (500, 100), (150, 350), (450, 360)]
    img = _disc_field(centres, 25, 0.0)
    for (x, y), level in zip(centres, (30.0, 45.0, 60.0, 90.0, 120.0), strict=True):
        cv2.circle(img, (x, y), 25, 8.0 + level, -1)
    cells = segment_cells(_noisy(np.clip(img, 0, 255), 1.0, 2), UM_PER_PX, CELLS)
    assert cells.count == len(centres)
    found = {(round(x / 50), round(y / 50)) for x, y in cells.centroids}
    assert found == {(round(x / 50), round(y / 50)) for x, y in centres}


def test_ring_cell_with_a_dark_nucleus_is_one_filled_cell() -> None:
    # A cytoplasmic pattern: stained cytoplasm around an unstained nucleus.
    img = _disc_field([(320, 240)], 35, 60.0)
    cv2.circle(img, (320, 240), 15, 8.0, -1)
    cells = segment_cells(_noisy(img, 2.0, 3), UM_PER_PX, CELLS)
    assert cells.count == 1
    assert np.pi * 35**2 < cells.areas_px[0] < np.pi * 44**2  # filled, plus the margin


@pytest.mark.parametrize("value", [0.0, 5.0, 128.0, 255.0])
def test_flat_fields_have_no_cells(value: float) -> None:
    img = np.full((480, 640), value, np.float32)
    cells = segment_cells(img, UM_PER_PX, CELLS)
    assert cells.count == 0
    assert cells.labels.shape == img.shape and not cells.labels.any()
    assert cells.background == pytest.approx(value, abs=1.0)


def test_blank_noisy_field_has_no_cells() -> None:
    img = _noisy(np.full((480, 640), 6.0, np.float32), 3.0, 4)
    assert segment_cells(img, UM_PER_PX, CELLS).count == 0


def test_area_limits_drop_debris_and_clumps() -> None:
    img = _disc_field([(100, 100), (400, 250)], 4, 80.0)  # 50 px = 12.6 µm²: debris
    cv2.circle(img, (300, 300), 25, 88.0, -1)
    cells = segment_cells(_noisy(img, 1.0, 5), UM_PER_PX, CELLS)
    assert cells.count == 1
    tight = Hep2CellsConfig(max_area_um2=100.0)  # the 25 px disc is 491 µm²
    assert segment_cells(_noisy(img, 1.0, 5), UM_PER_PX, tight).count == 0


def test_edge_cells_are_flagged() -> None:
    img = _disc_field([(10, 240), (320, 240)], 25, 80.0)
    cells = segment_cells(_noisy(img, 1.0, 6), UM_PER_PX, CELLS)
    assert cells.count == 2
    by_x = np.argsort(cells.centroids[:, 0])
    assert list(cells.touches_edge[by_x]) == [True, False]
    x, y, w, h = cells.bboxes[by_x[1]]
    # The mask is generous by design: about 6 px beyond the drawn 51 px disc on each side.
    assert (x, y) == pytest.approx((289, 209), abs=3) and (w, h) == pytest.approx((63, 63), abs=4)


def test_uneven_illumination_does_not_make_cells() -> None:
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    vignette = 4.0 + 20.0 * np.exp(-((xx - 320) ** 2 + (yy - 240) ** 2) / (2 * 300.0**2))
    bg = background_map(_noisy(vignette, 2.0, 7), UM_PER_PX, CELLS)
    assert np.abs(bg - vignette).max() < 3.0
    assert segment_cells(_noisy(vignette, 2.0, 7), UM_PER_PX, CELLS).count == 0


def test_split_and_fill_helpers() -> None:
    assert split_touching(np.zeros((50, 50), bool), 10.0).max() == 0
    # No background pixel at all (OpenCV's distances are then FLT_MAX): one object, and
    # no endless flood (it hung on an 8x8 noise image set on its own margin).
    whole = split_touching(np.ones((24, 24), bool), 10.0)
    assert whole.min() == whole.max() == 1
    noise = np.random.default_rng(996_300).integers(0, 200, (8, 8)).astype(np.float32)
    canvas = np.pad(noise, 8, constant_values=float(np.percentile(noise, 5.0)))
    segment_cells(canvas, 0.3, CELLS)  # returns
    ring = np.zeros((60, 60), np.uint8)
    cv2.circle(ring, (30, 30), 20, 1, 4)
    assert fill_holes(ring.astype(bool))[30, 30]


def _plain_flood(markers: np.ndarray, dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The flood as its docstring defines it, in plain numpy (what the OpenCV one sped up)."""
    grown = markers.astype(np.float64)
    free = mask & (markers == 0)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    level, step = float(dist.max()), 0
    while True:
        reached = cv2.dilate(grown, cross if step % 2 else np.ones((3, 3), np.uint8))
        new = free & (reached > 0) & (dist >= level)
        if not new.any() and level <= 0:
            return grown.astype(np.int32)
        grown[new] = reached[new]
        free &= ~new
        level, step = level - 0.5, step + 1


@pytest.mark.parametrize("label_offset", [0, 70_000])  # 16-bit labels, and too many for them
def test_the_flood_claims_what_the_plain_definition_claims(label_offset: int) -> None:
    field = generate_hep2_field(Hep2FieldSpec(seed=996_700, width=480, height=360,
                                              um_per_px=0.5, density=0.45,
                                              patterns=(("homogeneous", 1.0),)))
    mask = fill_holes(segment_cells(field.image[..., 1].astype(np.float32), 0.5,
                                    CELLS).labels > 0)
    dist = cv2.GaussianBlur(cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5),
                            (0, 0), 2.0)
    peaks = (dist >= cv2.dilate(dist, np.ones((9, 9), np.uint8))) & (dist >= 3.0) & mask
    count, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    markers[markers > 0] += label_offset
    got = _flood_from_markers(markers.astype(np.int32), dist, mask)
    assert np.array_equal(got, _plain_flood(markers, dist, mask))
    assert got.max() == markers.max() and (got[mask] > 0).mean() > 0.95
    # Enough cells, some meeting at necks, for two floods to differ where fronts meet.
    right = got[:, 1:] * got[:, :-1] > 0
    assert count > 20 and (got[:, 1:] != got[:, :-1])[right].sum() > 10


def test_an_oversized_object_is_cut_again_at_its_own_threshold() -> None:
    # Two bright cells in one dim sheet: at the field's cut they are one object, too
    # large for a cell; within it, the sheet falls below the object's own cut.
    resid = np.zeros((200, 300), np.float32)
    cv2.rectangle(resid, (20, 40), (280, 160), 20.0, -1)
    for x in (90, 210):
        cv2.circle(resid, (x, 100), 30, 80.0, -1)
    cv2.circle(resid, (150, 185), 8, 50.0, -1)  # a small separate object: left alone
    labels = np.zeros(resid.shape, np.int32)
    labels[resid >= 20.0] = 7
    labels[175:196, 141:160][resid[175:196, 141:160] >= 50.0] = 3
    out = split_clumps(labels, resid, radius_px=30.0, limit_px=5000.0)
    assert np.array_equal(out == 3, labels == 3)  # under the limit: same pixels, same id
    parts = [k for k in np.unique(out) if k not in (0, 3)]
    assert len(parts) == 2 and 7 not in parts
    xs = sorted(float(np.nonzero(out == k)[1].mean()) for k in parts)
    assert xs == pytest.approx([90, 210], abs=3)
    for k in parts:  # each part is its cell grown back 18 px (0.3 nucleus) over the sheet
        assert np.pi * 30**2 < (out == k).sum() < np.pi * 50**2
    assert not (out[labels == 0]).any()  # never beyond the object it came from


def test_the_clump_limit_follows_the_field_s_median_object() -> None:
    labels = np.zeros((100, 400), np.int32)
    for k in range(6):  # six objects of 100 px and one of 400
        labels[0:10, 40 * k:40 * k + 10] = k + 1
    labels[50:70, 0:20] = 7
    assert clump_limit(labels, min_px=50, max_px=10_000) == pytest.approx(250.0)
    assert clump_limit(labels, min_px=50, max_px=200) == 200  # never above the area limit
    # Objects outside the area range do not count; too few left: the area limit.
    assert clump_limit(labels, min_px=150, max_px=10_000) == 10_000
    assert clump_limit(np.zeros((9, 9), np.int32), 1, 500) == 500


def test_a_flat_oversized_object_is_left_for_the_area_filter() -> None:
    resid = np.full((100, 100), 40.0, np.float32)
    labels = np.ones((100, 100), np.int32)
    out = split_clumps(labels, resid, radius_px=10.0, limit_px=500.0)
    assert len(np.unique(out)) == 1 and out.all()  # one object, every pixel kept
    assert split_clumps(np.zeros((9, 9), np.int32), resid[:9, :9], 3.0, 10.0).max() == 0


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="green-channel"):
        segment_cells(np.zeros((4, 4, 3), np.float32), UM_PER_PX, CELLS)
    with pytest.raises(ValueError, match="um_per_px"):
        segment_cells(np.zeros((64, 64), np.float32), 0.0, CELLS)


# ---------------------------------------------------------------- intensity, drawn


def test_cell_brightness_is_top_five_percent_minus_background() -> None:
    img = np.full((100, 100), 10.0, np.float32)
    labels = np.zeros((100, 100), np.int32)
    labels[10:30, 10:30] = 1  # 400 px: the top 5 % are 20 px
    img[10:30, 10:30] = 50.0
    img[10, 10:30] = 90.0  # exactly 20 bright pixels
    labels[50:70, 50:70] = 2
    img[50:70, 50:70] = 30.0
    got = cell_brightness(img, labels, 10.0)
    assert got == pytest.approx([80.0, 20.0])
    # A background map: each cell subtracts the mean map under it.
    bg_map = np.full((100, 100), 10.0, np.float32)
    bg_map[50:70, 50:70] = 14.0
    assert cell_brightness(img, labels, bg_map) == pytest.approx([80.0, 16.0])


def test_specimen_intensity_is_the_interphase_median() -> None:
    brightness = np.array([10.0, 30.0, 50.0, 500.0])
    assert specimen_intensity(brightness, np.array([True, True, True, False])) == 30.0
    with pytest.raises(ValueError, match="no interphase cell"):
        specimen_intensity(brightness, np.zeros(4, bool))


def test_blank_field_reads_near_zero_not_nan() -> None:
    img = _noisy(np.full((240, 320), 5.0, np.float32), 2.0, 8)
    value = field_brightness(img, background_map(img, UM_PER_PX, CELLS))
    assert np.isfinite(value) and 0.0 <= value < 8.0  # ~2 sigma of the noise
    assert field_brightness(np.zeros((64, 64), np.float32), 0.0) == 0.0


def test_units_and_levels() -> None:
    cfg = Hep2IntensityConfig(units_per_grey=2.0)
    assert to_units(15.0, cfg) == 30.0
    cuts = (LEVELS.negative_below, *LEVELS.levels)
    probes = [0.0, cuts[0] - 0.1, cuts[0], cuts[1] - 0.1, cuts[1], cuts[2] - 0.1, cuts[2], 1e4]
    assert [intensity_level(u, LEVELS) for u in probes] == [
        "negative", "negative", "weak", "weak", "intermediate", "intermediate", "strong", "strong"]
    stricter = Hep2IntensityConfig(negative_below=40.0)
    assert intensity_level(30.0, stricter) == "negative"
    assert intensity_level(45.0, stricter) == "weak"
    with pytest.raises(ValueError, match="ascending"):
        intensity_level(30.0, Hep2IntensityConfig(levels=[150.0, 60.0]))
    with pytest.raises(ValueError, match="finite"):
        intensity_level(float("nan"), LEVELS)


# ---------------------------------------------------------------- generated IIF fields


def _generated(pattern: str, intensity: float, seed: int) -> Hep2Field:
    """A small generated field of one pattern, without photobleaching (the intensity truth)."""
    return generate_hep2_field(Hep2FieldSpec(
        seed=seed, width=640, height=480, patterns=((pattern, 1.0),), intensity=intensity,
        photobleaching=0.0))


def _recall_precision(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Share of true cells and of found objects matched one to one at IoU >= 0.5."""
    n_p, n_t = int(pred.max()), int(truth.max())
    if n_p == 0 or n_t == 0:
        return 0.0, 0.0
    pair = pred.astype(np.int64).ravel() * (n_t + 1) + truth.ravel()
    inter = np.bincount(pair, minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    hit = (inter / np.maximum(union, 1))[1:, 1:] >= 0.5  # IoU >= 0.5 pairs are unique
    return float(hit.any(0).mean()), float(hit.any(1).mean())


# Measured on seeds 101-104 (640x480, intensities 30 and 180), worst field of the four:
# homogeneous 0.89, centromere 0.96, fine speckled 0.82, clumpy nucleolar 0.88, multiple
# dots 0.90, smooth envelope 0.67. The floors sit below those with a margin.
@pytest.mark.parametrize(("pattern", "floor"), [
    ("homogeneous", 0.8), ("centromere", 0.85), ("fine_speckled", 0.72),
    ("nucleolar_clumpy", 0.78), ("envelope_smooth", 0.55), ("multiple_nuclear_dots", 0.8),
])
@pytest.mark.parametrize("intensity", [30.0, 180.0])
def test_generated_nuclear_patterns_are_segmented(pattern: str, floor: float,
                                                  intensity: float) -> None:
    field = _generated(pattern, intensity, seed=101)
    cells = segment_cells(field.image[..., 1].astype(np.float32), field.um_per_px, CELLS)
    recall, precision = _recall_precision(cells.labels, field.cell_labels)
    assert recall >= floor and precision >= floor, (recall, precision)


def _whole_cells_found(pattern: str, seed: int) -> tuple[int, int]:
    """(whole cells found, whole cells) in a generated 640x480 field, as the eval matches."""
    field = generate_hep2_field(Hep2FieldSpec(seed=seed, width=640, height=480,
                                              patterns=((pattern, 1.0),)))
    cells = segment_cells(field.image[..., 1].astype(np.float32), field.um_per_px, CELLS)
    found = set(match_cells(cells.labels, cells.centroids, field.cell_labels).values())
    whole = [c.cell_id for c in field.cells if not c.touches_edge]
    return sum(c in found for c in whole), len(whole)


def test_dense_cytoplasmic_sheets_are_cut_into_cells() -> None:
    # 285 whole cells whose stained cytoplasms touch. Before sheets were cut again at
    # their own threshold, those over the area limit were dropped as clumps: 133 cells
    # were found (0.47); now 246 (0.86).
    found, whole = _whole_cells_found("cyto_speckled", 891_401)
    assert whole == 285 and found >= 0.7 * whole


def test_merged_nuclei_under_the_area_limit_are_cut_apart() -> None:
    # 37 whole smooth-envelope cells at 40x whose blurred rims join in pairs and threes,
    # each object well under the area limit. Cutting only objects over the limit found
    # 27 (10 merged); cutting objects over 2.5 times the field's median finds all 37.
    found, whole = _whole_cells_found("envelope_smooth", 861_004)
    assert whole == 37 and found >= 34


def test_generated_cytoplasmic_pattern_is_partly_segmented() -> None:
    # A known limit: touching stained cytoplasms are outlined poorly. Measured outline
    # recall (IoU >= 0.5) 0.24-0.83 per field for the cytoplasmic patterns, though 0.68-0.99
    # of the cells are found (tools.eval_hep2_segmentation); the floor guards against a
    # collapse, not a quality bar.
    field = _generated("cyto_fibrillar", 60.0, seed=102)
    cells = segment_cells(field.image[..., 1].astype(np.float32), field.um_per_px, CELLS)
    recall, precision = _recall_precision(cells.labels, field.cell_labels)
    assert recall >= 0.1 and precision >= 0.1, (recall, precision)
    assert 0.5 * len(field.cells) < cells.count < 1.5 * len(field.cells)


# Measured worst relative error over seeds 101-104: homogeneous 0.02, centromere 0.10,
# multiple nuclear dots 0.10 (at 180), smooth envelope 0.11 (at 180). Sparse patterns at
# weak intensities read up to 0.3 off (the brightest 5 % of a few dots is noise-dominated).
@pytest.mark.parametrize(("pattern", "intensity"), [
    ("homogeneous", 40.0), ("centromere", 120.0), ("multiple_nuclear_dots", 180.0),
    ("envelope_smooth", 180.0),
])
def test_specimen_intensity_matches_the_generator_within_15_percent(
        pattern: str, intensity: float) -> None:
    field = _generated(pattern, intensity, seed=103)
    green = field.image[..., 1].astype(np.float32)
    cells = segment_cells(green, field.um_per_px, CELLS)
    brightness = cell_brightness(green, cells.labels, cells.background_map)
    measured = specimen_intensity(brightness, ~cells.touches_edge)
    assert measured == pytest.approx(field.intensity, rel=0.15)


def test_negative_generated_field_reads_negative() -> None:
    field = generate_hep2_field(Hep2FieldSpec(seed=104, width=640, height=480,
                                              patterns=(("negative", 1.0),), intensity=8.0,
                                              photobleaching=0.0))
    green = field.image[..., 1].astype(np.float32)
    cells = segment_cells(green, field.um_per_px, CELLS)
    if cells.count:
        grey = specimen_intensity(
            cell_brightness(green, cells.labels, cells.background_map), ~cells.touches_edge)
    else:
        grey = field_brightness(green, cells.background_map)
    assert intensity_level(to_units(grey, LEVELS), LEVELS) == "negative"
