"""Synthetic HEp-2 indirect immunofluorescence (ANA) fields with exact per-cell truth.

A field is built in four steps:

1. Cells are laid out (clustered, touching, cytoplasm may overlap, nuclei never do) and
   rasterised into three label images: whole cells, nuclei (the chromatin plate of a
   metaphase cell) and nucleoli.
2. Each pattern is a recipe of a few field-wide *components* (flat nucleoplasm, fine grain,
   coarse speckles, nucleoli, envelope rim, cytoplasm, reticular network) weighted per cell
   by label look-up, plus drawn dots (centromeres, nuclear dots, Golgi granules) and fibres.
   Only outlines and fibres are drawn cell by cell, so a 800x600 field takes 0.2-0.5 s.
3. Optics (blur, uneven illumination) act on the signal; the truth brightness of each cell
   is then measured on that noise-free signal with the assay's own definition (mean of the
   brightest 5% of the cell's pixels above background, 8-bit green grey levels at exposure
   1 without bleaching), and the whole signal is scaled so the median over interphase cells
   equals the specimen intensity. The truth is therefore what is drawn, not what was asked.
4. The camera adds background autofluorescence, channel bleed into red and blue, exposure,
   photobleaching, shot and read noise, 8-bit quantisation and sometimes JPEG.

Pattern names and the metaphase behaviour come from appliance.assays.hep2.patterns; what
each pattern looks like follows the ICAP descriptions (anapatterns.org; Chan et al. 2015,
reference/hep2-patterns.md). Everything random comes from the spec's seeds: the content
from ``seed``, the microscope and camera from ``camera_seed`` (shared by a well's fields).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from appliance.assays.hep2.patterns import BY_NAME, NAMES
from tools.synth import optics

NEGATIVE_BELOW = 20.0  # hep2.intensity.negative_below default: the screening cut-off
TOP_FRACTION = 0.05  # brightest share of a cell's pixels that defines its brightness
NEGATIVE_RANGE = (2.0, 15.0)  # calibrated units of a negative specimen (autofluorescence)
POSITIVE_RANGE = (25.0, 250.0)  # calibrated units of a positive specimen, log-uniform

# Which part of the cell a pattern stains: two patterns of different regions can share a
# cell (a "compound" mixed pattern); two of the same region can only be separate cells.
_REGION = {
    "negative": "none", "homogeneous": "nucleoplasm", "dense_fine_speckled": "nucleoplasm",
    "centromere": "nucleoplasm", "fine_speckled": "nucleoplasm",
    "coarse_speckled": "nucleoplasm", "multiple_nuclear_dots": "nucleoplasm",
    "few_nuclear_dots": "nucleoplasm", "nucleolar_homogeneous": "nucleolus",
    "nucleolar_clumpy": "nucleolus", "nucleolar_punctate": "nucleolus",
    "envelope_smooth": "envelope", "envelope_punctate": "envelope",
    "cyto_fibrillar": "cytoplasm", "cyto_speckled": "cytoplasm",
    "cyto_reticular": "cytoplasm", "golgi": "cytoplasm",
}


# ------------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Hep2FieldSpec:
    """What to generate; None fields are drawn from the seed (see the module docstring)."""

    seed: int
    width: int = 800
    height: int = 600
    um_per_px: float | None = None  # None: log-uniform in [0.25, 1.0] (40x..10x)
    # (pattern name, share of cells); None: one random pattern (negative included);
    # two entries = a mixed specimen.
    patterns: tuple[tuple[str, float], ...] | None = None
    intensity: float | None = None  # None: negative 2..15, positive 25..250 log-uniform
    mitotic_fraction: float | None = None  # None: 0.02..0.08 of cells in metaphase
    density: float | None = None  # fraction of the field covered by cells; None: 0.15..0.45
    camera_seed: int | None = None  # None: from seed; shared by the fields of one well
    defocus_um: float | None = None  # RMS blur at the specimen beyond the objective's PSF
    photobleaching: float | None = None  # 0..0.6 fraction of signal lost; None: 0..0.3
    exposure: float = 1.0  # multiplies the signal (camera exposure / gain)
    # Two patterns of different regions: True draws both in every cell (compound), False
    # gives each cell one of them (separate); None: drawn (half and half).
    combined: bool | None = None


@dataclass(frozen=True)
class Hep2CellTruth:
    """The drawn truth of one cell."""

    cell_id: int  # == label in cell_labels and nucleus_labels
    x: float  # nucleus centroid, pixels
    y: float
    pattern: str  # the cell's (dominant) pattern
    mitotic: bool  # metaphase cell
    plate_stained: bool  # the metaphase plate stains (False for interphase cells)
    brightness: float  # drawn brightness, calibrated units (exposure 1, no bleaching)
    touches_edge: bool  # cut by the image border
    second: str | None = None  # the other pattern of a compound mixed cell


@dataclass(frozen=True)
class Hep2Field:
    """A generated field, its label images and its truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, FITC green on a dark background
    um_per_px: float
    cell_labels: np.ndarray  # (H, W) int32, 0 background, cell_id inside each whole cell
    nucleus_labels: np.ndarray  # (H, W) int32, cell_id inside each nucleus / metaphase plate
    cells: tuple[Hep2CellTruth, ...]
    patterns: tuple[str, ...]  # specimen truth, strongest share first (("negative",) if neg.)
    intensity: float  # specimen intensity truth, calibrated units
    positive: bool
    spec: Hep2FieldSpec  # resolved: regenerates the same field
    nucleoli_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


# ------------------------------------------------------------------------------ public API


def generate_hep2_field(spec: Hep2FieldSpec) -> Hep2Field:
    """Generate one IIF field with its truth, reproducible from the spec's seeds."""
    problems = _spec_problems(spec)
    if problems:
        raise ValueError("cannot generate this HEp-2 field: " + "; ".join(problems))
    plan = _resolve(spec)
    rng = np.random.default_rng((plan.spec.seed, 1))
    cam = np.random.default_rng((int(plan.spec.camera_seed or 0), 2))
    style = _draw_style(rng, plan)
    cells = _place_cells(rng, plan, style)
    if not any(not c.mitotic for c in cells):
        raise ValueError(f"density {plan.density} left no interphase cell in a "
                         f"{spec.width}x{spec.height} field; raise density or the size")
    maps = _rasterise(cells, plan.spec.height, plan.spec.width, plan.umpp)
    relative = _draw_signal(rng, cells, maps, plan, style)
    light = _light(cam, plan.spec.height, plan.spec.width)
    optical = _optics(relative, light, plan)
    brightness = brightest_mean(optical, maps.cell, len(cells))
    scale = plan.intensity / _specimen_median(cells, brightness, maps.cell)
    image = _camera(cam, optical * scale, light, plan, style)
    truth = _truths(cells, brightness * scale, maps)
    positive = plan.positive
    names = tuple(n for n, _ in plan.patterns) if positive else ("negative",)
    return Hep2Field(
        image=image, um_per_px=plan.umpp, cell_labels=maps.cell,
        nucleus_labels=maps.nucleus, cells=truth, patterns=names,
        intensity=plan.intensity, positive=positive, spec=plan.spec,
        nucleoli_labels=maps.nucleoli,
    )


