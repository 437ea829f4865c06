"""The synthetic HER2 field generator: reproducibility, exact truth, targets, OD, speed."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

import cv2
import numpy as np
import pytest

from appliance.assays.her2.rules import classify_membrane, score_field
from appliance.assays.her2.types import FieldScore, Intensity, MembraneClass
from appliance.config import MeasureConfig, RulesConfig, StainConfig
from tools import make_samples
from tools.synth import optics
from tools.synth.her2_fields import (
    MAX_BACKGROUND_DAB_OD,
    MEMBRANE_OD,
    CellTruth,
    FieldSpec,
    SyntheticField,
    build_scene,
    class_map,
    generate_field,
    render_scene,
)

W, H = 160, 120  # small fields where the size does not matter


@lru_cache(maxsize=32)
def field(seed: int, **kw: object) -> SyntheticField:
    """Fields are deterministic, so tests share them."""
    return generate_field(FieldSpec(seed=seed, **kw))  # type: ignore[arg-type]


def tumour(f: SyntheticField) -> list[CellTruth]:
    return [c for c in f.cells if c.kind == "tumour"]


# ------------------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_field() -> None:
    a = generate_field(FieldSpec(seed=11))
    b = generate_field(FieldSpec(seed=11))
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.nucleus_labels, b.nucleus_labels)
    assert a.cells == b.cells and a.spec == b.spec


def test_resolved_spec_regenerates_the_same_field() -> None:
    a = field(12)
    assert a.spec.um_per_px is not None and a.spec.target_score is not None
    b = generate_field(a.spec)
    assert np.array_equal(a.image, b.image)
    assert a.cells == b.cells


def test_different_seeds_differ() -> None:
    assert not np.array_equal(field(1).image, field(2).image)


def test_no_global_random_state_is_used() -> None:
    np.random.seed(0)
    a = generate_field(FieldSpec(seed=5, width=W, height=H))
    np.random.seed(999)
    b = generate_field(FieldSpec(seed=5, width=W, height=H))
    assert np.array_equal(a.image, b.image)


# ---------------------------------------------------------------------------- exact truth


@pytest.mark.parametrize("seed", [3, 4, 7])
def test_masks_are_consistent_with_cells(seed: int) -> None:
    f = field(seed)
    h, w = f.image.shape[:2]
    assert f.image.dtype == np.uint8 and f.image.shape == (h, w, 3)
    assert f.nucleus_labels.dtype == np.int32 and f.nucleus_labels.shape == (h, w)
    ids = {c.cell_id for c in f.cells}
    present = set(np.unique(f.nucleus_labels)) - {0}
    assert present == ids
    tumour_ids = [c.cell_id for c in f.cells if c.kind == "tumour"]
    assert np.array_equal(f.tumour_nuclei, np.isin(f.nucleus_labels, tumour_ids))
    assert np.array_equal(f.other_nuclei, (f.nucleus_labels > 0) & ~f.tumour_nuclei)
    # Membranes are drawn inside their cell, clear of every nucleus.
    assert not (f.membrane & (f.nucleus_labels > 0)).any()
    for c in f.cells:
        ys, xs = np.nonzero(f.nucleus_labels == c.cell_id)
        assert c.x == pytest.approx(xs.mean()) and c.y == pytest.approx(ys.mean())


@pytest.mark.parametrize("seed", [3, 4])
def test_cell_classes_follow_the_rule_engine(seed: int) -> None:
    f = field(seed)
    complete_fraction = MeasureConfig().complete_fraction
    for c in f.cells:
        if c.kind != "tumour":
            assert c.intensity is None and c.membrane_class is None and c.completeness == 0
            continue
        assert c.intensity is not None
        assert c.membrane_class == classify_membrane(c.intensity, c.completeness,
                                                     complete_fraction)
        if c.intensity is Intensity.NONE:
            assert c.completeness == 0.0
        else:
            # What is seen at the outline: own arcs plus the bands of stained neighbours.
            assert 0.0 < c.completeness <= 1.0
    classes = [c.membrane_class for c in tumour(f) if c.membrane_class is not None]
    assert len(classes) == len(tumour(f))
    result = score_field(classes, RulesConfig())
    assert isinstance(result, FieldScore)
    assert (f.score, f.category) == (result.score.value, result.category.value)


def test_class_map_layers() -> None:
    f = field(4)
    cm = class_map(f)
    assert cm.dtype == np.uint8 and set(np.unique(cm)) <= {0, 1, 2, 3}
    assert np.array_equal(cm == 1, f.tumour_nuclei)
    assert np.array_equal(cm == 2, f.other_nuclei)
    assert np.array_equal(cm == 3, f.membrane & ~(f.tumour_nuclei | f.other_nuclei))
    assert (cm == 3).any() and (cm == 0).any()


def test_unstained_cells_have_no_membrane() -> None:
    scene = build_scene(FieldSpec(seed=21, pattern="null"))
    cells = [c for c in scene.cells if c.kind == "tumour"]
    assert len(cells) >= 20 and all(c.intensity is Intensity.NONE for c in cells)
    assert scene.membrane_owner.max() <= 0  # at most border cells with unseen nuclei


# ------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("score", ["0", "1+", "2+", "3+"])
@pytest.mark.parametrize("seed", [31, 32])
def test_target_score_is_the_true_score(score: str, seed: int) -> None:
    f = generate_field(FieldSpec(seed=seed, target_score=score))
    assert f.score == score
    assert f.spec.target_score == score


@pytest.mark.parametrize("seed", [41, 42])
def test_patterns_give_their_category(seed: int) -> None:
    null = generate_field(FieldSpec(seed=seed, pattern="null"))
    assert (null.score, null.category) == ("0", "HER2-null")
    ultralow = generate_field(FieldSpec(seed=seed, pattern="ultralow"))
    assert (ultralow.score, ultralow.category) == ("0", "HER2-ultralow")

    intense = generate_field(FieldSpec(seed=seed, pattern="unusual_intense"))
    counts = Counter(c.membrane_class for c in tumour(intense))
    n = len(tumour(intense))
    assert intense.score == "2+"
    assert 0 < counts[MembraneClass.COMPLETE_INTENSE] * 100 <= 10 * n

    baso = generate_field(FieldSpec(seed=seed, pattern="unusual_basolateral"))
    counts = Counter(c.membrane_class for c in tumour(baso))
    n = len(tumour(baso))
    assert baso.score == "2+"
    assert counts[MembraneClass.INCOMPLETE_MODERATE_INTENSE] * 100 > 10 * n
    # U shapes of neighbours can close a cell's outline, but not into a 3+ field.
    assert counts[MembraneClass.COMPLETE_INTENSE] * 100 <= 10 * n


def test_scorable_at_high_power() -> None:
    f = generate_field(FieldSpec(seed=8, um_per_px=0.25, target_score="1+"))
    assert len(tumour(f)) >= RulesConfig().min_tumour_cells
    assert f.score == "1+"


def test_typical_cell_count_at_20x() -> None:
    counts = [len(tumour(generate_field(FieldSpec(seed=s, um_per_px=0.5)))) for s in (1, 2)]
    assert all(40 <= n <= 400 for n in counts), counts


def test_empty_field_is_glass_only() -> None:
    f = generate_field(FieldSpec(seed=3, tissue="empty", width=W, height=H))
    assert f.cells == () and not f.membrane.any() and f.nucleus_labels.max() == 0
    assert f.score is None and f.category is None


def test_fat_field_is_mostly_empty_vacuoles() -> None:
    scene = build_scene(FieldSpec(seed=3, tissue="fat"))
    stained = (scene.hematoxylin + scene.dab) > 0.05
    assert stained.mean() < 0.5


# ----------------------------------------------------------------------------- scale


def test_um_per_px_random_range() -> None:
    scales = [generate_field(FieldSpec(seed=s, tissue="empty", width=32, height=32)).um_per_px
              for s in range(40)]
    assert all(0.25 <= u <= 1.0 for u in scales)
    assert min(scales) < 0.4 and max(scales) > 0.75  # the whole range is used


def test_um_per_px_given_is_kept() -> None:
    assert generate_field(FieldSpec(seed=1, um_per_px=0.4, width=W, height=H)).um_per_px == 0.4


# ---------------------------------------------------------------------------- stain OD


def test_od_ranges_straddle_the_rule_thresholds() -> None:
    faint, moderate, strong = MeasureConfig().intensity_thresholds
    assert faint < MEMBRANE_OD[Intensity.FAINT][0] < MEMBRANE_OD[Intensity.FAINT][1] < moderate
    assert moderate < MEMBRANE_OD[Intensity.MODERATE][0] < MEMBRANE_OD[Intensity.MODERATE][1]
    assert MEMBRANE_OD[Intensity.MODERATE][1] < strong < MEMBRANE_OD[Intensity.STRONG][0]
    assert faint > MAX_BACKGROUND_DAB_OD


def _deconvolve_dab(rgb: np.ndarray) -> np.ndarray:
    """DAB OD by colour deconvolution with the un-jittered vectors plus the grey residual."""
    stain = StainConfig()
    mat = np.stack([np.asarray(stain.hematoxylin) / np.linalg.norm(stain.hematoxylin),
                    np.asarray(stain.dab) / np.linalg.norm(stain.dab),
                    np.full(3, 1.0 / np.sqrt(3.0))])
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    return (od @ np.linalg.inv(mat))[:, :, 1]


@pytest.mark.parametrize("spec", [
    FieldSpec(seed=51, target_score="2+", um_per_px=0.5),
    FieldSpec(seed=52, target_score="3+", um_per_px=0.9),
])
def test_membrane_od_per_intensity(spec: FieldSpec) -> None:
    scene = build_scene(spec)
    measured = _deconvolve_dab(render_scene(scene, camera=False))
    seen: set[Intensity] = set()
    for c in scene.cells:
        if c.kind != "tumour":
            continue
        own = scene.membrane_owner == c.cell_id
        if not own.any():
            continue  # no arcs of its own (unstained), or they lie outside the field
        drawn = scene.dab[own]
        # Each cell's own arcs are drawn at one OD inside one intensity band (its truth may
        # read higher when a neighbour's stronger band lines its outline).
        (band,) = [i for i, (lo, hi) in MEMBRANE_OD.items()
                   if lo <= drawn.min() and drawn.max() <= hi]
        lo, hi = MEMBRANE_OD[band]
        # 8-bit quantisation costs at most ~0.01 OD at these densities.
        assert lo - 0.02 <= float(np.median(measured[own])) <= hi + 0.02
        seen.add(band)
    assert len(seen) >= 2
    off = scene.membrane_owner == 0
    assert scene.dab[off].max() <= MAX_BACKGROUND_DAB_OD


def test_membrane_lines_are_at_least_one_and_a_half_pixels() -> None:
    scene = build_scene(FieldSpec(seed=61, target_score="1+", um_per_px=1.0))
    mem = (scene.membrane_owner != 0).astype(np.uint8)
    # The widest inscribed distance along a faint line: >= 1 px means >= 2 px across.
    dist = cv2.distanceTransform(mem, cv2.DIST_L2, 3)
    assert np.percentile(dist[mem > 0], 99) >= 1.0


# ------------------------------------------------------------------------------ optics


def test_defocus_blurs_the_field() -> None:
    def sharpness(img: np.ndarray) -> float:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.mean(cv2.Laplacian(grey, cv2.CV_32F) ** 2))

    sharp = generate_field(FieldSpec(seed=71, defocus_um=0.0, jpeg_quality=95))
    blurred = generate_field(FieldSpec(seed=71, defocus_um=3.0, jpeg_quality=95))
    assert np.array_equal(sharp.nucleus_labels, blurred.nucleus_labels)
    assert sharpness(blurred.image) < 0.5 * sharpness(sharp.image)


def test_optics_building_blocks() -> None:
    rng = np.random.default_rng(0)
    k = optics.disc_kernel(3.5)
    assert k.sum() == pytest.approx(1.0, abs=1e-5) and k.shape == (11, 11)
    light = optics.illumination_field(rng, 48, 64, vignetting=0.3, unevenness=0.2)
    assert light.shape == (48, 64) and light.max() == pytest.approx(1.0)
    assert light.min() < 0.95
    noise = optics.smooth_noise(rng, 40, 50, 8.0, anisotropy=4.0, angle_deg=30.0)
    assert noise.shape == (40, 50) and abs(float(noise.mean())) < 1e-3
    img = np.full((32, 32, 3), 128, np.uint8)
    assert optics.jpeg_roundtrip(img, 80).shape == img.shape
    with pytest.raises(ValueError, match="quality"):
        optics.jpeg_roundtrip(img, 0)
    with pytest.raises(ValueError, match="chromatic"):
        optics.lateral_chromatic_aberration(np.zeros((8, 8), np.float32), 0.001, (0.0, 0.0))


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("kw", "reason"), [
    ({"target_score": "4+"}, "target_score"),
    ({"pattern": "speckled"}, "pattern"),
    ({"pattern": "null", "target_score": "3+"}, "not the target"),
    ({"tissue": "bone"}, "tissue"),
    ({"tissue": "empty", "target_score": "1+"}, "empty"),
    ({"width": 8}, "size"),
    ({"um_per_px": 0.0}, "um_per_px"),
    ({"jpeg_quality": 101}, "jpeg_quality"),
    ({"defocus_um": -1.0}, "defocus_um"),
])
def test_invalid_specs_are_refused_with_the_reason(kw: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        FieldSpec(seed=1, **kw)


# --------------------------------------------------------------------------------- speed


# ------------------------------------------------------------------------ make_samples


def test_make_samples_writes_fields_and_truth(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "samples"
    rc = make_samples.main(["--out", str(out), "--count", "4", "--seed", "2",
                            "--width", "96", "--height", "64", "--masks"])
    assert rc == 0
    records = [json.loads((out / f"field_{i:03d}.json").read_text()) for i in range(4)]
    assert sorted(r["spec"]["target_score"] for r in records) == ["0", "1+", "2+", "3+"]
    for i, rec in enumerate(records):
        img = cv2.imread(str(out / rec["image"]))
        classes = cv2.imread(str(out / f"field_{i:03d}_classes.png"), cv2.IMREAD_UNCHANGED)
        assert img is not None and classes is not None
        assert img.shape == (64, 96, 3) and classes.shape == (64, 96)
        assert classes.max() <= 3
        assert rec["tumour_cells"] == sum(c["kind"] == "tumour" for c in rec["cells"])
        # The JSON spec regenerates exactly the written truth.
        regen = generate_field(FieldSpec(**rec["spec"]))
        assert regen.score == rec["score"] and len(regen.cells) == len(rec["cells"])


def test_make_samples_refuses_bad_arguments(tmp_path: object) -> None:
    with pytest.raises(SystemExit):
        make_samples.main(["--out", str(tmp_path), "--count", "0", "--seed", "1"])
    assert make_samples.main(["--out", str(tmp_path), "--count", "1", "--seed", "1",
                              "--width", "8"]) == 2
