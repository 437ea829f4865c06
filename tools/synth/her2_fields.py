"""Synthetic brightfield HER2 IHC microscope fields with exact ground truth.

A field is built in two stages:

1. :func:`build_scene` lays out tissue (tumour nests, stroma, fat, glass), draws every cell
   as polygons and writes per-pixel stain concentrations (optical density along unit stain
   vectors) together with the truth: nucleus labels, membrane owners and per-cell classes.
2. :func:`render_scene` turns concentrations into RGB with Beer-Lambert and the optics of a
   cheap eyepiece camera (tools.synth.optics).

Masks and stain are drawn with the same polygons, so the truth matches the picture exactly.
The field score is what :func:`appliance.assays.her2.rules.score_field` says about the
membrane classes actually drawn, never an assumption. Everything random comes from
``np.random.default_rng(spec.seed)``: the scene and the camera use two spawned streams, so
the same scene can be rendered without optics (``spec.camera_seed``, when set, seeds the
camera stream instead: one microscope and stain batch for all the fields of a slide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from appliance.assays.her2.rules import classify_intensity, classify_membrane, score_field
from appliance.assays.her2.types import FieldScore, Intensity, MembraneClass
from appliance.config import MeasureConfig, RulesConfig, StainConfig
from tools.synth import optics

SCORES = ("0", "1+", "2+", "3+")
PATTERN_SCORE = {"null": "0", "ultralow": "0", "unusual_intense": "2+",
                 "unusual_basolateral": "2+", "control_3plus": "3+", "control_1plus": "1+"}
TISSUES = ("tumour", "empty", "fat")

# DAB OD on the membrane, per intensity: straddles the rule engine's 0.2 / 0.4 / 0.6
# thresholds (MeasureConfig.intensity_thresholds) with margins on both sides.
MEMBRANE_OD: dict[Intensity, tuple[float, float]] = {
    Intensity.FAINT: (0.26, 0.36),
    Intensity.MODERATE: (0.46, 0.56),
    Intensity.STRONG: (0.70, 1.00),
}
# Per-cell base OD, chosen so base × (1 ± GRAIN) stays inside MEMBRANE_OD.
_BASE_OD: dict[Intensity, tuple[float, float]] = {
    Intensity.FAINT: (0.28, 0.335),
    Intensity.MODERATE: (0.49, 0.525),
    Intensity.STRONG: (0.75, 0.94),
}
GRAIN = 0.06  # relative granularity of the DAB precipitate along the membrane
# Precipitate width grows with intensity (about 0.64 / 1.0 / 2.14 µm, PMC5848460).
MEMBRANE_WIDTH_UM: dict[Intensity, float] = {
    Intensity.FAINT: 0.7, Intensity.MODERATE: 1.0, Intensity.STRONG: 2.0,
}
MIN_MEMBRANE_PX = 1.5  # thinner lines would dilute the OD below its class
MAX_BACKGROUND_DAB_OD = 0.12  # cytoplasmic blush + sub-threshold membrane tint + background

_LN10 = math.log(10.0)
_RESIDUAL_VEC = np.full(3, 1.0 / math.sqrt(3.0), np.float32)  # grey: mounting medium, debris


# ------------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class FieldSpec:
    """What to generate. Anything left ``None`` is drawn at random from ``seed``."""

    seed: int
    width: int = 640
    height: int = 480
    um_per_px: float | None = None  # None: log-uniform in [0.25, 1.0] (40x..10x objectives)
    target_score: str | None = None  # "0", "1+", "2+", "3+" or None (random)
    # "null", "ultralow", "unusual_intense", "unusual_basolateral", or the control tissues
    # "control_3plus" (homogeneous strong complete) and "control_1plus" (faint incomplete)
    pattern: str | None = None
    defocus_um: float | None = None  # blur sigma at the specimen; None: mild (<= 0.5 µm)
    tissue: str = "tumour"  # "tumour" | "empty" (glass only) | "fat" (fat, little tissue)
    jpeg_quality: int | None = None  # None: random (half PNG-clean, half JPEG 60..95)
    # Stain run strength: the drawn DAB OD is multiplied by this before rendering, so an
    # under- (< 1) or over-stained (> 1) run measures proportionally (Beer-Lambert). The
    # truth stays the drawn recipe's: what the tissue should score with a correct stain.
    dab_scale: float = 1.0
    # None: the camera stream (stain batch, light, sensor) comes from ``seed``. An int: from
    # this seed, so the fields of one slide share one microscope, camera and stain batch.
    camera_seed: int | None = None

    def __post_init__(self) -> None:
        problems = _spec_problems(self)
        if problems:
            raise ValueError("invalid FieldSpec: " + "; ".join(problems))


@dataclass(frozen=True)
class CellTruth:
    """The truth about one cell whose nucleus is (at least partly) in the field."""

    cell_id: int  # equals the label in nucleus_labels
    kind: str  # "tumour" | "lymphocyte" | "stroma"
    x: float  # nucleus centroid, output pixels
    y: float
    intensity: Intensity | None  # tumour cells only
    completeness: float  # drawn membrane coverage of the outline, 0..1 (0 for non-tumour)
    membrane_class: MembraneClass | None  # tumour only, from rules.classify_membrane


@dataclass(frozen=True)
class Scene:
    """Stain concentrations and exact truth of one field, before any optics.

    Concentrations are optical densities (base 10) along unit stain vectors, which is what
    colour deconvolution returns. ``membrane_owner`` holds the cell_id of each stained
    membrane pixel, -1 for membranes of cells whose nucleus is outside the field, 0 elsewhere.
    """

    spec: FieldSpec  # resolved: every random choice filled in
    um_per_px: float
    hematoxylin: np.ndarray  # (H, W) float32
    dab: np.ndarray  # (H, W) float32
    residual: np.ndarray  # (H, W) float32, grey OD
    nucleus_labels: np.ndarray  # (H, W) int32
    membrane_owner: np.ndarray  # (H, W) int32
    cells: tuple[CellTruth, ...]


@dataclass(frozen=True)
class SyntheticField:
    """A rendered field with its truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, after all optics and the JPEG round trip
    um_per_px: float
    nucleus_labels: np.ndarray  # (H, W) int32, 0 background, cell_id per nucleus
    tumour_nuclei: np.ndarray  # (H, W) bool
    other_nuclei: np.ndarray  # (H, W) bool (lymphocytes, stroma)
    membrane: np.ndarray  # (H, W) bool, stained tumour membrane (intensity >= faint)
    cells: tuple[CellTruth, ...]
    score: str | None  # score_field on the tumour cells' classes; None if not scorable
    category: str | None
    spec: FieldSpec  # resolved spec: generate_field(field.spec) gives the same field


# ------------------------------------------------------------------------------ public API


def generate_field(spec: FieldSpec) -> SyntheticField:
    """Generate one field: scene, camera rendering and truth, reproducible from the seed."""
    scene = build_scene(spec)
    image = render_scene(scene)
    kinds = {c.cell_id: c.kind for c in scene.cells}
    tumour_ids = np.array([i for i, k in kinds.items() if k == "tumour"], np.int32)
    labels = scene.nucleus_labels
    tumour = np.isin(labels, tumour_ids)
    score, category = field_score(scene.cells)
    return SyntheticField(
        image=image, um_per_px=scene.um_per_px, nucleus_labels=labels,
        tumour_nuclei=tumour, other_nuclei=(labels > 0) & ~tumour,
        membrane=scene.membrane_owner != 0, cells=scene.cells,
        score=score, category=category, spec=scene.spec,
    )


def class_map(field: SyntheticField) -> np.ndarray:
    """Per-pixel classes, uint8: 0 background, 1 tumour nucleus, 2 other nucleus, 3 membrane.

    Membrane wins over background only; nuclei keep their class.
    """
    out = np.zeros(field.nucleus_labels.shape, np.uint8)
    out[field.membrane] = 3
    out[field.tumour_nuclei] = 1
    out[field.other_nuclei] = 2
    return out