def brightest_mean(values: np.ndarray, labels: np.ndarray, n_labels: int,
                   fraction: float = TOP_FRACTION) -> np.ndarray:
    """Mean of the brightest ``fraction`` of each label's pixels, indexed by label.

    Index 0 (background) and labels without pixels give NaN. At least one pixel counts, so
    a tiny cell is its brightest pixel.
    """
    if values.shape != labels.shape:
        raise ValueError(f"values {values.shape} and labels {labels.shape} differ in shape")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    inside = labels > 0
    lab = labels[inside].astype(np.int64)
    val = values[inside].astype(np.float64)
    out = np.full(n_labels + 1, np.nan)
    if lab.size == 0:
        return out
    # One sort of label + value squeezed into [0, 0.5): each label's top k are its last k.
    lo, span = float(val.min()), float(np.ptp(val)) or 1.0
    key = np.sort(lab + 0.5 * (val - lo) / span)
    val = (key - np.floor(key)) * 2.0 * span + lo
    counts = np.bincount(lab, minlength=n_labels + 1)
    ends = np.cumsum(counts)
    csum = np.concatenate(([0.0], np.cumsum(val)))
    present = np.nonzero(counts)[0]
    k = np.maximum(1, np.rint(counts[present] * fraction)).astype(np.int64)
    top = csum[ends[present]] - csum[ends[present] - k]
    out[present] = top / k
    return out


def region_of(pattern_name: str) -> str:
    """The compartment region a pattern stains: none | nucleoplasm | nucleolus | envelope |
    cytoplasm (two patterns of different regions may share a cell)."""
    if pattern_name not in _REGION:
        raise ValueError(f"unknown HEp-2 pattern {pattern_name!r}; known: {', '.join(NAMES)}")
    return _REGION[pattern_name]


# ------------------------------------------------------------------------------ the plan


def _spec_problems(spec: Hep2FieldSpec) -> list[str]:
    """Every reason a spec cannot be generated, in words (empty when it is fine)."""
    p: list[str] = []
    if not (64 <= spec.width <= 8192 and 64 <= spec.height <= 8192):
        p.append(f"size {spec.width}x{spec.height} is outside 64..8192 px")
    if spec.um_per_px is not None and not 0.1 <= spec.um_per_px <= 3.0:
        p.append(f"um_per_px {spec.um_per_px} is outside 0.1..3")
    if spec.patterns is not None:
        p.extend(_pattern_problems(spec.patterns))
    if spec.intensity is not None and not 0.0 <= spec.intensity <= 2000.0:
        p.append(f"intensity {spec.intensity} is outside 0..2000 calibrated units")
    if spec.mitotic_fraction is not None and not 0.0 <= spec.mitotic_fraction <= 0.5:
        p.append(f"mitotic_fraction {spec.mitotic_fraction} is outside 0..0.5")
    if spec.density is not None and not 0.02 <= spec.density <= 0.7:
        p.append(f"density {spec.density} is outside 0.02..0.7")
    if spec.defocus_um is not None and not 0.0 <= spec.defocus_um <= 20.0:
        p.append(f"defocus_um {spec.defocus_um} is outside 0..20")
    if spec.photobleaching is not None and not 0.0 <= spec.photobleaching <= 0.6:
        p.append(f"photobleaching {spec.photobleaching} is outside 0..0.6")
    if not 0.01 <= spec.exposure <= 20.0:
        p.append(f"exposure {spec.exposure} is outside 0.01..20")
    if spec.camera_seed is not None and spec.camera_seed < 0:
        p.append(f"camera_seed {spec.camera_seed} is negative")
    if spec.seed < 0:
        p.append(f"seed {spec.seed} is negative")
    if spec.combined and not (spec.patterns is not None and len(spec.patterns) == 2
                              and len({_REGION.get(n) for n, _ in spec.patterns}) == 2):
        p.append("combined needs two patterns of different regions (one cell shows both)")
    return p


def _pattern_problems(patterns: tuple[tuple[str, float], ...]) -> list[str]:
    """What is wrong with a spec's (pattern, share) list."""
    if not 1 <= len(patterns) <= 2:
        return [f"patterns needs one or two (name, share) entries, got {len(patterns)}"]
    p = [f"unknown pattern {n!r}; known: {', '.join(NAMES)}" for n, _ in patterns
         if n not in BY_NAME]
    p += [f"share of {n!r} must be > 0, got {s}" for n, s in patterns if not s > 0]
    names = [n for n, _ in patterns]
    if len(names) == 2 and "negative" in names:
        p.append("a mixed specimen cannot include 'negative'")
    if len(set(names)) != len(names):
        p.append(f"pattern listed twice: {names}")
    return p


@dataclass(frozen=True)
class _Plan:
    spec: Hep2FieldSpec  # resolved
    umpp: float
    patterns: tuple[tuple[str, float], ...]  # normalised shares, strongest first
    intensity: float
    positive: bool
    mitotic_fraction: float
    density: float
    defocus_um: float
    bleach: float


def _resolve(spec: Hep2FieldSpec) -> _Plan:
    """Fill in the random choices. Every draw happens whether or not the spec overrides it,
    so the resolved spec regenerates the identical field."""
    rng = np.random.default_rng(spec.seed)
    umpp_draw = 0.25 * 4.0 ** rng.uniform()  # log-uniform: each objective equally often
    pattern_draw = NAMES[int(rng.integers(len(NAMES)))]
    level_u = float(rng.uniform())
    mitotic_draw = float(rng.uniform(0.02, 0.08))
    density_draw = float(rng.uniform(0.15, 0.45))
    camera_draw = int(rng.integers(2**31 - 1))
    defocus_draw = float(rng.uniform(0.0, 0.5))
    bleach_draw = float(rng.uniform(0.0, 0.3))
    raw = spec.patterns if spec.patterns is not None else ((pattern_draw, 1.0),)
    total = sum(s for _, s in raw)
    patterns = tuple(sorted(((n, s / total) for n, s in raw), key=lambda e: -e[1]))
    negative = patterns[0][0] == "negative"
    if negative and spec.intensity is not None and spec.intensity >= NEGATIVE_BELOW:
        raise ValueError(f"a negative specimen is autofluorescence only: intensity "
                         f"{spec.intensity} must be below {NEGATIVE_BELOW}")
    lo, hi = NEGATIVE_RANGE if negative else POSITIVE_RANGE
    level = spec.intensity if spec.intensity is not None else lo * (hi / lo) ** level_u
    resolved = replace(
        spec,
        um_per_px=spec.um_per_px if spec.um_per_px is not None else float(umpp_draw),
        patterns=patterns, intensity=float(level),
        mitotic_fraction=_given(spec.mitotic_fraction, mitotic_draw),
        density=_given(spec.density, density_draw),
        camera_seed=spec.camera_seed if spec.camera_seed is not None else camera_draw,
        defocus_um=_given(spec.defocus_um, defocus_draw),
        photobleaching=_given(spec.photobleaching, bleach_draw),
    )
    # A stained specimen below the lab's cut-off is reported negative, as a lab would.
    positive = patterns[0][0] != "negative" and level >= NEGATIVE_BELOW
    return _Plan(resolved, float(resolved.um_per_px or umpp_draw), patterns, float(level),
                 positive, float(resolved.mitotic_fraction or 0.0),
                 float(resolved.density or density_draw), float(resolved.defocus_um or 0.0),
                 float(resolved.photobleaching or 0.0))


