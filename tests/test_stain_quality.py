"""Colour deconvolution (exactness, white level, speed) and the field quality gates."""

from __future__ import annotations

import itertools
from types import ModuleType

import cv2
import numpy as np
import pytest
from skimage import data

from appliance.assays.her2.quality import focus_measure, measure_quality, quality_issues
from appliance.assays.her2.stain import (
    StainMaps,
    deconvolve,
    estimate_white,
    optical_density,
    stain_matrix,
)
from appliance.assays.her2.types import QualityReport
from appliance.assays.her2.working_scale import choose_working_scale, resample
from appliance.config import MeasureConfig, QualityConfig, StainConfig

STAIN = StainConfig()
QUALITY = QualityConfig()
H_UNIT = np.array(STAIN.hematoxylin) / np.linalg.norm(STAIN.hematoxylin)
DAB_UNIT = np.array(STAIN.dab) / np.linalg.norm(STAIN.dab)
EOSIN = np.array([0.07, 0.99, 0.11])  # Ruifrok & Johnston's eosin OD vector
GREEN_DYE = np.array([0.95, 0.20, 0.70])  # absorbs red and blue: looks green


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """A real H-DAB photograph (scikit-image sample data, in focus)."""
    return np.asarray(data.immunohistochemistry())


def _render(od: np.ndarray, white: tuple[float, float, float]) -> np.ndarray:
    """Beer-Lambert: an (..., 3) OD image seen through glass of brightness ``white``."""
    return np.asarray(white, np.float64) * 10.0 ** (-od)


def _restain(ihc: np.ndarray, vector: np.ndarray, base: float, gain: float) -> np.ndarray:
    """The IHC field with its DAB replaced by another dye (same texture, other colour)."""
    maps = deconvolve(ihc, STAIN)
    h = np.clip(maps.hematoxylin, 0, None)[..., None]
    other = (base + gain * np.clip(maps.dab, 0, None))[..., None]
    od = h * H_UNIT + other * (vector / np.linalg.norm(vector))
    return np.clip(_render(od, maps.white), 0, 255).round().astype(np.uint8)


def _codes(rgb: np.ndarray) -> dict[str, bool]:
    """Quality issue codes of a field and whether each is fatal."""
    report = measure_quality(rgb, deconvolve(rgb, STAIN))
    return {i.code: i.fatal for i in quality_issues(report, QUALITY)}


def test_stain_matrix_rows_are_unit_and_residual_is_orthogonal() -> None:
    m = stain_matrix(STAIN)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(m[0], H_UNIT, atol=1e-12)
    np.testing.assert_allclose(m[1], DAB_UNIT, atol=1e-12)
    cross = np.cross(H_UNIT, DAB_UNIT)
    np.testing.assert_allclose(m[2], cross / np.linalg.norm(cross), atol=1e-12)
    assert abs(m[2] @ m[0]) < 1e-12 and abs(m[2] @ m[1]) < 1e-12


def test_parallel_stain_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="parallel"):
        stain_matrix(StainConfig(hematoxylin=[0.3, 0.6, 0.8], dab=[0.6, 1.2, 1.6]))
    with pytest.raises(ValueError, match="all zeros"):
        stain_matrix(StainConfig(dab=[0.0, 0.0, 0.0]))


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("h_amount", [0.0, 0.35])
@pytest.mark.parametrize("white_level", [0.0, 238.0])
def test_dab_map_returns_the_rendered_concentration(h_amount: float,
                                                    white_level: float) -> None:
    # Half the field is glass, so the estimated white equals the rendering white exactly.
    white = (242.0, 236.0, 229.0) if white_level == 0 else (white_level,) * 3
    concentrations = np.linspace(0.1, 1.2, 12)
    od = np.zeros((24, 12, 3))
    od[:12] = (h_amount * H_UNIT)[None, None, :] + concentrations[None, :, None] * DAB_UNIT
    rgb = _render(od, white)
    maps = deconvolve(rgb, StainConfig(white_level=white_level))
    assert maps.white == pytest.approx(white, abs=1e-9)
    np.testing.assert_allclose(maps.dab[:12].mean(axis=0), concentrations, atol=1e-3)
    np.testing.assert_allclose(maps.dab[:12], np.broadcast_to(concentrations, (12, 12)),
                               atol=1e-3)
    np.testing.assert_allclose(maps.hematoxylin[:12], h_amount, atol=1e-3)
    assert maps.residual[:12].max() < 1e-3
    np.testing.assert_allclose(maps.dab[12:], 0.0, atol=1e-6)  # glass


