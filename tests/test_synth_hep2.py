"""The generated HEp-2 IIF fields: reproducible, honest per-cell truth, plausible pictures."""

from __future__ import annotations

import dataclasses
import time
from functools import lru_cache

import cv2
import numpy as np
import pytest
from skimage.feature import peak_local_max

from appliance.assays.hep2.patterns import BY_NAME, NAMES
from tools.synth.hep2_fields import (
    NEGATIVE_BELOW,
    Hep2Field,
    Hep2FieldSpec,
    brightest_mean,
    generate_hep2_field,
    region_of,
)

POSITIVE = tuple(n for n in NAMES if n != "negative")


@lru_cache(maxsize=64)
def _field(pattern: str, seed: int = 3, umpp: float = 0.3, intensity: float = 100.0,
           mitotic: float = 0.05, size: tuple[int, int] = (480, 360)) -> Hep2Field:
    """A sharp, unbleached field of one pattern (cached: several tests look at it)."""
    return generate_hep2_field(Hep2FieldSpec(
        seed=seed, width=size[0], height=size[1], um_per_px=umpp, patterns=((pattern, 1.0),),
        intensity=intensity, mitotic_fraction=mitotic, density=0.35, defocus_um=0.0,
        photobleaching=0.0))


def _green(f: Hep2Field) -> np.ndarray:
    return f.image[..., 1].astype(np.float64)


def _background(f: Hep2Field) -> float:
    return float(np.median(_green(f)[f.cell_labels == 0]))


def _whole_interphase(f: Hep2Field) -> list:
    return [c for c in f.cells if not c.mitotic and not c.touches_edge]


def _local_background(f: Hep2Field, cell_id: int) -> float:
    """Median of the cell-free pixels 2-6 µm around the cell."""
    um = 1.0 / f.um_per_px
    mine = (f.cell_labels == cell_id).astype(np.uint8)
    far = cv2.dilate(mine, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(12 * um) | 1,) * 2))
    near = cv2.dilate(mine, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(4 * um) | 1,) * 2))
    ring = (far > 0) & (near == 0) & (f.cell_labels == 0)
    return float(np.median(_green(f)[ring])) if ring.sum() >= 20 else float("nan")


def _measured_cells(f: Hep2Field) -> dict[int, float]:
    """Each whole interphase cell's brightness by the assay's definition, on the image."""
    top = brightest_mean(_green(f), f.cell_labels, len(f.cells))
    out = {}
    for c in _whole_interphase(f):
        bg = _local_background(f, c.cell_id)
        if np.isfinite(bg):
            out[c.cell_id] = float(top[c.cell_id] - bg)
    return out


# ------------------------------------------------------------------------------ basics


def test_same_spec_same_field_and_resolved_spec_regenerates() -> None:
    spec = Hep2FieldSpec(seed=11, width=320, height=240)
    a, b = generate_hep2_field(spec), generate_hep2_field(spec)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.cell_labels, b.cell_labels)
    assert a.cells == b.cells and a.patterns == b.patterns
    again = generate_hep2_field(a.spec)
    assert np.array_equal(again.image, a.image) and again.cells == a.cells
    other = generate_hep2_field(Hep2FieldSpec(seed=12, width=320, height=240))
    assert not np.array_equal(other.image, a.image)


def test_resolved_spec_fills_every_choice_in_range() -> None:
    for seed in range(6):
        s = generate_hep2_field(Hep2FieldSpec(seed=seed, width=200, height=160)).spec
        assert s.um_per_px is not None and 0.25 <= s.um_per_px <= 1.0
        assert s.patterns is not None and s.patterns[0][0] in NAMES
        assert s.mitotic_fraction is not None and 0.02 <= s.mitotic_fraction <= 0.08
        assert s.density is not None and 0.15 <= s.density <= 0.45
        assert s.photobleaching is not None and 0.0 <= s.photobleaching <= 0.3
        assert s.intensity is not None
        lo, hi = (2, 15) if s.patterns[0][0] == "negative" else (25, 250)
        assert lo <= s.intensity <= hi