def field_score(cells: tuple[CellTruth, ...]) -> tuple[str | None, str | None]:
    """True (score, category) of the tumour cells by the default rules.

    (None, None) when the rules find the field not scorable (too few tumour cells).
    """
    classes = [c.membrane_class for c in cells if c.membrane_class is not None]
    result = score_field(classes, RulesConfig())
    if isinstance(result, FieldScore):
        return result.score.value, result.category.value
    return None, None


def build_scene(spec: FieldSpec) -> Scene:
    """Lay out the tissue, draw every cell and return concentrations plus truth."""
    rng = np.random.default_rng(spec.seed).spawn(2)[0]
    plan = _resolve(spec, rng)
    h, w, umpp = spec.height, spec.width, plan.um_per_px
    style = _draw_style(rng, umpp)
    layout = _layout(rng, plan, style)
    cells = _tumour_cells(rng, layout, style)
    canvas = _Canvas.empty(h, w)
    _draw_tumour_bodies(rng, canvas, cells, style)
    others = _other_nuclei(rng, layout, canvas, plan, style)
    visible = _draw_nuclei(rng, canvas, cells, others, style, umpp)
    truth = _stain_membranes(rng, canvas, cells, visible, plan, layout, style, umpp)
    _draw_stroma(rng, canvas, layout, style, umpp)
    hema, dab, resid = _compose(rng, canvas, umpp)
    labels, owner, truth_cells = _finalise_truth(canvas, cells, others, visible, truth)
    return Scene(spec=plan.spec, um_per_px=umpp, hematoxylin=hema, dab=dab, residual=resid,
                 nucleus_labels=labels, membrane_owner=owner, cells=truth_cells)


def render_scene(scene: Scene, *, camera: bool = True, exposure: float = 1.0) -> np.ndarray:
    """Beer-Lambert RGB of a scene; with ``camera`` the stain, light and sensor vary per seed.

    ``camera=False`` renders with the un-jittered StainConfig vectors, a white of 255 and no
    optics, so colour deconvolution with those vectors recovers the drawn ODs (tests).
    The DAB is scaled by ``spec.dab_scale`` either way. ``exposure`` multiplies the light
    reaching the sensor (a re-exposed view of the same field); 1.0 changes nothing.
    """
    if not 0.1 <= exposure <= 4.0:
        raise ValueError(f"exposure {exposure} is outside 0.1..4")
    stain = StainConfig()
    h_vec, d_vec = _unit(stain.hematoxylin), _unit(stain.dab)
    dab_scale = scene.spec.dab_scale
    if not camera:
        return optics.quantise_8bit(_transmission(scene, h_vec, d_vec, dab_scale))
    camera_seed = scene.spec.seed if scene.spec.camera_seed is None else scene.spec.camera_seed
    rng = np.random.default_rng(camera_seed).spawn(2)[1]
    defocus_um, jpeg_quality = _resolve_camera(scene.spec, rng)
    h_vec, d_vec = _jitter_vector(rng, h_vec, 15.0), _jitter_vector(rng, d_vec, 15.0)
    light = _transmission(scene, h_vec, d_vec, dab_scale)
    if exposure != 1.0:
        light = light * np.float32(exposure)
    sigma_px = defocus_um / scene.um_per_px
    # Real defocus is disc-shaped; a barely soft field is closer to a Gaussian.
    light = optics.defocus_blur(light, sigma_px, disc=defocus_um > 1.0)
    light = optics.lateral_chromatic_aberration(
        light, rng.uniform(0.0, 0.002), (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)))
    light = _light_and_sensor(rng, light)
    image = optics.quantise_8bit(light)
    if jpeg_quality is not None:
        image = optics.jpeg_roundtrip(image, jpeg_quality)
    return image


# -------------------------------------------------------------------------- spec resolution


def _spec_problems(spec: FieldSpec) -> list[str]:
    """Every reason a spec cannot be generated, in words (empty when it is fine)."""
    p: list[str] = []
    if not (32 <= spec.width <= 8192 and 32 <= spec.height <= 8192):
        p.append(f"size {spec.width}x{spec.height} is outside 32..8192 px")
    if spec.um_per_px is not None and not 0.05 <= spec.um_per_px <= 10.0:
        p.append(f"um_per_px {spec.um_per_px} is outside 0.05..10")
    if spec.target_score is not None and spec.target_score not in SCORES:
        p.append(f"target_score {spec.target_score!r} is not one of {', '.join(SCORES)}")
    if spec.pattern is not None and spec.pattern not in PATTERN_SCORE:
        p.append(f"pattern {spec.pattern!r} is not one of {', '.join(PATTERN_SCORE)}")
    elif (spec.pattern is not None and spec.target_score is not None
          and PATTERN_SCORE[spec.pattern] != spec.target_score):
        p.append(f"pattern {spec.pattern!r} gives score {PATTERN_SCORE[spec.pattern]}, "
                 f"not the target {spec.target_score}")
    if spec.defocus_um is not None and not 0.0 <= spec.defocus_um <= 50.0:
        p.append(f"defocus_um {spec.defocus_um} is outside 0..50")
    if spec.tissue not in TISSUES:
        p.append(f"tissue {spec.tissue!r} is not one of {', '.join(TISSUES)}")
    elif spec.tissue == "empty" and (spec.target_score or spec.pattern):
        p.append("an empty (glass only) field cannot have a target score or pattern")
    if spec.jpeg_quality is not None and not 1 <= spec.jpeg_quality <= 100:
        p.append(f"jpeg_quality {spec.jpeg_quality} is outside 1..100")
    if not 0.05 <= spec.dab_scale <= 3.0:
        p.append(f"dab_scale {spec.dab_scale} is outside 0.05..3")
    if spec.camera_seed is not None and spec.camera_seed < 0:
        p.append(f"camera_seed {spec.camera_seed} is negative")
    return p


@dataclass(frozen=True)
class _Plan:
    spec: FieldSpec  # resolved
    um_per_px: float
    target: str | None  # None for empty fields
    pattern: str | None


def _resolve(spec: FieldSpec, rng: np.random.Generator) -> _Plan:
    """Fill in the random choices. Draws happen whether or not the spec overrides them, so
    the resolved spec regenerates the identical field."""
    umpp_draw = 0.25 * 4.0 ** rng.uniform()  # log-uniform: each objective equally often
    score_draw = SCORES[int(rng.integers(len(SCORES)))]
    unusual_draw = rng.uniform() < 0.15
    which_draw = int(rng.integers(2))
    umpp = spec.um_per_px if spec.um_per_px is not None else float(umpp_draw)
    if spec.tissue == "empty":
        return _Plan(replace(spec, um_per_px=umpp), umpp, None, None)
    target = spec.target_score or (PATTERN_SCORE[spec.pattern] if spec.pattern else score_draw)
    pattern = spec.pattern
    if pattern is None and unusual_draw and target in ("0", "2+"):
        pattern = (("null", "ultralow") if target == "0"
                   else ("unusual_intense", "unusual_basolateral"))[which_draw]
    resolved = replace(spec, um_per_px=umpp, target_score=target, pattern=pattern)
    return _Plan(resolved, umpp, target, pattern)


def _resolve_camera(spec: FieldSpec, rng: np.random.Generator) -> tuple[float, int | None]:
    """Defocus (µm) and JPEG quality (None = PNG-clean), drawn whether or not overridden."""
    mild = 0.5 * rng.uniform() ** 2  # mostly sharp, sometimes a little soft
    use_jpeg = rng.uniform() < 0.5
    quality = int(rng.integers(60, 96))
    defocus = spec.defocus_um if spec.defocus_um is not None else float(mild)
    if spec.jpeg_quality is not None:
        return defocus, spec.jpeg_quality
    return defocus, quality if use_jpeg else None


# --------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    height: int
    width: int
    tissue: np.ndarray  # bool: not glass
    fat: np.ndarray  # bool: inside fat vacuoles
    fat_outlines: tuple[np.ndarray, ...]
    nest: np.ndarray  # bool: where tumour cells are seeded
    propensity: np.ndarray  # float32 smooth field: where the stronger staining goes
    fibre_angle: float  # degrees


