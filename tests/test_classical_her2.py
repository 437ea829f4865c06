"""Tests of the classical (QuPath-style) HER2 reference pipeline in tools/classical_her2.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from skimage import data

from appliance.assays.her2.rules import score_field
from appliance.assays.her2.types import FieldScore, MembraneClass, NotScorable, Score
from appliance.config import MeasureConfig, RulesConfig
from tools.classical_her2 import (
    ClassicalParams,
    ClassicalResult,
    deconvolve,
    estimate_white,
    score_classical,
)

UM_PER_PX = 0.5
H_UNIT = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
DAB_UNIT = np.array([0.27, 0.57, 0.78]) / np.linalg.norm([0.27, 0.57, 0.78])


def compose(h_od: np.ndarray, dab_od: np.ndarray, noise: float = 0.0,
            seed: int = 0, exposure: float = 1.0) -> np.ndarray:
    """Beer-Lambert RGB (glass at 255 x exposure) from base-10 OD of unit stain vectors."""
    od = h_od[..., None] * H_UNIT + dab_od[..., None] * DAB_UNIT
    rgb = 255.0 * exposure * np.power(10.0, -od)
    if noise:
        rgb += np.random.default_rng(seed).normal(0.0, noise, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Pattern:
    """A drawn cell's membrane: DAB OD and the arc it covers (fraction of the circle)."""

    od: float
    arc: float
    expected: MembraneClass


PATTERNS = (
    Pattern(0.0, 0.0, MembraneClass.NONE),
    Pattern(0.3, 0.5, MembraneClass.INCOMPLETE_FAINT),
    Pattern(0.5, 1.0, MembraneClass.COMPLETE_WEAK_MODERATE),
    Pattern(0.9, 1.0, MembraneClass.COMPLETE_INTENSE),
    Pattern(0.9, 0.5, MembraneClass.INCOMPLETE_MODERATE_INTENSE),
    Pattern(0.3, 1.0, MembraneClass.COMPLETE_WEAK_MODERATE),
)


@dataclass(frozen=True)
class Drawn:
    x: float
    y: float
    pattern: Pattern