def test_labels_and_truth_agree() -> None:
    f = _field("homogeneous", mitotic=0.2)
    assert f.image.shape == (360, 480, 3) and f.image.dtype == np.uint8
    assert f.cell_labels.dtype == np.int32 and f.nucleus_labels.dtype == np.int32
    nuc = f.nucleus_labels > 0
    # Every nucleus pixel belongs to the same cell; every cell has a nucleus.
    assert np.array_equal(f.cell_labels[nuc], f.nucleus_labels[nuc])
    ids = {c.cell_id for c in f.cells}
    assert ids == set(np.unique(f.nucleus_labels).tolist()) - {0}
    for c in f.cells:
        assert f.nucleus_labels[round(c.y), round(c.x)] == c.cell_id or c.mitotic
    assert any(c.mitotic for c in f.cells) and any(not c.mitotic for c in f.cells)
    border = set(np.concatenate([f.cell_labels[0], f.cell_labels[-1], f.cell_labels[:, 0],
                                 f.cell_labels[:, -1]]).tolist()) - {0}
    assert border <= {c.cell_id for c in f.cells if c.touches_edge}


def test_bad_specs_are_refused_with_the_reason() -> None:
    cases = [
        (Hep2FieldSpec(seed=1, patterns=(("speckly", 1.0),)), "unknown pattern"),
        (Hep2FieldSpec(seed=1, patterns=(("negative", 0.5), ("homogeneous", 0.5))),
         "cannot include 'negative'"),
        (Hep2FieldSpec(seed=1, width=10), "outside 64..8192"),
        (Hep2FieldSpec(seed=1, patterns=(("golgi", 0.0),)), "must be > 0"),
        (Hep2FieldSpec(seed=1, photobleaching=0.9), "photobleaching"),
        (Hep2FieldSpec(seed=1, patterns=(("negative", 1.0),), intensity=40.0), "below 20"),
    ]
    for spec, words in cases:
        with pytest.raises(ValueError, match=words):
            generate_hep2_field(spec)
    with pytest.raises(ValueError, match="unknown HEp-2 pattern"):
        region_of("speckly")


def test_brightest_mean_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (40, 50)).astype(np.int32)
    values = rng.uniform(0, 100, (40, 50))
    got = brightest_mean(values, labels, 5)
    assert np.isnan(got[0])
    for i in range(1, 5):
        v = np.sort(values[labels == i])[::-1]
        k = max(1, round(0.05 * v.size))
        assert got[i] == pytest.approx(v[:k].mean(), rel=1e-6)


def test_a_default_field_is_fast() -> None:
    spec = Hep2FieldSpec(seed=5, um_per_px=1.0, density=0.45)  # the most cells
    generate_hep2_field(spec)
    start = time.perf_counter()
    generate_hep2_field(spec)
    # Well under 1 s alone; the bound leaves room for a shared, busy test machine.
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------ intensity


@pytest.mark.parametrize("pattern", POSITIVE)
def test_intensity_definition_holds_on_the_image(pattern: str) -> None:
    f = _field(pattern, umpp=0.5, intensity=80.0, size=(400, 300))
    measured = _measured_cells(f)
    assert len(measured) >= 5
    specimen = float(np.median(list(measured.values())))
    assert specimen == pytest.approx(f.intensity, rel=0.15)
    truth = {c.cell_id: c.brightness for c in f.cells}
    ratios = np.array([measured[i] / truth[i] for i in measured])
    assert np.median(np.abs(ratios - 1.0)) < 0.15


def test_intensity_holds_on_randomly_drawn_fields() -> None:
    checked = 0
    for seed in range(300, 310):
        f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=400, height=300,
                                              photobleaching=0.0))
        measured = _measured_cells(f)
        if not f.positive or len(measured) < 5:
            continue
        checked += 1
        specimen = float(np.median(list(measured.values())))
        assert specimen == pytest.approx(f.intensity, rel=0.15), (seed, f.patterns)
    assert checked >= 5


def test_exposure_and_bleaching_scale_the_image_not_the_truth() -> None:
    base = dict(seed=8, width=320, height=240, um_per_px=0.5, patterns=(("homogeneous", 1.0),),
                intensity=50.0, photobleaching=0.0, defocus_um=0.0)
    one = generate_hep2_field(Hep2FieldSpec(**base))  # type: ignore[arg-type]
    two = generate_hep2_field(Hep2FieldSpec(**base, exposure=2.0))  # type: ignore[arg-type]
    faded = generate_hep2_field(Hep2FieldSpec(**{**base, "photobleaching": 0.5}))  # type: ignore[arg-type]
    assert one.cells == two.cells == faded.cells
    m1 = np.median(list(_measured_cells(one).values()))
    assert np.median(list(_measured_cells(two).values())) == pytest.approx(2 * m1, rel=0.1)
    assert np.median(list(_measured_cells(faded).values())) == pytest.approx(0.5 * m1, rel=0.15)