@dataclass(frozen=True)
class _Style:
    """Per-field look: sizes in px and stain strengths."""

    cell_spacing: float
    jitter: float
    gap: float  # intercellular gap
    widths: dict[Intensity, int]  # membrane thickness in whole pixels
    nucleus_a: tuple[float, float]  # semi-major axis range of tumour nuclei
    aspect: float
    irregular: float
    counterstain: float  # haematoxylin strength multiplier
    stretch: float  # elongation of the cells along one direction (1 = isotropic)
    wobble: float  # radial waviness of the membrane line
    rim: float  # cytoplasm kept between nucleus and membrane


def _layout(rng: np.random.Generator, plan: _Plan, style: _Style) -> _Layout:
    """Glass, fat, tumour nests and stroma as boolean maps."""
    h, w, umpp = plan.spec.height, plan.spec.width, plan.um_per_px
    tissue_kind = plan.spec.tissue
    px = 1.0 / umpp
    glass_frac = 0.0 if rng.uniform() < 0.65 else rng.uniform(0.05, 0.35)
    fat_frac = rng.uniform(0.1, 0.3) if rng.uniform() < 0.2 else 0.0
    if tissue_kind == "fat":
        glass_frac, fat_frac = rng.uniform(0.0, 0.2), rng.uniform(0.55, 0.85)
    if tissue_kind == "empty":
        glass_frac = 1.0
    cell_area = 0.87 * style.cell_spacing ** 2 * style.stretch  # hexagon of that spacing
    if tissue_kind == "tumour":
        # At high power a few big cells fill the field: leave room for a scorable count.
        # Vacuoles spill past their region by about half a vacuole, hence the 1.5.
        spare = max(0.0, 1.0 - 1.2 * _needed_fraction(cell_area, h, w))
        used = glass_frac + 1.5 * fat_frac
        if used > spare:
            glass_frac, fat_frac = glass_frac * spare / used, fat_frac * spare / used
    g_noise = optics.smooth_noise(rng, h, w, rng.uniform(60, 200) * px)
    tissue = g_noise >= _quantile(g_noise, glass_frac) if glass_frac < 1 else np.zeros(
        (h, w), bool)
    f_noise = optics.smooth_noise(rng, h, w, rng.uniform(80, 250) * px)
    fat_region = tissue & (f_noise >= _quantile(f_noise[tissue], 1.0 - fat_frac)) \
        if fat_frac > 0 and tissue.any() else np.zeros((h, w), bool)
    fat, outlines = _fat_vacuoles(rng, fat_region, px)
    nest = _nests(rng, plan, tissue & ~fat, px, cell_area)
    propensity = optics.smooth_noise(rng, h, w, rng.uniform(40, 200) * px)
    return _Layout(h, w, tissue, fat, outlines, nest, propensity,
                   float(rng.uniform(0.0, 180.0)))


