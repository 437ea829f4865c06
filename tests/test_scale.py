"""Scale from nuclear size: drawn nuclei of known size, the synthetic HER2 fields, a real photo.

What is reached (appliance/assays/her2/scale.py documents it too): on the generator's
fields at 0.25, 0.4, 0.6 and 1.0 µm/px the measured median diameter is within -17 % / +6 %
of the true one, and with the default assumed diameter 23 of the 24 fields tested here
(seeds 1-6) have a scale error within ±30 %; the one outside is a field whose nuclei are
unusually small (true median 6.5 µm against the assumed 8.5 µm).
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from appliance.assays.her2.scale import estimate_um_per_px, median_nucleus_diameter_px
from appliance.assays.her2.stain import StainMaps, deconvolve
from appliance.config import OpticsConfig, StainConfig

STAIN = StainConfig()
ASSUMED_UM = OpticsConfig().assumed_nucleus_diameter_um
H_UNIT = np.array(STAIN.hematoxylin) / np.linalg.norm(STAIN.hematoxylin)
DAB_UNIT = np.array(STAIN.dab) / np.linalg.norm(STAIN.dab)


def _field(diameter_px: float, *, count: int = 60, size: tuple[int, int] = (480, 640),
           aspect: float = 1.3, pairs: bool = False, rings: bool = False,
           gradient: float = 0.0, seed: int = 0) -> np.ndarray:
    """An H-DAB field of elliptical nuclei whose equivalent diameter is ``diameter_px``.

    ``pairs`` draws nuclei as touching pairs; ``rings`` adds a dark DAB membrane around each
    nucleus; ``gradient`` darkens the field towards one side (uneven light, grey OD).
    """
    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    h = np.full(size, 0.05)
    dab = np.zeros(size)
    a = diameter_px / 2 * np.sqrt(aspect)
    b = diameter_px / 2 / np.sqrt(aspect)
    placed = 0
    centres: list[tuple[float, float]] = []
    while placed < count:
        cx, cy = rng.uniform(a + 4, cols - a - 4), rng.uniform(a + 4, rows - a - 4)
        spacing = (4.2 if pairs else 2.4) * a
        if any((cx - x) ** 2 + (cy - y) ** 2 < spacing**2 for x, y in centres):
            if len(centres) > 4 * count:
                break
            centres.append((-1e9, -1e9))  # count the failed try, keep the loop finite
            continue
        centres.append((cx, cy))
        angle = rng.uniform(0, np.pi)
        offsets = [(-a * 0.98, 0.0), (a * 0.98, 0.0)] if pairs else [(0.0, 0.0)]
        for ox, oy in offsets:
            px = cx + ox * np.cos(angle) - oy * np.sin(angle)
            py = cy + ox * np.sin(angle) + oy * np.cos(angle)
            u = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle)
            v = -(xx - px) * np.sin(angle) + (yy - py) * np.cos(angle)
            r2 = (u / a) ** 2 + (v / b) ** 2
            h[r2 <= 1.0] = 0.45 * rng.uniform(0.85, 1.15)
            if rings:
                dab[(r2 > 2.2) & (r2 <= 2.8)] = 0.9
        placed += 1
    od = h[..., None] * H_UNIT + dab[..., None] * DAB_UNIT
    od += (gradient * xx / cols)[..., None] / np.sqrt(3.0)
    rgb = 235.0 * 10.0 ** (-od) + rng.normal(0, 2.0, od.shape)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _measure(rgb: np.ndarray) -> float | None:
    return median_nucleus_diameter_px(deconvolve(rgb, STAIN).hematoxylin)


# ---------------------------------------------------------------- drawn nuclei


@pytest.mark.parametrize("diameter", [9.0, 14.0, 22.0, 34.0])
def test_median_diameter_of_drawn_nuclei(diameter: float) -> None:
    measured = _measure(_field(diameter, count=40 if diameter > 30 else 60))
    assert measured is not None
    assert measured == pytest.approx(diameter, rel=0.12)


def test_touching_pairs_are_split() -> None:
    measured = _measure(_field(14.0, count=30, pairs=True, seed=1))
    assert measured is not None
    # Merged pairs would read about sqrt(2) = 1.41 times too wide.
    assert measured == pytest.approx(14.0, rel=0.15)


def test_dab_membranes_and_uneven_light_do_not_change_the_size() -> None:
    plain = _measure(_field(16.0, seed=2))
    busy = _measure(_field(16.0, rings=True, gradient=0.25, seed=2))
    assert plain is not None and busy is not None
    assert busy == pytest.approx(plain, rel=0.1)


def test_glass_or_too_few_nuclei_give_none() -> None:
    glass = np.clip(np.random.default_rng(0).normal(235, 2, (480, 640, 3)), 0, 255)
    glass_u8 = glass.astype(np.uint8)
    assert estimate_um_per_px(glass_u8, deconvolve(glass_u8, STAIN), ASSUMED_UM) is None
    sparse = _field(14.0, count=5, seed=3)
    assert estimate_um_per_px(sparse, deconvolve(sparse, STAIN), ASSUMED_UM) is None


def test_scale_is_assumed_diameter_over_measured() -> None:
    rgb = _field(17.0, seed=4)
    maps = deconvolve(rgb, STAIN)
    measured = median_nucleus_diameter_px(maps.hematoxylin)
    assert measured is not None
    assert estimate_um_per_px(rgb, maps, 8.5) == pytest.approx(8.5 / measured)
    assert estimate_um_per_px(rgb, maps, 8.5) == pytest.approx(0.5, rel=0.12)


def test_bad_arguments_are_refused() -> None:
    rgb = _field(12.0, count=20, size=(200, 200))
    maps = deconvolve(rgb, STAIN)
    with pytest.raises(ValueError, match="diameter"):
        estimate_um_per_px(rgb, maps, 0.0)
    other = StainMaps(maps.hematoxylin[:100], maps.dab[:100], maps.residual[:100], maps.white)
    with pytest.raises(ValueError, match="do not match"):
        estimate_um_per_px(rgb, other, 8.5)


# ---------------------------------------------------------------- a real photograph


def test_real_ihc_photo_gives_a_plausible_scale() -> None:
    ihc = np.asarray(data.immunohistochemistry())
    um_per_px = estimate_um_per_px(ihc, deconvolve(ihc, STAIN), ASSUMED_UM)
    assert um_per_px is not None
    assert 0.2 <= um_per_px <= 1.5


# ---------------------------------------------------------------- synthetic HER2 fields

SCALES = (0.25, 0.4, 0.6, 1.0)
SEEDS = range(1, 7)


@pytest.fixture(scope="module")
def synthetic_results() -> list[tuple[float, float, float]]:
    """(true µm/px, estimated µm/px, measured over true median diameter) per field."""
    synth = pytest.importorskip("tools.synth.her2_fields", reason="field generator not present")
    out = []
    for seed in SEEDS:
        for um_per_px in SCALES:
            field = synth.generate_field(synth.FieldSpec(seed=seed, um_per_px=um_per_px))
            maps = deconvolve(field.image, STAIN)
            estimate = estimate_um_per_px(field.image, maps, ASSUMED_UM)
            assert estimate is not None, f"no estimate for seed {seed} at {um_per_px} µm/px"
            areas = np.bincount(field.nucleus_labels.ravel())[1:]
            true_px = float(np.median(np.sqrt(4.0 * areas[areas > 0] / np.pi)))
            measured_px = ASSUMED_UM / estimate
            out.append((um_per_px, estimate, measured_px / true_px))
    return out


def test_measured_diameter_matches_the_drawn_nuclei(
    synthetic_results: list[tuple[float, float, float]],
) -> None:
    ratios = np.array([r for _, _, r in synthetic_results])
    assert ratios.min() >= 0.8 and ratios.max() <= 1.1
    assert abs(float(np.median(ratios)) - 1.0) < 0.05


def test_scale_error_on_synthetic_fields(
    synthetic_results: list[tuple[float, float, float]],
) -> None:
    errors = np.array([est / true - 1.0 for true, est, _ in synthetic_results])
    assert float(np.median(np.abs(errors))) <= 0.12
    assert np.mean(np.abs(errors) <= 0.30) >= 0.9
    # Every scale is told apart from its neighbours (10x vs 20x vs 40x differ by 2).
    for scale in SCALES:
        per_scale = [est for true, est, _ in synthetic_results if true == scale]
        assert 0.6 * scale <= float(np.median(per_scale)) <= 1.4 * scale