def test_negative_fields_read_below_the_cut_off() -> None:
    for seed in range(3):
        f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=400, height=300,
                                              patterns=(("negative", 1.0),), photobleaching=0.0))
        assert not f.positive and f.patterns == ("negative",)
        assert f.intensity < NEGATIVE_BELOW
        measured = _measured_cells(f)
        assert measured and np.median(list(measured.values())) < NEGATIVE_BELOW


def test_pictures_are_plausible_fluorescence() -> None:
    for seed in range(8):
        f = generate_hep2_field(Hep2FieldSpec(seed=100 + seed, width=320, height=240))
        rgb = f.image.reshape(-1, 3).astype(np.float64)
        assert np.median(rgb[:, 1]) < 30, "background must be dark"
        cells = f.cell_labels.ravel() > 0
        means = rgb[cells].mean(axis=0)
        assert means[1] > means[0] and means[1] > means[2], f"green not strongest: {means}"
        assert rgb[:, 0].max() > 0 and rgb[:, 2].max() > 0  # sensor noise, bleed


# ------------------------------------------------------------------------------ patterns


def _nucleus_maxima(f: Hep2Field, cell_id: int) -> int:
    """Distinct bright peaks in a nucleus, ignoring noise-sized wiggles."""
    g = cv2.GaussianBlur(_green(f), (0, 0), 0.7)
    bg = _background(f)
    truth = next(c for c in f.cells if c.cell_id == cell_id)
    ys, xs = np.nonzero(f.nucleus_labels == cell_id)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(f.nucleus_labels[y0:y1, x0:x1] == cell_id, g[y0:y1, x0:x1], bg)
    peaks = peak_local_max(crop, min_distance=1, threshold_abs=bg + 0.3 * truth.brightness,
                           exclude_border=False)
    return len(peaks)


def test_centromere_nuclei_hold_many_discrete_dots() -> None:
    f = _field("centromere", umpp=0.25)
    counts = [_nucleus_maxima(f, c.cell_id) for c in _whole_interphase(f)]
    assert len(counts) >= 4 and np.median(counts) >= 30
    control = _field("homogeneous", umpp=0.25)
    assert np.median([_nucleus_maxima(control, c.cell_id)
                      for c in _whole_interphase(control)]) < 15


def test_nuclear_dots_counts_follow_the_kind() -> None:
    many = _field("multiple_nuclear_dots", umpp=0.25)
    few = _field("few_nuclear_dots", umpp=0.25)
    n_many = np.median([_nucleus_maxima(many, c.cell_id) for c in _whole_interphase(many)])
    n_few = np.median([_nucleus_maxima(few, c.cell_id) for c in _whole_interphase(few)])
    assert 5 <= n_many <= 22 and 1 <= n_few <= 6


def _brightest_in(f: Hep2Field, region: np.ndarray) -> float:
    """Share of each whole interphase cell's brightest 5% pixels inside ``region``."""
    g = _green(f)
    shares = []
    for c in _whole_interphase(f):
        mine = f.cell_labels == c.cell_id
        vals = g[mine]
        k = max(1, round(0.05 * vals.size))
        top = np.argsort(vals)[-k:]
        shares.append(region[mine][top].mean())
    return float(np.median(shares))


@pytest.mark.parametrize("pattern", ["nucleolar_homogeneous", "nucleolar_clumpy",
                                     "nucleolar_punctate"])
def test_nucleolar_patterns_light_the_nucleoli(pattern: str) -> None:
    f = _field(pattern)
    um = 1.0 / f.um_per_px
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(2 * um) | 1,) * 2)
    nucleoli = cv2.dilate((f.nucleoli_labels > 0).astype(np.uint8), kernel) > 0
    assert _brightest_in(f, nucleoli) >= 0.7
    control = _field("fine_speckled")  # nucleoli spared: their brightest pixels lie elsewhere
    ctrl = cv2.dilate((control.nucleoli_labels > 0).astype(np.uint8), kernel) > 0
    assert _brightest_in(control, ctrl) < 0.4