def _quantile(values: np.ndarray, q: float) -> float:
    """Quantile on a subsample (thresholds for smooth fields do not need every pixel)."""
    flat = values.ravel()
    if flat.size == 0:
        return math.inf
    step = max(1, flat.size // 20000)
    return float(np.quantile(flat[::step], min(max(q, 0.0), 1.0)))


def _fat_vacuoles(rng: np.random.Generator, region: np.ndarray,
                  px: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Packed adipocytes (30-120 µm) seeded in ``region``: filled mask and outlines."""
    h, w = region.shape
    mask = np.zeros((h, w), np.uint8)
    if not region.any():
        return mask.astype(bool), ()
    spacing = rng.uniform(40.0, 100.0) * px
    seeds = _hex_seeds(rng, h, w, spacing, 0.35, spacing)
    keep = region[_clip_idx(seeds[:, 1], h), _clip_idx(seeds[:, 0], w)]
    polys = _voronoi_cells(seeds, h, w, spacing * 2)
    outlines = []
    for seed, poly, k in zip(seeds, polys, keep, strict=True):
        if not k or poly is None:
            continue
        clipped = _clip_to_disc(poly, seed, 0.62 * spacing)
        if clipped is not None:
            outlines.append(clipped)
    if outlines:
        cv2.fillPoly(mask, [_fixed(p) for p in outlines], (1,), cv2.LINE_8, 4)
    return mask.astype(bool), tuple(outlines)


def _nests(rng: np.random.Generator, plan: _Plan, allowed: np.ndarray, px: float,
           cell_area: float) -> np.ndarray:
    """Tumour region as sheets, nests or cords covering a chosen fraction of the field."""
    h, w = allowed.shape
    if plan.spec.tissue == "empty" or not allowed.any():
        return np.zeros((h, w), bool)
    style = ("sheet", "nests", "cords")[int(rng.integers(3))]
    angle = rng.uniform(0.0, 180.0)
    if style == "sheet":
        noise = optics.smooth_noise(rng, h, w, rng.uniform(80, 200) * px)
    elif style == "nests":
        noise = optics.smooth_noise(rng, h, w, rng.uniform(30, 80) * px)
    else:
        noise = optics.smooth_noise(rng, h, w, rng.uniform(15, 30) * px,
                                    anisotropy=rng.uniform(3, 6), angle_deg=angle)
    avail = float(allowed.mean())
    if plan.spec.tissue == "fat":
        frac = rng.uniform(0.0, 0.15)
    else:
        needed = _needed_fraction(cell_area, h, w)
        frac = max(rng.uniform(0.3, 0.7) * avail, min(0.95 * avail, needed))
    if frac <= 0:
        return np.zeros((h, w), bool)
    return allowed & (noise >= _quantile(noise[allowed], 1.0 - frac / avail))


def _needed_fraction(cell_area: float, h: int, w: int) -> float:
    """Fraction of the field that holds a scorable count of cells (the rules want 20;
    aim at 40 since border cells and slivers drop out)."""
    return 40.0 * cell_area / (h * w)


def _draw_style(rng: np.random.Generator, umpp: float) -> _Style:
    """Per-field sizes (px) and strengths."""
    px = 1.0 / umpp
    widths = {i: max(2, round(max(MIN_MEMBRANE_PX, w * rng.uniform(0.85, 1.15) * px)))
              for i, w in MEMBRANE_WIDTH_UM.items()}
    a_lo = rng.uniform(3.8, 5.0)
    wobble = rng.uniform(0.0, 0.3) * px
    return _Style(
        cell_spacing=rng.uniform(14.0, 22.0) * px,
        jitter=rng.uniform(0.05, 0.3),
        gap=rng.uniform(0.0, 0.4) * px,
        widths=widths,
        nucleus_a=(a_lo * px, rng.uniform(a_lo + 0.5, 7.0) * px),
        aspect=rng.uniform(1.05, 1.6),
        irregular=rng.uniform(0.01, 0.07),
        counterstain=rng.uniform(0.55, 1.5),
        stretch=1.0 if rng.uniform() < 0.5 else rng.uniform(1.0, 1.5),
        wobble=wobble,
        # The wobble moves the line both ways and rasterising adds a pixel: keep clear of both.
        rim=rng.uniform(0.1, 0.6) * px + 2.0 * wobble + 1.0,
    )


# ------------------------------------------------------------------------------- geometry


def _hex_seeds(rng: np.random.Generator, h: int, w: int, spacing: float, jitter: float,
               pad: float) -> np.ndarray:
    """Jittered hexagonal grid of points covering the field plus ``pad`` (float64 (N, 2))."""
    dy = spacing * math.sqrt(3.0) / 2.0
    ys = np.arange(-pad, h + pad, dy)
    xs = np.arange(-pad, w + pad, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx[1::2] += spacing / 2.0
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return pts + rng.uniform(-jitter, jitter, pts.shape) * spacing


def _clip_idx(v: np.ndarray, n: int) -> np.ndarray:
    return np.clip(v.astype(np.int64), 0, n - 1)


def _voronoi_cells(points: np.ndarray, h: int, w: int, pad: float) -> list[np.ndarray | None]:
    """Voronoi facet (convex polygon, float32 (K, 2)) of every point, in the points' order."""
    if len(points) == 0:
        return []
    margin = int(pad + 4 * max(h, w))  # the subdivision must contain every point
    subdiv = cv2.Subdiv2D((-margin, -margin, w + 2 * margin, h + 2 * margin))
    ids = [subdiv.insert((float(x), float(y))) for x, y in points]
    facets, _ = subdiv.getVoronoiFacetList([])
    out: list[np.ndarray | None] = [None] * len(points)
    seen: set[int] = set()
    for i, vid in enumerate(ids):
        # A duplicate point returns an existing vertex id: it gets no cell of its own.
        if vid in seen:
            continue
        seen.add(vid)
        out[i] = np.asarray(facets[vid - 4], np.float32)  # ids 0-3 are the outer triangle
    return out


_HARMONICS = np.arange(2, 6, dtype=np.float64)[:, None]  # outline irregularity: k = 2..5


@lru_cache(maxsize=8)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angles, cosines and sines of ``n`` evenly spaced points (cached: called per cell)."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return t, np.cos(t), np.sin(t)


def _disc_polygon(centre: np.ndarray, radius: float, n: int = 20) -> np.ndarray:
    _, cos_t, sin_t = _unit_circle(n)
    return np.stack([centre[0] + radius * cos_t, centre[1] + radius * sin_t],
                    axis=1).astype(np.float32)


def _clip_to_disc(poly: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray | None:
    """Convex polygon ∩ disc (cells at a nest's edge get a rounded free border)."""
    area, inter = cv2.intersectConvexConvex(poly, _disc_polygon(centre, radius))
    if area <= 1.0 or inter is None:
        return None
    return np.asarray(inter.reshape(-1, 2), np.float64)


def _fixed(poly: np.ndarray) -> np.ndarray:
    """Points to OpenCV's 4-bit fixed point (drawing with shift=4 keeps sub-pixel shape)."""
    return np.round(np.asarray(poly) * 16.0).astype(np.int32)


@dataclass
class _Cell:
    """One tumour cell under construction (coordinates in output pixels)."""

    poly: np.ndarray  # (K, 2) convex outline
    centre: np.ndarray  # (2,) nucleus centre
    inradius: float  # distance from centre to the outline
    nucleus: np.ndarray  # (M, 2) nucleus outline


def _tumour_cells(rng: np.random.Generator, layout: _Layout, style: _Style) -> list[_Cell]:
    """Voronoi cells around jittered seeds in the nests, each with a fitted nucleus."""
    h, w = layout.height, layout.width
    d = style.cell_spacing
    seeds = _stretch(_hex_seeds(rng, h, w, d, style.jitter, 2 * d), style.stretch,
                     rng.uniform(0.0, math.pi), h, w)
    near = ((seeds[:, 0] > -d) & (seeds[:, 0] < w + d)
            & (seeds[:, 1] > -d) & (seeds[:, 1] < h + d))
    seeds = seeds[near]
    seeds = seeds[layout.nest[_clip_idx(seeds[:, 1], h), _clip_idx(seeds[:, 0], w)]]
    reach = 0.75 * d * math.sqrt(style.stretch)
    polys = _clipped_cells(seeds, h, w, reach)
    if rng.uniform() < 0.6:
        # One Lloyd step evens the sizes (sheets); skipping it keeps them pleomorphic.
        seeds = np.array([p.mean(axis=0) if p is not None else s
                          for s, p in zip(seeds, polys, strict=True)]).reshape(-1, 2)
        polys = _clipped_cells(seeds, h, w, reach)
    margin = style.gap / 2.0 + max(style.widths.values()) + style.rim
    cells = []
    for poly in polys:
        if poly is None or not _touches_field(poly, h, w):
            continue
        cell = _fit_cell(rng, poly, margin, style)
        if cell is not None:
            cells.append(cell)
    return cells


def _stretch(points: np.ndarray, factor: float, angle: float, h: int, w: int) -> np.ndarray:
    """Stretch a point set about the field centre along ``angle``: elongated cells."""
    if factor == 1.0:
        return points
    u = np.array([math.cos(angle), math.sin(angle)])
    centre = np.array([w / 2.0, h / 2.0])
    rel = points - centre
    along = rel @ u
    return centre + rel + np.outer(along * (factor - 1.0), u)


def _clipped_cells(seeds: np.ndarray, h: int, w: int,
                   reach: float) -> list[np.ndarray | None]:
    """Voronoi cells cut to a disc of radius ``reach`` around their seeds.

    With ``reach`` wider than a hexagon's corner (0.58 of the spacing), cells inside a sheet
    stay polygonal and only those on a nest's free edge are rounded off.
    """
    return [None if f is None else _clip_to_disc(f, s, reach)
            for s, f in zip(seeds, _voronoi_cells(seeds, h, w, reach), strict=True)]


def _touches_field(poly: np.ndarray, h: int, w: int) -> bool:
    (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
    return bool(x1 >= 0 and y1 >= 0 and x0 < w and y0 < h)


def _fit_cell(rng: np.random.Generator, poly: np.ndarray, margin: float,
              style: _Style) -> _Cell | None:
    """Place a pleomorphic nucleus that keeps ``margin`` px from the outline, or drop a sliver."""
    centre = poly.mean(axis=0)
    inradius = cv2.pointPolygonTest(poly.astype(np.float32), (float(centre[0]),
                                                              float(centre[1])), True)
    room = inradius - margin
    min_radius = 0.45 * style.nucleus_a[0]
    if room < min_radius:
        return None
    a = rng.uniform(*style.nucleus_a)
    outline = _nucleus_outline(rng, centre, a, a / rng.uniform(1.0, style.aspect),
                               style.irregular)
    extent = float(np.max(np.hypot(*(outline - centre).T)))
    if extent > room:
        outline = centre + (outline - centre) * (room / extent)
    return _Cell(poly=poly, centre=centre, inradius=float(inradius), nucleus=outline)


def _nucleus_outline(rng: np.random.Generator, centre: np.ndarray, a: float, b: float,
                     irregular: float, n: int = 28) -> np.ndarray:
    """Rotated ellipse with a few random low harmonics on the radius (irregular outline)."""
    t, cos_t, sin_t = _unit_circle(n)
    r = a * b / np.sqrt((b * cos_t) ** 2 + (a * sin_t) ** 2)
    amps = rng.uniform(0.0, irregular, 4)[:, None]
    phases = rng.uniform(0.0, 2.0 * math.pi, 4)[:, None]
    r = r * np.prod(1.0 + amps * np.cos(_HARMONICS * t + phases), axis=0)
    angle = rng.uniform(0.0, math.pi)
    x, y = r * cos_t, r * sin_t
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], axis=1)


# ------------------------------------------------------------------------------- drawing


@dataclass
class _Canvas:
    """Per-pixel layers drawn with the same polygons as the truth."""

    labels: np.ndarray  # int32 provisional ids
    occupied: np.ndarray  # uint8: cells and nuclei placed so far
    cell_mask: np.ndarray  # uint8: inside a tumour cell body
    h_cyto: np.ndarray
    h_nuc: np.ndarray
    h_bg: np.ndarray
    membrane: np.ndarray  # DAB OD on stained membranes (>= faint)
    owner: np.ndarray  # int32 provisional id per membrane pixel
    faint_dab: np.ndarray  # blush and sub-threshold tint (never membrane)

    @staticmethod
    def empty(h: int, w: int) -> _Canvas:
        def f() -> np.ndarray:
            return np.zeros((h, w), np.float32)

        return _Canvas(np.zeros((h, w), np.int32), np.zeros((h, w), np.uint8),
                       np.zeros((h, w), np.uint8), f(), f(), f(), f(),
                       np.zeros((h, w), np.int32), f())


def _draw_tumour_bodies(rng: np.random.Generator, canvas: _Canvas, cells: list[_Cell],
                        style: _Style) -> None:
    """Pale cytoplasm, and optionally a light DAB blush, inside each cell."""
    blush_level = rng.uniform(0.02, 0.09) if rng.uniform() < 0.35 else 0.0
    # Cytoplasm takes up at least as much counterstain as loose stroma (no white halos).
    base = rng.uniform(0.06, 0.14) * style.counterstain
    for cell in cells:
        body = _fixed(_shrunk(cell, style.gap / 2.0))
        cv2.fillPoly(canvas.h_cyto, [body], (base * rng.uniform(0.7, 1.3),), cv2.LINE_8, 4)
        cv2.fillPoly(canvas.cell_mask, [body], (1,), cv2.LINE_8, 4)
        if blush_level > 0:
            cv2.fillPoly(canvas.faint_dab, [body], (blush_level * rng.uniform(0.5, 1.0),),
                         cv2.LINE_8, 4)
        cv2.fillPoly(canvas.occupied, [_fixed(cell.poly)], (1,), cv2.LINE_8, 4)


def _shrunk(cell: _Cell, inset: float) -> np.ndarray:
    """The cell outline with every side moved in by ``inset`` px.

    A true offset keeps the gap between two neighbours' membranes even, so touching stained
    cells read as one line as on a slide. Where a short side would vanish, the outline is
    scaled about the nucleus centre instead (nearest side in by ``inset``, others by more).
    """
    if inset <= 0:
        return cell.poly
    offset = _offset_convex(cell.poly, inset)
    if offset is not None:
        return offset
    k = max(0.0, 1.0 - inset / max(cell.inradius, 1e-6))
    return cell.centre + (cell.poly - cell.centre) * k


def _offset_convex(poly: np.ndarray, inset: float) -> np.ndarray | None:
    """Inward miter offset of a convex polygon, or None where a side would flip."""
    edges = np.roll(poly, -1, axis=0) - poly
    length = np.hypot(edges[:, 0], edges[:, 1])
    if np.any(length < 1e-9):
        return None
    x, y = poly[:, 0], poly[:, 1]
    orient = 1.0 if float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) > 0 else -1.0
    normal = orient * np.stack([-edges[:, 1], edges[:, 0]], axis=1) / length[:, None]
    prev = np.roll(normal, 1, axis=0)  # normal of the side ending at each vertex
    # The miter vector m has m·n = inset for both sides meeting at the vertex.
    denom = 1.0 + np.sum(prev * normal, axis=1)
    if np.any(denom < 1e-3):
        return None
    out = poly + inset * (prev + normal) / denom[:, None]
    new_edges = np.roll(out, -1, axis=0) - out
    if np.any(np.sum(new_edges * edges, axis=1) <= 0.0):
        return None
    return out


@dataclass(frozen=True)
class _Other:
    kind: str  # "lymphocyte" | "stroma"
    outline: np.ndarray
    hema: float


def _other_nuclei(rng: np.random.Generator, layout: _Layout, canvas: _Canvas, plan: _Plan,
                  style: _Style) -> list[_Other]:
    """Lymphocytes (clustered) and spindle stromal nuclei in the stroma, never overlapping."""
    h, w = layout.height, layout.width
    px = 1.0 / plan.um_per_px
    free = layout.tissue & ~layout.fat & ~layout.nest & (canvas.occupied == 0)
    area_um2 = float(free.sum()) / (px * px)
    n_lym = int(area_um2 * rng.uniform(0.0, 3.0) / 1000.0)
    n_fib = int(area_um2 * rng.uniform(0.3, 1.5) / 1000.0)
    cluster = optics.smooth_noise(rng, h, w, rng.uniform(20, 80) * px)
    clumping = rng.uniform(0.0, 2.5)
    found: list[_Other] = []
    for kind, count in (("lymphocyte", n_lym), ("stroma", n_fib)):
        xy = rng.uniform((0, 0), (w, h), size=(30 * count, 2))
        ix, iy = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)
        ok = free[iy, ix]
        if kind == "lymphocyte":
            # Lymphocytes gather in clusters: accept more where the cluster field is high.
            accept = np.exp(clumping * (np.minimum(cluster[iy, ix], 2.0) - 2.0))
            ok &= rng.uniform(size=len(xy)) < accept
        placed = 0
        reach = (3.6 if kind == "lymphocyte" else 2.6) * px  # lymphocyte radius, spindle width
        for point in xy[ok]:
            if placed >= count:
                break
            if _busy(canvas.occupied, point, reach):
                continue  # cheap early rejection before building an outline
            other = _make_other(rng, kind, point, layout.fibre_angle, style, px)
            if _claim(canvas.occupied, other.outline, max(1, round(0.8 * px))):
                found.append(other)
                placed += 1
    return found