def test_dab_map_from_8bit_pixels_within_rounding() -> None:
    concentrations = np.linspace(0.1, 1.2, 12)
    od = concentrations[:, None] * DAB_UNIT
    rgb = np.clip(_render(od[None], (240.0, 240.0, 240.0)).round(), 0, 255).astype(np.uint8)
    maps = deconvolve(rgb, StainConfig(white_level=240))
    # One grey level of rounding at OD 1.2 is about 0.01 OD in the darkest channel.
    np.testing.assert_allclose(maps.dab[0], concentrations, atol=0.03)


def test_optical_density_basics() -> None:
    rgb = np.array([[[240, 240, 240], [255, 255, 255], [0, 0, 0], [24, 120, 240]]], np.uint8)
    od = optical_density(rgb, (240.0, 240.0, 240.0))
    assert od.dtype == np.float32 and od.shape == (1, 4, 3)
    np.testing.assert_allclose(od[0, 0], 0.0, atol=1e-6)  # glass
    np.testing.assert_allclose(od[0, 1], 0.0, atol=1e-6)  # brighter than glass: clipped
    assert np.all(np.isfinite(od)) and od[0, 2].max() == pytest.approx(np.log10(240), 1e-5)
    np.testing.assert_allclose(od[0, 3], [1.0, np.log10(2), 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="white"):
        optical_density(rgb, (240.0, 0.0, 240.0))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        optical_density(rgb[..., :2], (240.0, 240.0, 240.0))


# ---------------------------------------------------------------- white level


def test_white_from_tinted_noisy_glass(ihc: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    rgb = ihc.astype(np.float64) * 0.85
    rgb[:, :200] = np.array([246.0, 238.0, 226.0]) + rng.normal(0, 2.0, (512, 200, 3))
    white = estimate_white(np.clip(rgb, 0, 255).round().astype(np.uint8))
    np.testing.assert_allclose(white, (246, 238, 226), atol=1.5)


def test_white_without_glass_falls_back_to_a_high_percentile(ihc: np.ndarray) -> None:
    tissue_only = ihc[150:350, 50:250]  # inside a gland: no glass in view
    white = np.array(estimate_white(tissue_only))
    per_channel = tissue_only.reshape(-1, 3)
    assert np.all(white <= per_channel.max(axis=0))
    assert np.all(white >= np.percentile(per_channel, 95, axis=0))


def test_white_is_bounded_for_clipped_and_black_fields() -> None:
    assert estimate_white(np.full((64, 64, 3), 255, np.uint8)) == (255.0, 255.0, 255.0)
    assert min(estimate_white(np.zeros((64, 64, 3), np.uint8))) >= 1.0
    assert max(estimate_white(np.full((8, 8, 3), 400.0))) == 255.0  # capped for float input


def test_deconvolve_uses_the_configured_white(ihc: np.ndarray) -> None:
    assert deconvolve(ihc, StainConfig(white_level=250)).white == (250.0, 250.0, 250.0)
    estimated = deconvolve(ihc, STAIN).white
    assert all(225 <= w <= 245 for w in estimated)  # the photo's glass is about 234


def test_real_ihc_is_explained_by_h_and_dab(ihc: np.ndarray) -> None:
    maps = deconvolve(ihc, STAIN)
    assert isinstance(maps, StainMaps)
    assert all(m.dtype == np.float32 and m.shape == ihc.shape[:2]
               for m in (maps.hematoxylin, maps.dab, maps.residual))
    assert maps.residual.min() >= 0.0
    # Brown membranes carry DAB, the stroma is blue: both maps must be in use.
    assert np.percentile(maps.dab, 95) > 0.5 and np.percentile(maps.hematoxylin, 95) > 0.1
    assert np.median(maps.residual) < 0.05


# ---------------------------------------------------------------- quality: real fields


def test_real_ihc_field_passes_every_gate(ihc: np.ndarray) -> None:
    assert _codes(ihc) == {}


def test_real_ihc_at_coarser_scale_passes(ihc: np.ndarray) -> None:
    half = cv2.resize(ihc, (256, 256), interpolation=cv2.INTER_AREA)
    assert _codes(half) == {}


def test_blur_lowers_focus_monotonically_and_strong_blur_fails(ihc: np.ndarray) -> None:
    focus = []
    for sigma in (0.0, 1.0, 2.0, 3.0, 5.0):
        rgb = cv2.GaussianBlur(ihc, (0, 0), sigma) if sigma else ihc
        focus.append(measure_quality(rgb, deconvolve(rgb, STAIN)).focus)
    assert all(a > b for a, b in itertools.pairwise(focus))
    assert focus[0] > 1.1 * QUALITY.min_focus  # sharp: no warning either
    assert focus[-1] < 0.75 * QUALITY.min_focus
    blurred = cv2.GaussianBlur(ihc, (0, 0), 5.0)
    assert _codes(blurred) == {"out_of_focus": True}


def test_focus_ignores_sensor_noise_on_a_blurred_field(ihc: np.ndarray) -> None:
    blurred = cv2.GaussianBlur(ihc, (0, 0), 5.0)
    noise = np.random.default_rng(0).normal(0, 4.0, ihc.shape)
    noisy = np.clip(blurred + noise, 0, 255).astype(np.uint8)
    assert _codes(noisy).get("out_of_focus") is True


def test_focus_independent_of_stain_strength_and_image_size(ihc: np.ndarray) -> None:
    maps = deconvolve(ihc, STAIN)
    base = measure_quality(ihc, maps).focus
    # The same field stained half as strongly: every OD halves.
    white = np.asarray(maps.white)
    faint = np.clip(white * (np.maximum(ihc, 1) / white) ** 0.5, 0, 255).round()
    faint_u8 = faint.astype(np.uint8)
    assert measure_quality(faint_u8, deconvolve(faint_u8, STAIN)).focus == pytest.approx(
        base, rel=0.1)
    # Four copies of the field side by side: same sharpness, four times the pixels.
    tiled = np.tile(ihc, (2, 2, 1))
    assert measure_quality(tiled, deconvolve(tiled, STAIN)).focus == pytest.approx(
        base, rel=0.03)


def test_focus_of_a_flat_image_is_zero() -> None:
    flat = np.full((64, 64), 0.5, np.float32)
    assert focus_measure(flat, np.ones((64, 64), bool)) == 0.0


# ---------------------------------------------------------------- quality: bad fields


def test_glass_only_is_no_tissue() -> None:
    glass = np.random.default_rng(0).normal(236, 2, (300, 400, 3))
    rgb = np.clip(glass, 0, 255).astype(np.uint8)
    report = measure_quality(rgb, deconvolve(rgb, STAIN))
    assert report.tissue_fraction < 0.01
    assert _codes(rgb) == {"no_tissue": True}


def test_black_image_is_under_exposed() -> None:
    assert _codes(np.zeros((300, 400, 3), np.uint8)) == {"under_exposed": True}


def test_dim_field_is_under_exposed(ihc: np.ndarray) -> None:
    dim = (ihc * 0.28).astype(np.uint8)  # glass at about 65 of 255
    assert _codes(dim) == {"under_exposed": True}


def test_fluorescence_like_field_is_not_brightfield(ihc: np.ndarray) -> None:
    # Dark background with green-emitting nuclei, where the haematoxylin was.
    h = np.clip(deconvolve(ihc, STAIN).hematoxylin, 0, None)
    glow = np.clip(h / np.percentile(h, 99), 0, 1)
    rgb = np.zeros_like(ihc)
    rgb[..., 1] = (glow * 230).astype(np.uint8)
    rgb[..., 2] = (glow * 40).astype(np.uint8)
    rgb += np.random.default_rng(1).integers(0, 10, ihc.shape, dtype=np.uint8)
    report = measure_quality(rgb, deconvolve(rgb, STAIN))
    assert report.brightness < 40
    assert _codes(rgb) == {"not_brightfield": True}


def test_he_pink_field_is_wrong_stain(ihc: np.ndarray) -> None:
    he = _restain(ihc, EOSIN, base=0.25, gain=0.5)
    assert he[..., 0].mean() > he[..., 1].mean()  # pink: more red than green
    assert _codes(he) == {"wrong_stain": True}


def test_faint_he_field_is_still_wrong_stain(ihc: np.ndarray) -> None:
    assert _codes(_restain(ihc, EOSIN, base=0.08, gain=0.25)) == {"wrong_stain": True}


def test_green_dye_is_wrong_stain(ihc: np.ndarray) -> None:
    assert _codes(_restain(ihc, GREEN_DYE, base=0.2, gain=0.6)) == {"wrong_stain": True}


def test_over_exposed_field(ihc: np.ndarray) -> None:
    washed = np.clip(ihc.astype(np.float64) * 1.6, 0, 255).astype(np.uint8)
    report = measure_quality(washed, deconvolve(washed, STAIN))
    assert report.saturated_fraction > QUALITY.max_saturated_fraction
    assert _codes(washed).get("over_exposed") is True


def test_partly_clipped_field_warns(ihc: np.ndarray) -> None:
    bright = np.clip(ihc.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    assert _codes(bright) == {"over_exposed": False}


def test_measure_quality_refuses_mismatched_inputs(ihc: np.ndarray) -> None:
    maps = deconvolve(ihc, STAIN)
    with pytest.raises(ValueError, match="do not match"):
        measure_quality(ihc[:100], maps)
    with pytest.raises(ValueError, match="uint8"):
        measure_quality(ihc.astype(np.float32), maps)


# ---------------------------------------------------------------- quality_issues (pure)


def _report(**changes: float) -> QualityReport:
    values = dict(tissue_fraction=0.5, focus=3.0, saturated_fraction=0.0,
                  dark_fraction=0.0, stain_residual=0.05, brightness=180.0)
    values.update(changes)
    return QualityReport(**values)


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, {}),
    ({"tissue_fraction": 0.01}, {"no_tissue": True}),
    ({"focus": 1.2}, {"out_of_focus": True}),
    ({"focus": 2.0}, {"out_of_focus": False}),
    ({"saturated_fraction": 0.9}, {"over_exposed": True}),
    ({"saturated_fraction": 0.4}, {"over_exposed": False}),
    ({"dark_fraction": 1.0, "brightness": 0.0}, {"under_exposed": True}),
    ({"dark_fraction": 0.8, "brightness": 12.0}, {"not_brightfield": True}),
    ({"brightness": 30.0}, {"under_exposed": True}),
    ({"brightness": 70.0}, {"under_exposed": False}),
    ({"stain_residual": 0.4}, {"wrong_stain": True}),
    ({"stain_residual": 0.2}, {"wrong_stain": False}),
    # Without tissue, focus and colour are not judged.
    ({"tissue_fraction": 0.0, "focus": 0.0, "stain_residual": 0.0}, {"no_tissue": True}),
    # Black light path: nothing else is judged.
    ({"dark_fraction": 1.0, "brightness": 0.0, "tissue_fraction": 0.0}, {"under_exposed": True}),
    ({"focus": 1.2, "stain_residual": 0.5}, {"out_of_focus": True, "wrong_stain": True}),
])
def test_quality_issue_table(changes: dict[str, float], expected: dict[str, bool]) -> None:
    issues = quality_issues(_report(**changes), QUALITY)
    assert {i.code: i.fatal for i in issues} == expected
    assert all(i.reason for i in issues)