@pytest.mark.parametrize("pattern", ["envelope_smooth", "envelope_punctate"])
def test_envelope_rim_is_brighter_than_the_centre(pattern: str) -> None:
    f = _field(pattern)
    um = 1.0 / f.um_per_px
    g = _green(f) - _background(f)
    depth = cv2.distanceTransform((f.nucleus_labels > 0).astype(np.uint8), cv2.DIST_L2, 3)
    ratios = []
    for c in _whole_interphase(f):
        mine = f.nucleus_labels == c.cell_id
        rim, centre = mine & (depth <= 1.5 * um), mine & (depth >= 3.0 * um)
        if centre.sum() > 10:
            ratios.append(g[rim].mean() / max(g[centre].mean(), 1.0))
    assert len(ratios) >= 4 and np.median(ratios) > 2.0


def _centroid_offset_um(f: Hep2Field) -> float:
    """Median distance between a cell's brightness centroid and its nucleus centre."""
    g = np.clip(_green(f) - _background(f), 0, None)
    out = []
    for c in _whole_interphase(f):
        ys, xs = np.nonzero(f.cell_labels == c.cell_id)
        wts = g[ys, xs]
        cx, cy = (xs * wts).sum() / wts.sum(), (ys * wts).sum() / wts.sum()
        out.append(np.hypot(cx - c.x, cy - c.y) * f.um_per_px)
    return float(np.median(out))


def test_golgi_staining_sits_on_one_side_of_the_nucleus() -> None:
    assert _centroid_offset_um(_field("golgi")) > 2.0
    assert _centroid_offset_um(_field("homogeneous")) < 1.0


def _coherence(f: Hep2Field) -> float:
    """Median structure-tensor coherence over each cell's cytoplasm (1 = all one way)."""
    g = cv2.GaussianBlur(_green(f), (0, 0), 0.6)
    gx, gy = cv2.Sobel(g, cv2.CV_64F, 1, 0), cv2.Sobel(g, cv2.CV_64F, 0, 1)
    out = []
    for c in _whole_interphase(f):
        cyto = (f.cell_labels == c.cell_id) & (f.nucleus_labels == 0)
        jxx, jyy, jxy = (gx[cyto] ** 2).sum(), (gy[cyto] ** 2).sum(), (gx[cyto] * gy[cyto]).sum()
        out.append(np.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-9))
    return float(np.median(out))


def test_fibrillar_cytoplasm_is_strongly_oriented() -> None:
    assert _coherence(_field("cyto_fibrillar")) > 0.3
    assert _coherence(_field("cyto_speckled")) < 0.2


def test_cytoplasmic_patterns_light_the_cytoplasm_and_nuclear_ones_the_nucleus() -> None:
    for name in POSITIVE:
        f = _field(name)
        g = _green(f) - _background(f)
        cyto = (f.cell_labels > 0) & (f.nucleus_labels == 0)
        ratio = g[cyto].mean() / g[f.nucleus_labels > 0].mean()
        if BY_NAME[name].compartment == "cytoplasmic":
            assert ratio > 1.0, name
        elif name in ("homogeneous", "dense_fine_speckled", "fine_speckled"):
            assert ratio < 0.5, name


# ------------------------------------------------------------------------------ metaphase


@pytest.mark.parametrize("pattern", ["homogeneous", "dense_fine_speckled", "centromere",
                                     "fine_speckled", "coarse_speckled"])
def test_metaphase_plates_stain_per_the_table(pattern: str) -> None:
    f = _field(pattern, mitotic=0.3, seed=21)
    g = _green(f) - _background(f)
    um = 1.0 / f.um_per_px
    stained = BY_NAME[pattern].metaphase != "unstained"
    mitotic = [c for c in f.cells if c.mitotic and not c.touches_edge]
    assert len(mitotic) >= 3
    for c in mitotic:
        assert c.plate_stained == stained
        plate = f.nucleus_labels == c.cell_id
        ring = cv2.dilate(plate.astype(np.uint8), np.ones((int(4 * um) | 1,) * 2, np.uint8)) > 0
        around = ring & ~plate & (f.cell_labels == c.cell_id)
        contrast = g[plate].mean() / max(g[around].mean(), 1.0)
        assert (contrast > 1.5) if stained else (contrast < 0.7), (c.cell_id, contrast)
    assert all(not c.plate_stained for c in f.cells if not c.mitotic)