def _make_other(rng: np.random.Generator, kind: str, xy: np.ndarray, fibre_angle: float,
                style: _Style, px: float) -> _Other:
    if kind == "lymphocyte":
        r = rng.uniform(2.5, 3.5) * px
        outline = _nucleus_outline(rng, xy, r, r / rng.uniform(1.0, 1.15), 0.03, n=16)
        return _Other(kind, outline, rng.uniform(0.9, 1.5) * style.counterstain)
    a, b = rng.uniform(5.0, 10.0) * px, rng.uniform(1.5, 2.5) * px
    outline = _nucleus_outline(rng, np.zeros(2), a, b, 0.02, n=20)
    # Spindles follow the collagen: rotate the (random-angle) ellipse onto the fibre angle.
    ang = math.radians(fibre_angle + rng.normal(0.0, 20.0))
    major = outline[np.argmax(np.hypot(*outline.T))]
    rot = ang - math.atan2(major[1], major[0])
    c, s = math.cos(rot), math.sin(rot)
    outline = np.stack([c * outline[:, 0] - s * outline[:, 1] + xy[0],
                        s * outline[:, 0] + c * outline[:, 1] + xy[1]], axis=1)
    return _Other(kind, outline, rng.uniform(0.45, 0.85) * style.counterstain)


def _busy(occupied: np.ndarray, xy: np.ndarray, reach: float) -> bool:
    h, w = occupied.shape
    x0, y0 = max(int(xy[0] - reach), 0), max(int(xy[1] - reach), 0)
    x1, y1 = min(int(xy[0] + reach) + 1, w), min(int(xy[1] + reach) + 1, h)
    return bool(occupied[y0:y1, x0:x1].any())


def _claim(occupied: np.ndarray, outline: np.ndarray, gap: int) -> bool:
    """Reserve the nucleus footprint (plus ``gap``) if nothing is there yet."""
    h, w = occupied.shape
    x0, y0 = np.floor(outline.min(axis=0)).astype(int) - gap
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int) + gap + 1
    if occupied[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)].any():
        return False
    fixed = _fixed(outline)
    cv2.fillPoly(occupied, [fixed], (1,), cv2.LINE_8, 4)
    cv2.polylines(occupied, [fixed], True, (1,), 2 * gap + 1, cv2.LINE_8, 4)
    return True


def _draw_nuclei(rng: np.random.Generator, canvas: _Canvas, cells: list[_Cell],
                 others: list[_Other], style: _Style, umpp: float) -> np.ndarray:
    """Draw every nucleus (tumour ids 1..T, others after) and return the visible ids."""
    px = 1.0 / umpp
    base = rng.uniform(0.35, 0.75) * style.counterstain
    rim_gain = rng.uniform(1.0, 1.6)  # vesicular nuclei have a dark rim, pale centre
    nucleolus_p = rng.uniform(0.0, 0.6)
    rim_px = max(1, round(rng.uniform(0.4, 0.8) * px))
    for i, cell in enumerate(cells, start=1):
        fixed = _fixed(cell.nucleus)
        value = base * rng.uniform(0.75, 1.3)
        cv2.fillPoly(canvas.labels, [fixed], (i,), cv2.LINE_8, 4)
        cv2.fillPoly(canvas.h_nuc, [fixed], (value,), cv2.LINE_8, 4)
        cv2.polylines(canvas.h_nuc, [fixed], True, (value * rim_gain,), rim_px, cv2.LINE_8, 4)
        if rng.uniform() < nucleolus_p:
            off = rng.uniform(-0.3, 0.3, 2) * (cell.nucleus.max(axis=0) - cell.nucleus.min(0))
            cv2.circle(canvas.h_nuc, tuple(_fixed(cell.centre + off).tolist()),
                       round(rng.uniform(0.5, 1.0) * px * 16), (value * 1.8,), -1,
                       cv2.LINE_8, 4)
    for j, other in enumerate(others, start=len(cells) + 1):
        fixed = _fixed(other.outline)
        cv2.fillPoly(canvas.labels, [fixed], (j,), cv2.LINE_8, 4)
        cv2.fillPoly(canvas.h_nuc, [fixed], (other.hema,), cv2.LINE_8, 4)
    # Keep labels and stain identical: the rim may not spill past the label outline.
    canvas.h_nuc[canvas.labels == 0] = 0.0
    counts = np.bincount(canvas.labels.ravel(), minlength=len(cells) + len(others) + 1)
    return np.flatnonzero(counts[1:] > 0) + 1