def _given(value: float | None, draw: float) -> float:
    """The spec's value when it gives one, else the draw."""
    return float(value) if value is not None else draw


def _given_flag(value: bool | None, draw: bool) -> bool:
    """The spec's flag when it gives one, else the draw (made either way: same stream)."""
    return bool(value) if value is not None else bool(draw)


# ------------------------------------------------------------------------------ the look


@dataclass(frozen=True)
class _Style:
    cell_um: float  # mean interphase cell diameter
    cell_cv: float  # per-cell size spread
    nucleus_ratio: float  # nucleus / cell diameter
    elongation: float  # max extra aspect of cells
    irregularity: float  # radial wobble of outlines
    overlap: float  # allowed fractional overlap of neighbouring cells
    clustering: float  # 0: uniform scatter, 1: patches of cells with bare glass between
    spread: float  # log-normal sigma of per-cell brightness
    combined: bool  # mixed specimen drawn with both patterns in each cell
    # Drawn, but not used yet: combined cells draw their second pattern at a fixed 0.5
    # (_recipe, _dots). Using it would change every compound field of every seed, so it
    # waits for the next model, whose compound training cells should vary it too.
    second_weight: float
    background: float  # green background autofluorescence, grey levels
    bg_texture: float  # relative mottling of the background
    red_bleed: float  # red / green of the FITC emission seen by the camera
    blue_bleed: float
    jitter: dict[str, float]  # per-field factor on each staining component (lab, batch)
    dot_um: tuple[float, float]  # Gaussian sigma of small and large dots, µm
    debris: int  # fluorescent specks on the glass


def _draw_style(rng: np.random.Generator, plan: _Plan) -> _Style:
    """The look of this field: cell morphology, staining spread, background and hue."""
    regions = {region_of(n) for n, _ in plan.patterns}
    return _Style(
        cell_um=float(rng.uniform(15.0, 25.0)), cell_cv=float(rng.uniform(0.06, 0.16)),
        nucleus_ratio=float(rng.uniform(0.5, 0.7)), elongation=float(rng.uniform(0.05, 0.8)),
        irregularity=float(rng.uniform(0.02, 0.14)), overlap=float(rng.uniform(0.0, 0.2)),
        clustering=float(rng.uniform(0.0, 1.0)), spread=float(rng.uniform(0.15, 0.4)),
        combined=len(regions) == 2 and _given_flag(plan.spec.combined, rng.uniform() < 0.5),
        second_weight=float(rng.uniform(0.35, 0.7)),
        background=float(rng.uniform(3.0, 14.0)), bg_texture=float(rng.uniform(0.02, 0.2)),
        red_bleed=float(rng.uniform(0.04, 0.3)), blue_bleed=float(rng.uniform(0.02, 0.2)),
        jitter={k: float(np.exp(rng.normal(0.0, 0.2))) for k in _COMPONENTS},
        dot_um=(float(rng.uniform(0.14, 0.24)), float(rng.uniform(0.3, 0.5))),
        debris=int(rng.integers(0, 8)),
    )


# ------------------------------------------------------------------------------ the cells


@dataclass
class _Cell:
    cell_id: int
    outline: np.ndarray  # (N, 2) float polygon, pixels
    nucleus: np.ndarray  # (N, 2) float polygon (metaphase: the plate)
    centre: tuple[float, float]  # nucleus centre
    nuc_radius: float  # half the nucleus' short axis (plate: half its width), px
    axes: tuple[float, float]  # nucleus (or plate) semi-axes along / across plate_angle, px
    nucleoli: list[tuple[float, float, float, float, float]]  # x, y, a, b, angle (px, rad)
    mitotic: bool
    plate_angle: float  # radians (interphase: nucleus long axis)
    pattern: str
    second: str | None  # the other pattern of a combined mixed cell
    factor: float  # relative brightness of this cell


def _place_cells(rng: np.random.Generator, plan: _Plan, style: _Style) -> list[_Cell]:
    """Random sequential placement: cells may overlap a little at the cytoplasm, nuclei
    keep apart, and a smooth 'confluence' field gives patches and gaps."""
    h, w = plan.spec.height, plan.spec.width
    r_mean = 0.5 * style.cell_um / plan.umpp
    target = max(1, round(plan.density * h * w / (math.pi * r_mean * r_mean)))
    n_cand = 8 * target + 20
    xs, ys = rng.uniform(0, w, n_cand), rng.uniform(0, h, n_cand)
    radii = r_mean * np.exp(rng.normal(0.0, style.cell_cv, n_cand))
    mitotic = rng.uniform(size=n_cand) < plan.mitotic_fraction
    radii = np.where(mitotic, radii * rng.uniform(0.7, 0.85, n_cand), radii)
    confluence = optics.smooth_noise(rng, h, w, 4.0 * r_mean)
    keep_p = 1.0 / (1.0 + np.exp(-3.0 * style.clustering * confluence[
        ys.astype(int).clip(0, h - 1), xs.astype(int).clip(0, w - 1)]))
    lucky = rng.uniform(size=n_cand) < np.where(style.clustering > 0, 2 * keep_p, 1.0)
    acc = _sequential_accept(xs, ys, radii, lucky, target, style, 1.0 / plan.umpp)
    kinds = _assign_patterns(rng, plan, style, len(acc))
    return [_make_cell(rng, k + 1, float(xs[i]), float(ys[i]), float(radii[i]),
                       bool(mitotic[i]), kinds[k], plan, style) for k, i in enumerate(acc)]


def _sequential_accept(xs: np.ndarray, ys: np.ndarray, radii: np.ndarray, lucky: np.ndarray,
                       target: int, style: _Style, um: float) -> list[int]:
    """Indices of candidates kept in order: bodies may overlap by ``style.overlap``, nuclei
    keep a 1 µm gap. A grid of buckets keeps it linear in the number of cells."""
    bucket = 2.0 * float(radii.max()) + 1.0
    grid: dict[tuple[int, int], list[int]] = {}
    nuc_r = radii * style.nucleus_ratio
    acc: list[int] = []
    for i in np.nonzero(lucky)[0].tolist():
        if len(acc) >= target:
            break
        x, y, r = float(xs[i]), float(ys[i]), float(radii[i])
        gx, gy = int(x // bucket), int(y // bucket)
        near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                for j in grid.get((gx + dx, gy + dy), ())]
        if any(math.hypot(xs[j] - x, ys[j] - y) < max((radii[j] + r) * (1 - style.overlap),
                                                       nuc_r[j] + nuc_r[i] + um)
               for j in near):
            continue
        acc.append(i)
        grid.setdefault((gx, gy), []).append(i)
    return acc