def test_speckled_metaphase_cytoplasm_glows_and_homogeneous_does_not() -> None:
    def glow(name: str) -> float:
        f = _field(name, mitotic=0.3, seed=21)
        g = _green(f) - _background(f)
        vals = [g[(f.cell_labels == c.cell_id) & (f.nucleus_labels == 0)].mean() / c.brightness
                for c in f.cells if c.mitotic]
        return float(np.median(vals))

    assert glow("fine_speckled") > 3 * glow("homogeneous")


# ------------------------------------------------------------------------------ mixed


def test_mixed_specimens_report_both_patterns() -> None:
    pairs = [("homogeneous", "nucleolar_clumpy"), ("centromere", "fine_speckled"),
             ("coarse_speckled", "golgi")]
    for seed, (a, b) in enumerate(pairs):
        f = generate_hep2_field(Hep2FieldSpec(
            seed=seed, width=480, height=360, um_per_px=0.5, patterns=((a, 0.6), (b, 0.4)),
            intensity=80.0))
        assert f.positive and f.patterns == (a, b)
        drawn = {c.pattern for c in f.cells}
        assert drawn == {a, b}
        share_b = np.mean([c.pattern == b for c in f.cells])
        assert 0.2 < share_b < 0.6


def test_shares_order_the_specimen_patterns() -> None:
    f = generate_hep2_field(Hep2FieldSpec(seed=4, width=320, height=240, um_per_px=0.6,
                                          patterns=(("golgi", 0.3), ("homogeneous", 0.7))))
    assert f.patterns == ("homogeneous", "golgi")
    assert f.spec.patterns is not None and f.spec.patterns[0] == ("homogeneous", 0.7)


def test_region_groups_cover_every_pattern() -> None:
    regions = {region_of(n) for n in NAMES}
    assert regions == {"none", "nucleoplasm", "nucleolus", "envelope", "cytoplasm"}
    for n in NAMES:
        compartment = BY_NAME[n].compartment
        assert (region_of(n) == "cytoplasm") == (compartment == "cytoplasmic")


def test_mixed_patterns_of_different_regions_sometimes_share_cells() -> None:
    """Nucleolar + cytoplasmic: separate cells leave the nucleolar cells' cytoplasm dark;
    compound cells light it. Both kinds of specimen must occur."""
    glow = []
    for seed in range(8):
        f = generate_hep2_field(Hep2FieldSpec(
            seed=seed, width=400, height=300, um_per_px=0.4, intensity=80.0,
            patterns=(("nucleolar_homogeneous", 0.5), ("cyto_speckled", 0.5))))
        g = _green(f) - _background(f)
        ratios = [g[(f.cell_labels == c.cell_id) & (f.nucleus_labels == 0)].mean()
                  / c.brightness for c in _whole_interphase(f)
                  if c.pattern == "nucleolar_homogeneous"]
        glow.append(float(np.median(ratios)))
    assert min(glow) < 0.07 and max(glow) > 0.15


def test_combined_flag_forces_compound_or_separate_cells_and_records_the_second() -> None:
    pair = (("centromere", 0.5), ("golgi", 0.5))
    base = Hep2FieldSpec(seed=11, width=400, height=300, um_per_px=0.5, intensity=80.0,
                         patterns=pair)
    compound = generate_hep2_field(dataclasses.replace(base, combined=True))
    separate = generate_hep2_field(dataclasses.replace(base, combined=False))
    for c in compound.cells:
        assert {c.pattern, c.second} == {"centromere", "golgi"}
    assert all(c.second is None for c in separate.cells)
    # The draw is made either way, so a spec that leaves it open regenerates as before.
    drawn = generate_hep2_field(base)
    again = generate_hep2_field(drawn.spec)
    np.testing.assert_array_equal(drawn.image, again.image)
    assert [c.second for c in drawn.cells] == [c.second for c in again.cells]


def test_combined_needs_two_patterns_of_different_regions() -> None:
    for patterns in ((("homogeneous", 1.0),), (("cyto_fibrillar", 0.5), ("golgi", 0.5))):
        with pytest.raises(ValueError, match="combined needs two patterns"):
            generate_hep2_field(Hep2FieldSpec(seed=1, patterns=patterns, combined=True))