# ---------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class _Recipe:
    intensity: Intensity
    shape: str  # "complete" | "arc" | "fragments" | "U" | "none"
    rank: int  # strength order used to place stronger staining together


_NONE = _Recipe(Intensity.NONE, "none", 0)


def _assign_recipes(rng: np.random.Generator, cells: list[_Cell], visible: np.ndarray,
                    plan: _Plan, layout: _Layout) -> list[_Recipe]:
    """Membrane recipes for every tumour cell; the visible ones follow the target mix exactly."""
    vis = [int(i) - 1 for i in visible if i <= len(cells)]
    mix = _mix(rng, plan, len(vis)) if plan.target is not None else []
    heterogeneity = rng.uniform(2.0, 6.0)
    # Stronger recipes go to cells with higher propensity: staining comes in patches.
    prop = [heterogeneity * float(_at(layout.propensity, cells[i].centre)) + rng.normal()
            for i in vis]
    order = [vis[k] for k in np.argsort(prop)[::-1]]
    recipes = [_NONE] * len(cells)
    for i, recipe in zip(order, mix, strict=True):
        recipes[i] = recipe
    shown = set(vis)
    for i in range(len(cells)):
        if i not in shown and mix:
            # Cells whose nucleus is out of view still show membrane at the edge.
            recipes[i] = mix[int(rng.integers(len(mix)))]
    return recipes


def _at(field: np.ndarray, xy: np.ndarray) -> float:
    h, w = field.shape
    return float(field[min(max(int(xy[1]), 0), h - 1), min(max(int(xy[0]), 0), w - 1)])


def _mix(rng: np.random.Generator, plan: _Plan, n: int) -> list[_Recipe]:
    """``n`` recipes, strongest first, whose rule-engine score is the plan's target.

    Counts compare as the rules do: "> 10%" needs n // 10 + 1 cells, "<= p%" floor(p·n).
    """
    above10 = n // 10 + 1
    counts: dict[str, int] = {}
    key = plan.pattern or plan.target
    if key == "3+":
        counts["intense"] = min(n, max(above10, round(rng.uniform(0.3, 0.9) * n)))
        _spread(rng, counts, n, ("complete_wm", "u_strong", "faint_incomplete", "none"))
    elif key == "2+":
        counts["intense"] = int(rng.integers(0, int(0.05 * n) + 1))
        counts["complete_wm"] = min(n - counts["intense"],
                                    max(above10, round(rng.uniform(0.2, 0.7) * n)))
        _spread(rng, counts, n, ("faint_incomplete", "u_strong", "none"))
    elif key == "1+":
        counts["faint_incomplete"] = min(n, max(above10, round(rng.uniform(0.2, 0.8) * n)))
    elif key == "0":
        counts["faint_incomplete"] = int(rng.integers(0, int(0.05 * n) + 1))
    elif key == "ultralow":
        counts["faint_incomplete"] = min(n, int(rng.integers(1, max(1, int(0.08 * n)) + 1)))
    elif key == "unusual_intense":
        counts["intense"] = min(n, int(rng.integers(1, max(1, int(0.08 * n)) + 1)))
        counts["faint_incomplete"] = round(rng.uniform(0.0, 0.5) * (n - counts["intense"]))
    elif key == "unusual_basolateral":
        counts["u_strong"] = min(n, max(above10, round(rng.uniform(0.2, 0.6) * n)))
        counts["faint_incomplete"] = round(rng.uniform(0.0, 0.3) * (n - counts["u_strong"]))
    elif key == "control_3plus":
        # Control tissue (cell line or known 3+ tumour): homogeneous, nearly all intense.
        counts["intense"] = min(n, max(above10, round(rng.uniform(0.80, 0.95) * n)))
        counts["complete_moderate"] = n - counts["intense"]
    elif key == "control_1plus":
        counts["faint_incomplete"] = min(n, max(above10, round(rng.uniform(0.5, 0.8) * n)))
    recipes = [r for name, c in counts.items() for r in _recipes_of(rng, name, c)]
    recipes += [_NONE] * (n - len(recipes))
    return sorted(recipes, key=lambda r: -r.rank)


def _spread(rng: np.random.Generator, counts: dict[str, int], n: int,
            names: tuple[str, ...]) -> None:
    """Share the cells not yet counted among ``names`` at random proportions."""
    rest = n - sum(counts.values())
    shares = rng.multinomial(rest, rng.dirichlet(np.ones(len(names)))) if rest > 0 else \
        np.zeros(len(names), int)
    for name, c in zip(names, shares, strict=True):
        counts[name] = counts.get(name, 0) + int(c)


def _recipes_of(rng: np.random.Generator, name: str, count: int) -> list[_Recipe]:
    """``count`` recipes of one named group (the intensity within a group varies per cell)."""
    out = []
    for _ in range(count):
        if name == "intense":
            out.append(_Recipe(Intensity.STRONG, "complete", 5))
        elif name == "complete_wm":
            out.append(_Recipe((Intensity.FAINT, Intensity.MODERATE)[int(rng.integers(2))],
                               "complete", 4))
        elif name == "complete_moderate":
            out.append(_Recipe(Intensity.MODERATE, "complete", 4))
        elif name == "u_strong":
            out.append(_Recipe((Intensity.MODERATE, Intensity.STRONG)[int(rng.integers(2))],
                               "U" if rng.uniform() < 0.75 else "fragments", 3))
        elif name == "faint_incomplete":
            out.append(_Recipe(Intensity.FAINT,
                               "arc" if rng.uniform() < 0.4 else "fragments", 2))
        else:
            out.append(_NONE)
    return out


# --------------------------------------------------------------------------- membranes


@dataclass(frozen=True)
class _TumourTruth:
    intensity: Intensity
    completeness: float


def _draw_membranes(rng: np.random.Generator, canvas: _Canvas, cells: list[_Cell],
                    recipes: list[_Recipe], visible: np.ndarray, style: _Style,
                    umpp: float) -> list[_TumourTruth]:
    """Draw each stained membrane as arcs of its own cell's outline; return per-cell truth."""
    px = 1.0 / umpp
    wobble = style.wobble
    tint_od = rng.uniform(0.04, 0.1) if rng.uniform() < 0.3 else 0.0
    shown = {int(i) for i in visible}
    truth = []
    for i, (cell, recipe) in enumerate(zip(cells, recipes, strict=True), start=1):
        if recipe.shape == "none":
            truth.append(_TumourTruth(Intensity.NONE, 0.0))
            if tint_od > 0:
                # Barely-there staining below the faint threshold: must stay "none".
                line = _centre_line(rng, cell, style.gap / 2 + 1.0, wobble, px)
                arcs, _ = _coverage_arcs(rng, line, "arc")
                _polylines(canvas.faint_dab, arcs, tint_od * rng.uniform(0.7, 1.0), 1)
            continue
        width = style.widths[recipe.intensity]
        line = _centre_line(rng, cell, style.gap / 2 + width / 2 + wobble, wobble, px)
        arcs, coverage = _coverage_arcs(rng, line, recipe.shape)
        od = rng.uniform(*_BASE_OD[recipe.intensity])
        _polylines(canvas.membrane, arcs, od, width)
        _polylines(canvas.owner, arcs, i if i in shown else -1, width)
        truth.append(_TumourTruth(recipe.intensity, coverage))
    return truth