def _assign_patterns(rng: np.random.Generator, plan: _Plan, style: _Style,
                     n: int) -> list[tuple[str, str | None]]:
    """Each cell's (pattern, other pattern of a combined cell) by the specimen's shares."""
    names = [p for p, _ in plan.patterns]
    shares = np.array([s for _, s in plan.patterns])
    picks = rng.choice(len(names), size=n, p=shares / shares.sum())
    out: list[tuple[str, str | None]] = []
    for k in picks:
        other = names[1 - k] if style.combined and len(names) == 2 else None
        out.append((names[k], other))
    return out


def _make_cell(rng: np.random.Generator, cid: int, x: float, y: float, radius: float,
               mitotic: bool, kind: tuple[str, str | None], plan: _Plan,
               style: _Style) -> _Cell:
    """One cell's geometry: an irregular oval body, an oval nucleus (or a metaphase plate)
    and 1-3 nucleoli."""
    um = 1.0 / plan.umpp
    angle = float(rng.uniform(0, math.pi))
    if mitotic:
        # Metaphase cells round up; their chromatin condenses into a bar of 8-12 x 2-4 µm.
        outline = _blob(rng, x, y, radius, radius * rng.uniform(0.9, 1.0), angle, 0.02)
        length, width = rng.uniform(8.0, 12.0) * um, rng.uniform(2.0, 4.0) * um
        plate_angle = float(rng.uniform(0, math.pi))
        plate = _plate(rng, x, y, 0.5 * length, 0.5 * width, plate_angle)
        return _Cell(cid, outline, plate, (x, y), 0.5 * width, (0.5 * length, 0.5 * width),
                     [], True, plate_angle,
                     kind[0], kind[1], _factor(rng, style))
    aspect = 1.0 + rng.uniform(0.0, style.elongation)
    outline = _blob(rng, x, y, radius * math.sqrt(aspect), radius / math.sqrt(aspect), angle,
                    style.irregularity)
    nuc_d = float(np.clip(2 * radius * style.nucleus_ratio, 10.0 * um, 18.0 * um))
    nuc_d = min(nuc_d, 2 * radius * 0.85)
    nasp = 1.0 + rng.uniform(0.05, 0.4)
    na, nb = 0.5 * nuc_d * math.sqrt(nasp), 0.5 * nuc_d / math.sqrt(nasp)
    # The nucleus sits off-centre along the cell's long axis, as in spread cells.
    shift = rng.uniform(-0.12, 0.12) * radius
    cx, cy = x + shift * math.cos(angle), y + shift * math.sin(angle)
    nang = angle + float(rng.normal(0.0, 0.3))
    nucleus = _blob(rng, cx, cy, na, nb, nang, 0.02)
    nucleoli = _nucleoli(rng, cx, cy, na, nb, nang, um)
    return _Cell(cid, outline, nucleus, (cx, cy), nb, (na, nb), nucleoli, False, nang, kind[0],
                 kind[1], _factor(rng, style))


def _factor(rng: np.random.Generator, style: _Style) -> float:
    """Per-cell brightness: cells of one well differ (cell cycle, antigen load)."""
    return float(np.exp(rng.normal(0.0, style.spread)))


_ANGLES = {n: np.linspace(0, 2 * math.pi, n, endpoint=False) for n in (20, 40, 48)}


def _blob(rng: np.random.Generator, x: float, y: float, a: float, b: float, angle: float,
          wobble: float, n: int = 40) -> np.ndarray:
    """An ellipse with a smooth random radial wobble (harmonics 2-5)."""
    t = _ANGLES[n]
    k = np.arange(2, 6)[:, None]
    amp = wobble / (k - 1) * rng.normal(size=(4, 1))
    r = 1.0 + (amp * np.cos(k * t + rng.uniform(0, 2 * math.pi, (4, 1)))).sum(axis=0)
    ex, ey = a * r * np.cos(t), b * r * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([x + ca * ex - sa * ey, y + sa * ex + ca * ey], axis=1)


def _plate(rng: np.random.Generator, x: float, y: float, half_len: float, half_w: float,
           angle: float, n: int = 48) -> np.ndarray:
    """A metaphase plate seen side-on: a bar with rounded ends and ragged sides
    (chromosome arms stick out)."""
    t = _ANGLES[n]
    c, s = np.cos(t), np.sin(t)
    # Superellipse of exponent 4: straight sides, rounded ends.
    ex = half_len * np.sign(c) * np.abs(c) ** 0.5
    ey = half_w * np.sign(s) * np.abs(s) ** 0.5 * (1 + 0.25 * rng.uniform(-1, 1, n))
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([x + ca * ex - sa * ey, y + sa * ex + ca * ey], axis=1)