def test_gates_follow_the_config() -> None:
    report = _report(focus=2.0, tissue_fraction=0.1, stain_residual=0.3)
    strict = QualityConfig(min_focus=2.5, min_tissue_fraction=0.2, max_stain_residual=0.5)
    assert {i.code for i in quality_issues(report, strict) if i.fatal} == {"no_tissue"}
    lenient_tissue = QualityConfig(min_focus=2.5, min_tissue_fraction=0.05,
                                   max_stain_residual=0.25)
    fatal = {i.code for i in quality_issues(report, lenient_tissue) if i.fatal}
    assert fatal == {"out_of_focus", "wrong_stain"}
    reason = next(i.reason for i in quality_issues(report, lenient_tissue)
                  if i.code == "out_of_focus")
    assert "her2.quality.min_focus" in reason


# ---------------------------------------------------------------- synthetic HER2 fields


@pytest.fixture(scope="module")
def synth() -> ModuleType:
    """The field generator (tools.synth.her2_fields); only these tests skip without it."""
    return pytest.importorskip("tools.synth.her2_fields", reason="field generator not present")


def _working(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    measure = MeasureConfig()
    h, w = rgb.shape[:2]
    return resample(rgb, um_per_px, choose_working_scale(um_per_px, h, w, measure))


@pytest.mark.parametrize("um_per_px", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [1, 4])
def test_synthetic_fields_in_focus_pass_defocused_fail(synth: ModuleType, um_per_px: float,
                                                        seed: int) -> None:
    sharp = synth.generate_field(synth.FieldSpec(seed=seed, um_per_px=um_per_px,
                                                 defocus_um=0.0, tissue="tumour")).image
    assert _codes(_working(sharp, um_per_px)) == {}
    soft = synth.generate_field(synth.FieldSpec(seed=seed, um_per_px=um_per_px,
                                                defocus_um=4.0, tissue="tumour")).image
    assert _codes(_working(soft, um_per_px)).get("out_of_focus") is True


@pytest.mark.parametrize(("seed", "um_per_px"), [(3, 0.5), (5, 1.0), (8, 0.25)])
def test_synthetic_glass_only_fields_are_no_tissue(synth: ModuleType, seed: int,
                                                   um_per_px: float) -> None:
    # Glass with the generator's vignetting, uneven light, dust and sensor noise.
    empty = synth.generate_field(synth.FieldSpec(seed=seed, um_per_px=um_per_px,
                                                 defocus_um=0.0, tissue="empty")).image
    assert _codes(_working(empty, um_per_px)) == {"no_tissue": True}