def synthetic_field(patterns: tuple[Pattern, ...], height: int = 480, width: int = 640,
                    spacing: int = 56, membrane_r: float = 16.0,
                    exposure: float = 1.0) -> tuple[np.ndarray, list[Drawn]]:
    """White glass with dark-blue nuclei (r = 5 µm) ringed by brown membranes (r = 8 µm).

    ``exposure`` below 1 dims the whole picture, glass included, as a camera would.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    h_od = np.zeros((height, width))
    dab_od = np.zeros((height, width))
    drawn: list[Drawn] = []
    centres = [(x, y) for y in range(spacing // 2 + 4, height - spacing // 2, spacing)
               for x in range(spacing // 2 + 4, width - spacing // 2, spacing)]
    for i, (cx, cy) in enumerate(centres):
        pattern = patterns[i % len(patterns)]
        r = np.hypot(xx - cx, yy - cy)
        h_od[r <= 10.0] = 0.5
        # Angle from 0 to 1 of the circle; arc 0.5 draws the lower half.
        turn = (np.arctan2(yy - cy, xx - cx) % (2 * np.pi)) / (2 * np.pi)
        membrane = (np.abs(r - membrane_r) <= 1.5) & (turn < pattern.arc)
        dab_od[membrane] = pattern.od
        drawn.append(Drawn(float(cx), float(cy), pattern))
    return compose(h_od, dab_od, noise=2.0, exposure=exposure), drawn


@pytest.fixture(scope="module")
def mixed_field() -> tuple[ClassicalResult, list[Drawn]]:
    rgb, drawn = synthetic_field(PATTERNS)
    return score_classical(rgb, UM_PER_PX), drawn


def nearest(result: ClassicalResult, x: float, y: float) -> int:
    d = [math.hypot(c.x - x, c.y - y) for c in result.cells]
    return int(np.argmin(d))


# ---------------------------------------------------------------- deconvolution


def test_deconvolve_returns_base10_od_of_unit_vectors() -> None:
    h_true, dab_true = 0.3, 0.5
    rgb = compose(np.full((16, 16), h_true), np.full((16, 16), dab_true))
    h_od, dab_od = deconvolve(rgb)
    # uint8 rounding is worth at most about 0.01 OD at these levels.
    assert float(np.median(h_od)) == pytest.approx(h_true, abs=0.02)
    assert float(np.median(dab_od)) == pytest.approx(dab_true, abs=0.02)


def test_deconvolve_white_is_zero() -> None:
    h_od, dab_od = deconvolve(np.full((8, 8, 3), 255, dtype=np.uint8))
    assert float(np.abs(h_od).max()) < 1e-6
    assert float(np.abs(dab_od).max()) < 1e-6


def test_white_is_estimated_from_the_glass() -> None:
    rgb, _ = synthetic_field(PATTERNS, exposure=0.8)
    white = estimate_white(rgb, ClassicalParams())
    assert white == pytest.approx([0.8 * 255] * 3, abs=3)
    fixed = estimate_white(rgb, ClassicalParams(white_level=255))
    assert fixed.tolist() == [255.0, 255.0, 255.0]


def test_dim_camera_does_not_read_as_stain() -> None:
    dab_true = 0.5
    rgb = compose(np.zeros((16, 16)), np.full((16, 16), dab_true), exposure=0.8)
    _, dab_fixed = deconvolve(rgb)  # glass taken as 255: the dimming reads as DAB
    _, dab_white = deconvolve(rgb, np.full(3, 0.8 * 255))
    assert float(np.median(dab_white)) == pytest.approx(dab_true, abs=0.02)
    assert float(np.median(dab_fixed)) > dab_true + 0.05


# ---------------------------------------------------------------- synthetic cells


def test_finds_every_drawn_cell(mixed_field: tuple[ClassicalResult, list[Drawn]]) -> None:
    result, drawn = mixed_field
    assert len(result.cells) == len(drawn)
    for cell in drawn:
        found = result.cells[nearest(result, cell.x, cell.y)]
        assert math.hypot(found.x - cell.x, found.y - cell.y) < 1.5
        # A disc of radius 10 px has about pi * 100 pixels.
        assert found.area_px == pytest.approx(math.pi * 100, rel=0.1)


def test_membrane_classes_match_drawing(
        mixed_field: tuple[ClassicalResult, list[Drawn]]) -> None:
    result, drawn = mixed_field
    for cell in drawn:
        found = result.cells[nearest(result, cell.x, cell.y)]
        assert found.membrane_class is cell.pattern.expected, (cell, found)


def test_intensity_and_completeness_match_drawing(
        mixed_field: tuple[ClassicalResult, list[Drawn]]) -> None:
    result, drawn = mixed_field
    for cell in drawn:
        found = result.cells[nearest(result, cell.x, cell.y)]
        if cell.pattern.od == 0.0:
            assert found.intensity_od == 0.0
            assert found.completeness == 0.0
            continue
        assert found.intensity_od == pytest.approx(cell.pattern.od, abs=0.08)
        # Sectors cut by the end of an arc may count: a sector or two of slack.
        assert found.completeness == pytest.approx(cell.pattern.arc, abs=2.5 / 36)


def test_classes_survive_a_dim_exposure() -> None:
    rgb, drawn = synthetic_field(PATTERNS, exposure=0.75)
    result = score_classical(rgb, UM_PER_PX)
    assert len(result.cells) == len(drawn)
    for cell in drawn:
        found = result.cells[nearest(result, cell.x, cell.y)]
        assert found.membrane_class is cell.pattern.expected, (cell, found)


def test_stain_hugging_the_nucleus_is_not_membrane() -> None:
    # DAB right at the nucleus edge (r 10-11.5 px) is what unseparated haematoxylin looks
    # like after blur; the ring leaves that band out.
    strong = Pattern(0.9, 1.0, MembraneClass.COMPLETE_INTENSE)
    rgb, drawn = synthetic_field((strong,), height=300, width=400, membrane_r=10.0)
    result = score_classical(rgb, UM_PER_PX)
    assert len(result.cells) == len(drawn)
    assert all(c.completeness == 0.0 for c in result.cells)
    # The same stain 3 µm out is membrane.
    rgb, _ = synthetic_field((strong,), height=300, width=400, membrane_r=16.0)
    assert all(c.membrane_class is MembraneClass.COMPLETE_INTENSE
               for c in score_classical(rgb, UM_PER_PX).cells)


def test_field_score_follows_the_rules(
        mixed_field: tuple[ClassicalResult, list[Drawn]]) -> None:
    result, drawn = mixed_field
    truth = score_field([d.pattern.expected for d in drawn], RulesConfig())
    assert isinstance(result.score, FieldScore)
    assert isinstance(truth, FieldScore)
    assert result.score.score is truth.score
    assert result.score.tumour_cells == len(drawn)


@pytest.mark.parametrize(("pattern", "score"), [
    (Pattern(0.9, 1.0, MembraneClass.COMPLETE_INTENSE), Score.THREE),
    (Pattern(0.45, 1.0, MembraneClass.COMPLETE_WEAK_MODERATE), Score.TWO),
    (Pattern(0.25, 0.5, MembraneClass.INCOMPLETE_FAINT), Score.ONE),
    (Pattern(0.0, 0.0, MembraneClass.NONE), Score.ZERO),
])
def test_uniform_fields_get_their_score(pattern: Pattern, score: Score) -> None:
    rgb, drawn = synthetic_field((pattern,), height=300, width=400)
    result = score_classical(rgb, UM_PER_PX)
    assert isinstance(result.score, FieldScore), result.score
    assert result.score.score is score
    assert result.score.tumour_cells == len(drawn)


def test_size_filter_follows_pixel_size() -> None:
    rgb, _ = synthetic_field(PATTERNS[:1], height=300, width=400)
    # At 0.2 µm/px the same 10 px nuclei are 12.6 µm²: too small for tumour nuclei.
    result = score_classical(rgb, 0.2)
    assert result.cells == ()
    assert isinstance(result.score, NotScorable)
    assert result.score.code == "too_few_tumour_cells"


def test_cells_cut_by_the_border_are_left_out() -> None:
    rgb, drawn = synthetic_field(PATTERNS[3:4], height=300, width=400)
    first_column = min(d.x for d in drawn)
    # Cropping through the first column's nuclei leaves them (and their rings) cut.
    crop = int(first_column)
    result = score_classical(np.ascontiguousarray(rgb[:, crop:]), UM_PER_PX)
    kept = [d for d in drawn if d.x != first_column]
    assert len(result.cells) == len(kept)
    assert all(c.x + crop > first_column + 20 for c in result.cells)


def test_thresholds_come_from_measure_config() -> None:
    rgb, drawn = synthetic_field((PATTERNS[2],), height=300, width=400)  # complete 0.5 OD
    strict = MeasureConfig(intensity_thresholds=[0.6, 0.7, 0.8])
    result = score_classical(rgb, UM_PER_PX, measure=strict)
    assert len(result.cells) == len(drawn)
    assert all(c.membrane_class is MembraneClass.NONE for c in result.cells)


def test_blank_glass_is_not_scorable() -> None:
    rgb = compose(np.zeros((200, 300)), np.zeros((200, 300)), noise=2.0)
    result = score_classical(rgb, UM_PER_PX)
    assert result.cells == ()
    assert isinstance(result.score, NotScorable)
    assert result.score.code == "too_few_tumour_cells"


def test_timings_per_stage(
        mixed_field: tuple[ClassicalResult, list[Drawn]]) -> None:
    result, _ = mixed_field
    stages = {"deconvolution", "nuclei", "rings", "rules"}
    assert stages <= set(result.timings_ms)
    assert all(result.timings_ms[s] >= 0 for s in stages)
    assert result.timings_ms["total"] == pytest.approx(
        sum(result.timings_ms[s] for s in stages))


# ---------------------------------------------------------------- a real IHC picture


def test_skimage_ihc_image_gives_sensible_numbers() -> None:
    rgb = data.immunohistochemistry()  # colonic glands, membranous DAB, about 0.5 µm/px
    result = score_classical(rgb, UM_PER_PX)
    params = ClassicalParams()
    assert len(result.cells) >= 50
    height, width = rgb.shape[:2]
    for cell in result.cells:
        assert 0 <= cell.x < width and 0 <= cell.y < height
        area_um2 = cell.area_px * UM_PER_PX**2
        assert params.min_nucleus_um2 <= area_um2 <= params.max_nucleus_um2
        assert 0.0 <= cell.completeness <= 1.0
        assert 0.0 <= cell.intensity_od < 3.0
    assert isinstance(result.score, FieldScore)
    assert sum(result.score.percent.values()) == pytest.approx(100.0)
    # The glands' membranes are plainly brown: a reading of 0 or 1+ means the OD scale is off.
    assert result.score.score in (Score.TWO, Score.THREE)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((64, 64), dtype=np.uint8), "H x W x 3"),
    (np.zeros((64, 64, 4), dtype=np.uint8), "H x W x 3"),
    (np.zeros((64, 64, 3), dtype=np.float64), "uint8"),
    (np.zeros((4, 64, 3), dtype=np.uint8), "too small"),
])
def test_rejects_bad_images(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_classical(image, UM_PER_PX)


@pytest.mark.parametrize("um_per_px", [0.0, -0.5, float("nan"), float("inf")])
def test_rejects_bad_pixel_size(um_per_px: float) -> None:
    with pytest.raises(ValueError, match="um_per_px"):
        score_classical(np.full((64, 64, 3), 255, dtype=np.uint8), um_per_px)