def _centre_line(rng: np.random.Generator, cell: _Cell, inset: float, wobble: float,
                 px: float) -> np.ndarray:
    """Closed, densified membrane centre line inside the cell, with a gentle wobble."""
    ring = _shrunk(cell, inset)
    closed = np.vstack([ring, ring[:1]])
    seg = np.diff(closed, axis=0)
    steps = np.maximum(1, np.ceil(np.hypot(*seg.T) / max(2.0, 1.5 * px)).astype(int))
    t = np.concatenate([np.arange(k) / k for k in steps])
    start = np.repeat(closed[:-1], steps, axis=0)
    pts = start + np.repeat(seg, steps, axis=0) * t[:, None]
    if wobble > 0:
        phase = np.linspace(0.0, 2.0 * math.pi, len(pts), endpoint=False)
        waves = np.array([3.0, 5.0, 7.0])[:, None]
        radial = np.sin(waves * phase + rng.uniform(0, 2 * math.pi, (3, 1))).mean(axis=0)
        d = pts - cell.centre
        norm = np.maximum(np.hypot(*d.T), 1e-6)
        pts = pts + d / norm[:, None] * (wobble * radial)[:, None]
    return pts


def _coverage_arcs(rng: np.random.Generator, line: np.ndarray,
                   shape: str) -> tuple[list[np.ndarray], float]:
    """Arcs of a closed line and their exact fraction of its length.

    complete: one arc of 0.93-1.0; arc: one of 0.15-0.55; U (basolateral): one of 0.45-0.7;
    fragments: 2-4 pieces totalling 0.15-0.55. Incomplete arcs stay short because a
    neighbour's arcs add to what is seen of a cell's outline (see _apparent_truth).
    """
    if shape == "complete":
        pieces = [rng.uniform(0.93, 1.0)]
    elif shape == "U":
        pieces = [rng.uniform(0.45, 0.7)]
    elif shape == "arc":
        pieces = [rng.uniform(0.15, 0.55)]
    elif shape == "fragments":
        k = int(rng.integers(2, 5))
        pieces = list(rng.uniform(0.15, 0.55) * rng.dirichlet(np.full(k, 3.0)))
    else:
        raise ValueError(f"unknown membrane shape {shape!r}")
    coverage = float(sum(pieces))
    gaps = (1.0 - coverage) * rng.dirichlet(np.full(len(pieces), 3.0))
    closed = np.vstack([line, line[:1]])
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    total = float(cum[-1])
    pos = rng.uniform(0.0, 1.0)
    arcs = []
    for piece, gap in zip(pieces, gaps, strict=True):
        arcs.append(_arc(closed, cum, total, pos * total, piece * total))
        pos += piece + gap
    return arcs, coverage


def _arc(closed: np.ndarray, cum: np.ndarray, total: float, start: float,
         length: float) -> np.ndarray:
    """The part of a closed polyline from arclength ``start`` for ``length`` (wrapping)."""
    start %= total
    twice = np.vstack([closed[:-1], closed[:-1], closed[:1]])
    cum2 = np.concatenate([cum[:-1], cum[:-1] + total, [2 * total]])
    s = np.concatenate([[start], cum2[(cum2 > start) & (cum2 < start + length)],
                        [start + length]])
    x = np.interp(s, cum2, twice[:, 0])
    y = np.interp(s, cum2, twice[:, 1])
    return np.stack([x, y], axis=1)


def _polylines(img: np.ndarray, arcs: list[np.ndarray], value: float, thickness: int) -> None:
    cv2.polylines(img, [_fixed(a) for a in arcs], False, (value,), thickness, cv2.LINE_8, 4)


# ------------------------------------------------------------------------ stroma & compose


def _draw_stroma(rng: np.random.Generator, canvas: _Canvas, layout: _Layout, style: _Style,
                 umpp: float) -> None:
    """Pale fibrous stroma in the tissue, thin fat-cell outlines, glass elsewhere."""
    px = 1.0 / umpp
    h, w = layout.height, layout.width
    soft = optics.gaussian_blur((layout.tissue & ~layout.fat).astype(np.float32), 1.0 * px)
    scale = max(1.0, rng.uniform(1.2, 3.0) * px)
    fibres = optics.smooth_noise(rng, h, w, scale, anisotropy=rng.uniform(4.0, 10.0),
                                 angle_deg=layout.fibre_angle)
    # A second bundle direction, blended in by region: collagen is not combed one way.
    other = optics.smooth_noise(rng, h, w, scale, anisotropy=rng.uniform(3.0, 8.0),
                                angle_deg=layout.fibre_angle + rng.uniform(30.0, 90.0))
    blend = np.clip(0.5 + optics.smooth_noise(rng, h, w, 80 * px), 0.0, 1.0)
    fibres = fibres * (1.0 - blend) + other * blend
    level = rng.uniform(0.02, 0.06)
    amp = rng.uniform(0.015, 0.06)
    canvas.h_bg[:] = soft * style.counterstain * (level + amp * np.clip(fibres, 0.0, 3.0))
    if layout.fat_outlines:
        value = rng.uniform(0.1, 0.25) * style.counterstain
        thick = max(1, round(rng.uniform(0.8, 1.5) * px))
        cv2.polylines(canvas.h_bg, [_fixed(p) for p in layout.fat_outlines], True, (value,),
                      thick, cv2.LINE_8, 4)