def _nucleoli(rng: np.random.Generator, cx: float, cy: float, na: float, nb: float,
              angle: float, um: float) -> list[tuple[float, float, float, float, float]]:
    """1-3 nucleoli of 1.5-4 µm, well inside the nucleus."""
    out: list[tuple[float, float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(8):
            rho, th = math.sqrt(rng.uniform()) * 0.55, rng.uniform(0, 2 * math.pi)
            lx, ly = rho * na * math.cos(th), rho * nb * math.sin(th)
            px = cx + lx * math.cos(angle) - ly * math.sin(angle)
            py = cy + lx * math.sin(angle) + ly * math.cos(angle)
            size = 0.5 * rng.uniform(1.5, 4.0) * um
            if all(math.hypot(px - o[0], py - o[1]) > size + o[2] + 0.5 * um for o in out):
                out.append((px, py, size, size * rng.uniform(0.6, 1.0),
                            float(rng.uniform(0, math.pi))))
                break
    return out


# ------------------------------------------------------------------------------ label images


@dataclass(frozen=True)
class _Maps:
    cell: np.ndarray  # int32 labels
    nucleus: np.ndarray
    nucleoli: np.ndarray
    d_nuc_in: np.ndarray  # distance to the nucleus edge inside nuclei, px
    d_nuc_out: np.ndarray  # distance to the nearest nucleus outside nuclei, px
    d_cell: np.ndarray  # distance to the cell's own border inside cells, px


def _poly(img: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Fill a float polygon with sub-pixel vertex precision."""
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], (int(value),), lineType=cv2.LINE_8,
                 shift=4)


def _rasterise(cells: list[_Cell], h: int, w: int, umpp: float) -> _Maps:
    """Label images of cells, nuclei and nucleoli. Cytoplasm drawn later covers earlier
    cytoplasm, never a nucleus; a nucleus always belongs to its own cell."""
    cell = np.zeros((h, w), np.int32)
    nuc = np.zeros((h, w), np.int32)
    nol = np.zeros((h, w), np.int32)
    for c in cells:
        x0, y0 = np.floor(c.outline.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(c.outline.max(axis=0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        off = np.array([x0, y0], float)
        body = np.zeros((y1 - y0, x1 - x0), np.uint8)
        _poly(body, c.outline - off, 1)
        _poly(body, c.nucleus - off, 1)  # a nucleus never pokes out of its cell
        free = (body > 0) & (nuc[y0:y1, x0:x1] == 0)
        cell[y0:y1, x0:x1][free] = c.cell_id
        core = np.zeros_like(body)
        _poly(core, c.nucleus - off, 1)
        inside = core > 0
        nuc[y0:y1, x0:x1][inside] = c.cell_id
        cell[y0:y1, x0:x1][inside] = c.cell_id
        if c.nucleoli:
            dot = np.zeros_like(body)
            for px, py, a, b, ang in c.nucleoli:
                cv2.ellipse(dot, (round((px - x0) * 16), round((py - y0) * 16)),
                            (round(a * 16), round(b * 16)), math.degrees(ang), 0, 360, (1,),
                            thickness=-1, shift=4)
            nol[y0:y1, x0:x1][(dot > 0) & inside] = c.cell_id
    return _Maps(cell, nuc, nol, *_distances(cell, nuc))


def _distances(cell: np.ndarray, nuc: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distance maps that give nuclei and cytoplasm their rounded, thicker-centre look."""
    d_in = cv2.distanceTransform((nuc > 0).astype(np.uint8), cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform((nuc == 0).astype(np.uint8), cv2.DIST_L2, 3)
    # Borders between touching cells count as edges, so each cell is its own dome.
    edge = np.zeros(cell.shape, bool)
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    d_cell = cv2.distanceTransform(((cell > 0) & ~edge).astype(np.uint8), cv2.DIST_L2, 3)
    return d_in, d_out, d_cell


# ------------------------------------------------------------------------------ the staining

# Component weights of each pattern in an interphase cell. Components (all field-wide):
# nuc flat nucleoplasm, fine / coarse grain in the nucleoplasm, spare (how much nucleoli
# are spared, 1 = black holes), nol / nol_clumpy nucleoli, rim the nuclear envelope, cyto
# flat cytoplasm, cyto_fine grain and retic network in the cytoplasm. Dots and fibres are
# drawn separately (_DOTS, cyto_fibrillar, golgi).
_RECIPES: dict[str, dict[str, float]] = {
    "negative": {"nuc": 0.5, "cyto": 1.0, "cyto_fine": 0.4, "spare": 0.3},
    "homogeneous": {"nuc": 1.0, "fine": 0.08, "spare": 0.25, "cyto": 0.05},
    # Dense fine speckled is "uneven": its grain density varies across the nucleus.
    "dense_fine_speckled": {"nuc": 0.35, "fine": 1.0, "uneven": 1.0, "spare": 0.35,
                            "cyto": 0.05},
    "centromere": {"nuc": 0.06, "cyto": 0.03},
    "fine_speckled": {"nuc": 0.25, "fine": 0.8, "spare": 0.9, "cyto": 0.05},
    "coarse_speckled": {"nuc": 0.12, "coarse": 1.0, "fine": 0.1, "spare": 0.9, "cyto": 0.04},
    "multiple_nuclear_dots": {"nuc": 0.06, "cyto": 0.03},
    "few_nuclear_dots": {"nuc": 0.06, "cyto": 0.03},
    "nucleolar_homogeneous": {"nuc": 0.07, "nol": 1.0, "cyto": 0.03},
    "nucleolar_clumpy": {"nuc": 0.06, "nol": 0.3, "nol_clumpy": 1.0, "cyto": 0.03},
    "nucleolar_punctate": {"nuc": 0.06, "nol": 0.25, "cyto": 0.03},
    "envelope_smooth": {"nuc": 0.1, "rim": 1.0, "cyto": 0.04},
    "envelope_punctate": {"nuc": 0.06, "rim": 0.12, "cyto": 0.04},
    "cyto_fibrillar": {"nuc": 0.03, "cyto": 0.12},
    "cyto_speckled": {"nuc": 0.04, "cyto": 0.25, "cyto_fine": 1.0},
    "cyto_reticular": {"nuc": 0.04, "cyto": 0.15, "retic": 1.0},
    "golgi": {"nuc": 0.04, "cyto": 0.05},
}
# Metaphase cells, by what the plate shows. Unstained plates of speckled patterns sit in a
# diffusely glowing cytoplasm (the nucleoplasmic antigen is released at mitosis).
_MITOTIC: dict[str, dict[str, float]] = {
    "stained": {"nuc": 1.4, "cyto": 0.06},
    "speckled": {"nuc": 0.6, "fine": 1.2, "cyto": 0.1},
    "dots": {"nuc": 0.06, "cyto": 0.05},
    "unstained": {"cyto": 0.08},
}
_MITOTIC_GLOW = {"fine_speckled": 0.45, "coarse_speckled": 0.5, "dense_fine_speckled": 0.1,
                 "negative": 0.5, "cyto_speckled": 0.6, "cyto_reticular": 0.5,
                 "cyto_fibrillar": 0.4, "golgi": 0.15}
_COMPONENTS = ("nuc", "fine", "uneven", "coarse", "spare", "nol", "nol_clumpy", "rim", "cyto",
               "cyto_fine", "retic")


def _recipe(c: _Cell) -> dict[str, float]:
    """The component weights of one cell (a combined cell adds its second pattern)."""
    if c.mitotic:
        show = BY_NAME[c.pattern].metaphase
        out = dict(_MITOTIC[show])
        if show == "unstained":
            out["cyto"] = _MITOTIC_GLOW.get(c.pattern, out["cyto"])
        if c.pattern == "cyto_speckled":
            out["cyto_fine"] = 0.8
        if c.pattern == "cyto_reticular":
            out["retic"] = 0.8
        return out
    out = dict(_RECIPES[c.pattern])
    if c.second is not None:
        for k, v in _RECIPES[c.second].items():
            if k != "spare":
                out[k] = out.get(k, 0.0) + 0.5 * v
    return out


def _draw_signal(rng: np.random.Generator, cells: list[_Cell], maps: _Maps, plan: _Plan,
                 style: _Style) -> np.ndarray:
    """Relative fluorescence of all cells (before optics), each interphase cell normalised
    so its brightest 5% average its brightness factor."""
    h, w = maps.cell.shape
    um = 1.0 / plan.umpp
    n = len(cells)
    weights = {k: np.zeros(n + 1, np.float32) for k in _COMPONENTS}
    for c in cells:
        for k, v in _recipe(c).items():
            # Kits and labs differ in how strongly each feature shows; spare stays <= 1.
            weights[k][c.cell_id] = min(v * style.jitter[k], 1.0) if k == "spare" else (
                v * style.jitter[k])
    tex = _textures(rng, h, w, um)
    own_nuc = maps.nucleus
    cyto_owner = np.where(own_nuc == 0, maps.cell, 0)
    radius = np.array([1.0] + [c.nuc_radius for c in cells], np.float32)
    dome = np.sqrt(np.clip(maps.d_nuc_in / (0.45 * radius[own_nuc]), 0.0, 1.0))
    nol_soft = cv2.GaussianBlur((maps.nucleoli > 0).astype(np.float32), (0, 0), 0.3 * um + 0.3)
    nuclear = (weights["nuc"][own_nuc] * (0.92 + 0.08 * tex["mottle"])
               + weights["fine"][own_nuc] * tex["fine"]
               * (1.0 + weights["uneven"][own_nuc] * (tex["uneven"] - 1.0))
               + weights["coarse"][own_nuc] * tex["coarse"])
    nuclear *= 1.0 - weights["spare"][own_nuc] * nol_soft
    nol_any = cv2.dilate((maps.nucleoli > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    nuclear += (weights["nol"][own_nuc] * nol_soft
                + weights["nol_clumpy"][own_nuc] * tex["clumps"]
                * cv2.GaussianBlur(nol_any.astype(np.float32), (0, 0), 0.6 * um))
    rim = np.exp(-0.5 * ((maps.d_nuc_in - 0.5 * um) / (0.45 * um + 0.5)) ** 2)
    nuclear = nuclear * dome + weights["rim"][own_nuc] * rim
    # Cytoplasm: thin at the cell edge, thicker around the nucleus.
    cyto_shape = (np.clip(maps.d_cell / (0.8 * um), 0.0, 1.0)
                  * (0.55 + 0.45 * np.exp(-maps.d_nuc_out / (3.0 * um))))
    cyto = cyto_shape * (weights["cyto"][cyto_owner]
                         + weights["cyto_fine"][cyto_owner] * tex["cyto_fine"]
                         + weights["retic"][cyto_owner] * tex["retic"])
    signal = np.where(own_nuc > 0, nuclear, cyto).astype(np.float32)
    signal += _dots(rng, cells, h, w, um, style.dot_um)
    _fibres(rng, cells, signal, maps.cell, maps.nucleus, um)
    return _normalise_cells(signal, cells, maps.cell)


def _textures(rng: np.random.Generator, h: int, w: int, um: float) -> dict[str, np.ndarray]:
    """Field-wide grain at the scales of the speckled patterns (one draw serves all cells)."""

    def grain(sigma_um: float, floor_px: float) -> np.ndarray:
        noise = rng.standard_normal((h, w), dtype=np.float32)
        g = cv2.GaussianBlur(noise, (0, 0), max(floor_px, sigma_um * um))
        return g / max(float(g.std()), 1e-6)

    fine = np.clip(grain(0.22, 0.6) + 0.4, 0.0, None) ** 1.3
    coarse = np.clip(grain(0.55, 0.9) - 0.6, 0.0, None) ** 0.8
    clumps = np.clip(grain(0.35, 0.7) + 0.3, 0.0, None)
    net = grain(0.6, 1.0)
    retic = np.exp(-0.5 * (net / 0.35) ** 2)  # threads along the noise's zero lines
    fine_n = fine / _p97(fine)
    return {
        "fine": fine_n,
        "coarse": coarse / _p97(coarse),
        "clumps": clumps / _p97(clumps),
        "retic": retic, "cyto_fine": fine_n,
        "mottle": np.clip(grain(0.4, 0.7), -2.0, 2.0),
        "uneven": np.clip(1.0 + 0.35 * grain(2.0, 2.0), 0.3, 2.0),
    }


_Dots = np.ndarray  # (N, 3) float: x, y, peak
_NO_DOTS = np.zeros((0, 3))


def _p97(img: np.ndarray) -> float:
    """97th percentile of a texture, from a 1-in-9 sample (textures are stationary)."""
    return max(float(np.percentile(img[::3, ::3], 97)), 1e-6)


def _dots(rng: np.random.Generator, cells: list[_Cell], h: int, w: int, um: float,
          dot_um: tuple[float, float]) -> np.ndarray:
    """Point-like stains (centromeres, nuclear dots, punctate nucleoli, punctate envelope,
    Golgi granules), splatted and blurred to their size in two layers."""
    small: list[_Dots] = [_NO_DOTS]
    large: list[_Dots] = [_NO_DOTS]
    for c in cells:
        for name, weight in ((c.pattern, 1.0), (c.second, 0.5)):
            if name is not None and not (c.mitotic and name != c.pattern):
                s, lg = _dots_of(rng, c, name, um)
                small.append(s * [1.0, 1.0, weight])
                large.append(lg * [1.0, 1.0, weight])
    return (_splat(np.concatenate(small), h, w, max(0.7, dot_um[0] * um))
            + _splat(np.concatenate(large), h, w, max(0.9, dot_um[1] * um)))


def _with_peaks(rng: np.random.Generator, xy: np.ndarray, lo: float, hi: float) -> _Dots:
    """Attach a peak drawn in [lo, hi) to each (x, y)."""
    return np.column_stack([xy, rng.uniform(lo, hi, len(xy))])


def _dots_of(rng: np.random.Generator, c: _Cell, name: str, um: float
             ) -> tuple[_Dots, _Dots]:
    """(small dots, large dots) of one pattern in one cell."""
    if c.mitotic:
        if BY_NAME[name].metaphase == "dots":
            return _with_peaks(rng, _along_plate(rng, c, int(rng.integers(40, 81))), 0.85,
                               1.0), _NO_DOTS
        return _NO_DOTS, _NO_DOTS
    if name == "centromere":  # 40-80 discrete, nearly equal, evenly scattered dots (AC-3)
        n = int(rng.integers(40, 81))
        return _with_peaks(rng, _scattered_in_nucleus(rng, c, n, 0.88), 0.85, 1.0), _NO_DOTS
    if name == "multiple_nuclear_dots":  # 6-20 dots (AC-6)
        n = int(rng.integers(6, 21))
        return _NO_DOTS, _with_peaks(rng, _in_nucleus(rng, c, n, 0.8), 0.7, 1.0)
    if name == "few_nuclear_dots":  # 1-6 dots, Cajal-body-like (AC-7)
        n = int(rng.integers(1, 7))
        return _NO_DOTS, _with_peaks(rng, _in_nucleus(rng, c, n, 0.7), 0.8, 1.0)
    if name == "nucleolar_punctate":  # a few NOR dots in each nucleolus (AC-10)
        return _NO_DOTS, _with_peaks(rng, _in_nucleoli(rng, c), 0.7, 1.0)
    if name == "envelope_punctate":  # dotted rim (nuclear pores, AC-12)
        ring = _shrink(c.nucleus, c.centre, 0.45 * um)
        idx = np.linspace(0, len(ring), int(rng.integers(30, 60)), endpoint=False)
        return _with_peaks(rng, _interp_closed(ring, idx), 0.6, 1.0), _NO_DOTS
    if name == "golgi":
        return _golgi(rng, c, um)
    return _NO_DOTS, _NO_DOTS


def _in_nucleus(rng: np.random.Generator, c: _Cell, n: int, shrink: float) -> np.ndarray:
    """n uniform points inside the nucleus' ellipse shrunk about its centre (the outline's
    wobble is small, so the points stay inside the drawn nucleus)."""
    rho = shrink * np.sqrt(rng.uniform(0, 1, n))
    t = rng.uniform(0, 2 * math.pi, n)
    ex, ey = c.axes[0] * rho * np.cos(t), c.axes[1] * rho * np.sin(t)
    ca, sa = math.cos(c.plate_angle), math.sin(c.plate_angle)
    return np.column_stack([c.centre[0] + ca * ex - sa * ey, c.centre[1] + sa * ex + ca * ey])


def _scattered_in_nucleus(rng: np.random.Generator, c: _Cell, n: int,
                          shrink: float) -> np.ndarray:
    """About n points spread evenly over the nucleus: a jittered hexagonal lattice, since
    interphase centromeres keep apart rather than clump."""
    step = math.sqrt(2 * math.pi / (math.sqrt(3) * n)) * shrink  # hex cell area = disc / n
    rows = np.arange(-1.0, 1.0 + step, step * math.sqrt(3) / 2)
    cols = np.arange(-1.0 - step, 1.0 + step, step)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows)) % 2)[:, None] * step / 2
    pts = np.column_stack([gx.ravel(), gy.ravel()]) + rng.normal(0, 0.18 * step, (gx.size, 2))
    pts = pts[np.hypot(pts[:, 0], pts[:, 1]) < shrink]
    ex, ey = c.axes[0] * pts[:, 0], c.axes[1] * pts[:, 1]
    ca, sa = math.cos(c.plate_angle), math.sin(c.plate_angle)
    return np.column_stack([c.centre[0] + ca * ex - sa * ey, c.centre[1] + sa * ex + ca * ey])


def _in_nucleoli(rng: np.random.Generator, c: _Cell) -> np.ndarray:
    """2-6 points well inside each nucleolus."""
    pts = [np.zeros((0, 2))]
    for px, py, _a, b, _ang in c.nucleoli:
        k = int(rng.integers(2, 7))
        rho, t = 0.55 * np.sqrt(rng.uniform(0, 1, k)), rng.uniform(0, 2 * math.pi, k)
        pts.append(np.column_stack([px + rho * b * np.cos(t), py + rho * b * np.sin(t)]))
    return np.concatenate(pts)


def _shrink(poly: np.ndarray, centre: tuple[float, float], inset: float) -> np.ndarray:
    """Move every vertex ``inset`` px towards the centre."""
    vec = poly - np.array(centre)
    dist = np.maximum(np.hypot(vec[:, 0], vec[:, 1]), 1e-6)
    return np.array(centre) + vec * ((dist - inset) / dist)[:, None]


def _interp_closed(poly: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Points at fractional vertex indices along a closed polygon."""
    i0 = np.floor(idx).astype(int) % len(poly)
    i1 = (i0 + 1) % len(poly)
    f = (idx - np.floor(idx))[:, None]
    return np.asarray(poly[i0] * (1 - f) + poly[i1] * f)


def _along_plate(rng: np.random.Generator, c: _Cell, n: int) -> np.ndarray:
    """Centromere pairs lined up on the metaphase chromatin."""
    t = rng.uniform(-0.9, 0.9, n) * c.axes[0]
    s = rng.normal(0.0, 0.35, n) * c.axes[1]
    ca, sa = math.cos(c.plate_angle), math.sin(c.plate_angle)
    return np.column_stack([c.centre[0] + ca * t - sa * s, c.centre[1] + sa * t + ca * s])


def _golgi(rng: np.random.Generator, c: _Cell, um: float) -> tuple[_Dots, _Dots]:
    """A polar cluster of granules and ribbons hugging one side of the nucleus."""
    cx, cy = c.centre
    n = int(rng.integers(10, 26))
    t = rng.uniform(0, 2 * math.pi) + rng.normal(0.0, 0.45, n)
    # Distance to the nucleus edge along each direction (ellipse in its own frame).
    rel = t - c.plate_angle
    edge = 1.0 / np.sqrt((np.cos(rel) / c.axes[0]) ** 2 + (np.sin(rel) / c.axes[1]) ** 2)
    r = edge + rng.uniform(0.4, 2.5, n) * um
    dots = _with_peaks(rng, np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]), 0.5, 1.0)
    big = rng.uniform(size=n) < 0.5
    return dots[~big], dots[big]


def _splat(dots: _Dots, h: int, w: int, sigma: float) -> np.ndarray:
    """Bilinear impulses blurred to a Gaussian of ``sigma`` px, scaled so a lone dot peaks
    at its amplitude."""
    layer = np.zeros((h, w), np.float32)
    if not len(dots):
        return layer
    arr = np.asarray(dots, np.float64)
    x, y, a = arr[:, 0], arr[:, 1], arr[:, 2] * 2 * math.pi * sigma * sigma
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        np.add.at(layer, (yi[ok], xi[ok]), (a * wt)[ok])
    return cv2.GaussianBlur(layer, (0, 0), sigma)


def _fibres(rng: np.random.Generator, cells: list[_Cell], signal: np.ndarray,
            labels: np.ndarray, nuclei: np.ndarray, um: float) -> None:
    """Actin-like stress fibres: near-parallel straight cables across the cell, dimmer over
    the nucleus, added in place."""
    for c in cells:
        share = 1.0 if c.pattern == "cyto_fibrillar" else (
            0.5 if c.second == "cyto_fibrillar" else 0.0)
        if share == 0.0 or c.mitotic:
            continue
        x0, y0 = np.floor(c.outline.min(axis=0)).astype(int)
        x1, y1 = np.ceil(c.outline.max(axis=0)).astype(int) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, labels.shape[1]), min(y1, labels.shape[0])
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        crop = np.zeros((y1 - y0, x1 - x0), np.float32)
        # Fibres follow the cell's long axis (the plate_angle of an interphase nucleus).
        base = c.plate_angle + rng.normal(0.0, 0.15)
        reach = float(np.max(np.ptp(c.outline, axis=0)))
        spacing = rng.uniform(0.9, 1.6) * um
        thick = max(1, round(0.35 * um))
        cx, cy = c.centre[0] - x0, c.centre[1] - y0
        for off in np.arange(-reach / 2, reach / 2, spacing):
            t = base + rng.normal(0.0, 0.05)
            ox, oy = cx - math.sin(t) * off, cy + math.cos(t) * off
            dx, dy = math.cos(t) * reach, math.sin(t) * reach
            cv2.line(crop, (int(ox - dx), int(oy - dy)), (int(ox + dx), int(oy + dy)),
                     (float(rng.uniform(0.4, 1.0)),), thickness=thick)
        crop = cv2.GaussianBlur(crop, (0, 0), 0.25 * um + 0.3)
        mine = (labels[y0:y1, x0:x1] == c.cell_id).astype(np.float32)
        mine[nuclei[y0:y1, x0:x1] == c.cell_id] = 0.3  # cables run above the nucleus, fainter
        signal[y0:y1, x0:x1] += share * crop * mine


def _normalise_cells(signal: np.ndarray, cells: list[_Cell], labels: np.ndarray) -> np.ndarray:
    """Bring every kind of cell to the same typical brightness: each cell is scaled by its
    factor over the median brightest-5% of the interphase cells of its kind. A cell with
    one nuclear dot thus stays dimmer than one with six, and a metaphase cell keeps the
    plate-vs-cytoplasm balance its recipe draws."""
    top = brightest_mean(signal, labels, len(cells))
    groups: dict[tuple[str, str | None], list[float]] = {}
    for c in cells:
        if not c.mitotic and np.isfinite(top[c.cell_id]) and top[c.cell_id] > 1e-6:
            groups.setdefault((c.pattern, c.second), []).append(float(top[c.cell_id]))
    every = [v for vals in groups.values() for v in vals]
    fallback = float(np.median(every)) if every else 1.0
    typical = {k: float(np.median(v)) for k, v in groups.items()}
    gain = np.zeros(len(cells) + 1, np.float32)
    for c in cells:
        gain[c.cell_id] = c.factor / typical.get((c.pattern, c.second), fallback)
    return (signal * gain[labels]).astype(np.float32)


# ------------------------------------------------------------------------------ optics, camera


def _optics(signal: np.ndarray, light: np.ndarray, plan: _Plan) -> np.ndarray:
    """Objective PSF plus defocus, then the uneven excitation light."""
    psf_um = 0.15 + 0.25 * plan.umpp  # lower NA at lower magnification
    sigma_px = math.hypot(psf_um, plan.defocus_um) / plan.umpp
    blurred = optics.defocus_blur(signal, sigma_px, disc=plan.defocus_um > 1.0)
    return (blurred * light).astype(np.float32)


def _light(cam: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The excitation field of this microscope (drawn from the camera seed alone, so every
    field of a well shares it)."""
    state = np.random.default_rng(cam.integers(2**31 - 1))
    return optics.illumination_field(state, h, w, vignetting=float(state.uniform(0.0, 0.3)),
                                     unevenness=float(state.uniform(0.0, 0.2)))


def _camera(cam: np.random.Generator, signal_grey: np.ndarray, light: np.ndarray,
            plan: _Plan, style: _Style) -> np.ndarray:
    """Background, channel bleed, exposure, bleaching, noise, 8 bits and maybe JPEG."""
    h, w = signal_grey.shape
    rng = np.random.default_rng((plan.spec.seed, 3))
    mottle = optics.smooth_noise(rng, h, w, 0.1 * max(h, w))
    bg = style.background * (1.0 + style.bg_texture * mottle) * light
    # Bleaching follows the excitation light: the brightest-lit centre fades most.
    kept = 1.0 - plan.bleach * (0.8 + 0.2 * light)
    green = plan.spec.exposure * (bg + _debris(rng, h, w, plan, style) + kept * signal_grey)
    # Black level and autofluorescence seen in red and blue: below the green background.
    red_off = style.background * cam.uniform(0.15, 0.6)
    blue_off = style.background * cam.uniform(0.15, 0.6)
    red = style.red_bleed * green + red_off * (1 + 0.1 * mottle)
    blue = style.blue_bleed * green + blue_off * (1 + 0.1 * mottle)
    rgb = np.stack([red, green, blue], axis=2).astype(np.float32) / 255.0
    full_well, read = float(cam.uniform(4000, 20000)), float(cam.uniform(0.002, 0.005))
    jpeg = int(cam.integers(82, 99)) if cam.uniform() < 0.6 else None
    noisy = optics.sensor_noise(rgb, rng, full_well=full_well, read_noise=read)
    out = optics.quantise_8bit(noisy)
    return _jpeg(out, jpeg) if jpeg is not None else out


def _debris(rng: np.random.Generator, h: int, w: int, plan: _Plan,
            style: _Style) -> np.ndarray:
    """A few fluorescent specks on the glass (0.5-2.5 µm): bright, small, not cells."""
    layer = np.zeros((h, w), np.float32)
    um = 1.0 / plan.umpp
    for _ in range(style.debris):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = max(1, round(rng.uniform(0.25, 1.25) * um))
        cv2.circle(layer, (x, y), r, (float(plan.intensity * rng.uniform(0.3, 1.5)),), -1)
    return optics.gaussian_blur(layer, 0.3 * um + 0.5) if style.debris else layer


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip with full-resolution chroma (4:4:4). A green-only image keeps ~40%
    of its detail in chroma, so the usual 4:2:0 would dim thin rims and single dots by up
    to a quarter: more than the intensity's tolerance, so fields are not drawn that way."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode the JPEG")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("OpenCV failed to decode its own JPEG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------ truth


def _specimen_median(cells: list[_Cell], brightness: np.ndarray, labels: np.ndarray) -> float:
    """Median drawn brightness of the interphase cells (whole ones when there are any)."""
    h, w = labels.shape
    edge_ids = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0],
                                             labels[:, -1]])).tolist())
    inter = [c.cell_id for c in cells if not c.mitotic and np.isfinite(brightness[c.cell_id])]
    whole = [i for i in inter if i not in edge_ids]
    values = brightness[whole or inter]
    med = float(np.median(values))
    if not med > 0:
        raise RuntimeError(f"no drawn signal in the interphase cells of a {w}x{h} field")
    return med


def _truths(cells: list[_Cell], brightness: np.ndarray, maps: _Maps
            ) -> tuple[Hep2CellTruth, ...]:
    """The public truth records: nucleus centroids from the label image, one pass."""
    h, w = maps.cell.shape
    ys, xs = np.nonzero(maps.nucleus)
    ids = maps.nucleus[ys, xs]
    count = np.bincount(ids, minlength=len(cells) + 1).astype(np.float64)
    sx = np.bincount(ids, weights=xs, minlength=len(cells) + 1)
    sy = np.bincount(ids, weights=ys, minlength=len(cells) + 1)
    out = []
    for c in cells:
        n = count[c.cell_id]
        x, y = (sx[c.cell_id] / n, sy[c.cell_id] / n) if n else c.centre
        lo, hi = c.outline.min(axis=0), c.outline.max(axis=0)
        edge = bool(lo[0] < 0 or lo[1] < 0 or hi[0] > w - 1 or hi[1] > h - 1)
        stained = c.mitotic and BY_NAME[c.pattern].metaphase != "unstained"
        out.append(Hep2CellTruth(c.cell_id, float(x), float(y), c.pattern, c.mitotic,
                                 stained, float(brightness[c.cell_id]), edge, c.second))
    return tuple(out)