def _compose(rng: np.random.Generator, canvas: _Canvas,
             umpp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin, DAB and residual OD maps from the drawn layers."""
    h, w = canvas.labels.shape
    px = 1.0 / umpp
    nuc = canvas.labels > 0
    cell = canvas.cell_mask > 0
    chrom = optics.smooth_noise(rng, h, w, max(1.0, 0.7 * px))
    grain = optics.smooth_noise(rng, h, w, max(1.0, 0.5 * px))
    texture = 1.0 + rng.uniform(0.1, 0.35) * np.clip(chrom, -2.0, 2.0)
    hema = np.where(nuc, canvas.h_nuc * texture, np.where(cell, canvas.h_cyto, canvas.h_bg))
    tissue = canvas.h_bg > 0
    bg_dab = rng.uniform(0.0, 0.02) * tissue
    faint = np.minimum(canvas.faint_dab, MAX_BACKGROUND_DAB_OD - 0.02)
    faint = np.where(nuc, 0.0, faint) + bg_dab
    # Granularity stays inside ±GRAIN so every membrane pixel keeps its class's OD range.
    mem = canvas.membrane * (1.0 + GRAIN * np.clip(grain / 2.0, -1.0, 1.0))
    dab = np.where(canvas.membrane > 0, mem, faint)
    resid = rng.uniform(0.0, 0.02) + 0.01 * np.clip(optics.smooth_noise(
        rng, h, w, 30 * px), 0.0, None)
    resid = resid + _debris(rng, h, w, px)
    return (np.maximum(hema, 0.0).astype(np.float32), dab.astype(np.float32),
            resid.astype(np.float32))


def _debris(rng: np.random.Generator, h: int, w: int, px: float) -> np.ndarray:
    """A few small grey specks (dust on the slide): dark, but neither nucleus nor membrane."""
    out = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 4))):
        centre = rng.uniform((0, 0), (w, h))
        outline = _nucleus_outline(rng, centre, rng.uniform(1.0, 4.0) * px,
                                   rng.uniform(0.5, 2.0) * px, 0.2, n=12)
        cv2.fillPoly(out, [_fixed(outline)], (rng.uniform(0.1, 0.5),), cv2.LINE_8, 4)
    return out


def _finalise_truth(canvas: _Canvas, cells: list[_Cell], others: list[_Other],
                    visible: np.ndarray, truth: list[_TumourTruth],
                    ) -> tuple[np.ndarray, np.ndarray, tuple[CellTruth, ...]]:
    """Renumber visible nuclei 1..K (tumour first) and build the per-cell truth."""
    n_total = len(cells) + len(others)
    lut = np.zeros(n_total + 2, np.int32)
    lut[visible] = np.arange(1, len(visible) + 1, dtype=np.int32)
    labels = lut[canvas.labels]
    owner = np.where(canvas.owner > 0, lut[np.maximum(canvas.owner, 0)], canvas.owner)
    count = np.bincount(labels.ravel(), minlength=len(visible) + 1).astype(np.float64)
    ys, xs = np.indices(labels.shape)
    cx = np.bincount(labels.ravel(), weights=xs.ravel(), minlength=len(visible) + 1) / \
        np.maximum(count, 1)
    cy = np.bincount(labels.ravel(), weights=ys.ravel(), minlength=len(visible) + 1) / \
        np.maximum(count, 1)
    complete_fraction = MeasureConfig().complete_fraction
    out = []
    for new_id, old in enumerate(visible, start=1):
        x, y = float(cx[new_id]), float(cy[new_id])
        if old <= len(cells):
            t = truth[old - 1]
            cls = classify_membrane(t.intensity, t.completeness, complete_fraction)
            out.append(CellTruth(new_id, "tumour", x, y, t.intensity, t.completeness, cls))
        else:
            kind = others[old - len(cells) - 1].kind
            out.append(CellTruth(new_id, kind, x, y, None, 0.0, None))
    return labels.astype(np.int32), owner.astype(np.int32), tuple(out)


_STAIN_ATTEMPTS = 12


def _stain_membranes(rng: np.random.Generator, canvas: _Canvas, cells: list[_Cell],
                     visible: np.ndarray, plan: _Plan, layout: _Layout, style: _Style,
                     umpp: float) -> list[_TumourTruth]:
    """Stain the membranes until what an observer sees scores as the plan's target.

    Neighbours' bands add to a cell's visible outline (see _apparent_truth), so a drawn
    mix can read one grade higher; such a draw is redone with fresh random choices
    (deterministic for the seed). After the last attempt the field keeps its true score.
    """
    layers = (canvas.membrane.copy(), canvas.owner.copy(), canvas.faint_dab.copy())
    truth: list[_TumourTruth] = []
    for _ in range(_STAIN_ATTEMPTS):
        canvas.membrane[:], canvas.owner[:], canvas.faint_dab[:] = layers
        recipes = _assign_recipes(rng, cells, visible, plan, layout)
        _draw_membranes(rng, canvas, cells, recipes, visible, style, umpp)
        truth = _apparent_truth(canvas, cells, style)
        if plan.target is None or _score_of(truth, visible, len(cells)) == plan.target:
            break
    return truth


def _score_of(truth: list[_TumourTruth], visible: np.ndarray, n_cells: int) -> str | None:
    """The rule engine's score of the visible tumour cells' apparent truth."""
    complete_fraction = MeasureConfig().complete_fraction
    classes = [classify_membrane(truth[int(i) - 1].intensity, truth[int(i) - 1].completeness,
                                 complete_fraction) for i in visible if i <= n_cells]
    verdict = score_field(classes, RulesConfig())
    return verdict.score.value if isinstance(verdict, FieldScore) else None


def _apparent_truth(canvas: _Canvas, cells: list[_Cell], style: _Style) -> list[_TumourTruth]:
    """Each tumour cell's membrane as an observer sees it along the cell's outline.

    Two touching cells share one visible boundary: a stained band drawn inside the
    neighbour lies a gap's width from this cell's outline and no picture (and no
    pathologist) can tell whose it is. So the truth of a cell is the stain found at its
    outline from either side: coverage = stained fraction of the outline, intensity = the
    median of the peak membrane OD at the stained points. For cells without stained
    neighbours this is exactly the drawn recipe.
    """
    # A band (own or a neighbour's) begins within gap/2 + 2·wobble of the outline.
    reach = style.gap / 2.0 + 2.0 * style.wobble + 1.5
    k = 2 * math.ceil(reach) + 1
    peak = cv2.dilate(canvas.membrane, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    h, w = peak.shape
    thresholds = MeasureConfig().intensity_thresholds
    out = []
    for cell in cells:
        closed = np.vstack([cell.poly, cell.poly[:1]])
        seg = np.diff(closed, axis=0)
        steps = np.maximum(1, np.ceil(np.hypot(*seg.T)).astype(int))
        t = np.concatenate([np.arange(n) / n for n in steps])
        pts = np.repeat(closed[:-1], steps, axis=0) + np.repeat(seg, steps, axis=0) * t[:, None]
        xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        inside = (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
        if not inside.any():
            out.append(_TumourTruth(Intensity.NONE, 0.0))
            continue
        values = peak[yi[inside], xi[inside]]
        stained = values >= thresholds[0]
        coverage = float(stained.mean())
        if not stained.any():
            out.append(_TumourTruth(Intensity.NONE, 0.0))
            continue
        intensity = classify_intensity(float(np.median(values[stained])), thresholds)
        out.append(_TumourTruth(intensity, coverage))
    return out


# ---------------------------------------------------------------------------------- render


def _unit(vec: list[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(vec, np.float32)
    return v / float(np.linalg.norm(v))


def _jitter_vector(rng: np.random.Generator, vec: np.ndarray, max_deg: float) -> np.ndarray:
    """Turn a unit stain vector by up to ``max_deg`` in a random direction.

    The turned vector keeps the order of its red/green/blue absorbances, so haematoxylin
    stays blue-purple to grey-blue and DAB yellow-brown to dark brown rather than turning
    green. A few tries are drawn every time (a fixed count keeps the stream reproducible).
    """
    order = np.argsort(vec)
    axes = rng.standard_normal((8, 3)).astype(np.float32)
    thetas = np.radians(rng.uniform(0.0, max_deg, 8))
    for axis, theta in zip(axes, thetas, strict=True):
        axis = axis - vec * float(axis @ vec)
        axis /= max(float(np.linalg.norm(axis)), 1e-6)
        turned = _unit(np.clip(vec * math.cos(theta) + axis * math.sin(theta), 0.02, None))
        if np.array_equal(np.argsort(turned), order):
            return turned
    return vec


def _transmission(scene: Scene, h_vec: np.ndarray, d_vec: np.ndarray,
                  dab_scale: float = 1.0) -> np.ndarray:
    """Beer-Lambert: transmitted fraction of the white light per channel, float32 (H, W, 3)."""
    # Skipping the product at 1.0 keeps every existing field bit-identical.
    dab = scene.dab if dab_scale == 1.0 else scene.dab * np.float32(dab_scale)
    od = (scene.hematoxylin[:, :, None] * h_vec + dab[:, :, None] * d_vec
          + scene.residual[:, :, None] * _RESIDUAL_VEC)
    return np.exp(-_LN10 * od).astype(np.float32)


def _light_and_sensor(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """Lamp, vignetting, dust, exposure, white-balance error and sensor noise."""
    h, w = light.shape[:2]
    illum = optics.illumination_field(rng, h, w, vignetting=rng.uniform(0.0, 0.45),
                                      unevenness=rng.uniform(0.0, 0.25))
    if rng.uniform() < 0.3:
        illum = illum * optics.dust_shadows(rng, h, w, int(rng.integers(1, 4)),
                                            radius_px=(5.0, 40.0), depth=(0.05, 0.25))
    exposure = rng.uniform(0.97, 1.1) if rng.uniform() < 0.1 else rng.uniform(0.75, 0.97)
    gains = optics.colour_temperature_gains(rng, rng.uniform(0.0, 1.0)) * exposure
    light = optics.apply_gain(optics.apply_gain(light, illum), gains)
    full_well = 300.0 * 16.0 ** rng.uniform()  # 300..4800 e-: high gain to base ISO
    return optics.sensor_noise(light, rng, full_well=full_well,
                               read_noise=rng.uniform(0.002, 0.01))
