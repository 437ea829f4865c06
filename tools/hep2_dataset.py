"""Cell-crop datasets for the HEp-2 classifier: generated (one pattern or compound), a lab's cell
folders, a lab's fields.

Four sources, one form (:class:`CropSet`: the normalised crops of crops.py, a pattern
index into patterns.NAMES, a mitosis index into MITOSIS_CLASSES or -1 when unknown, and a
per-crop loss weight):

* **generated** (:func:`generated_crops`): fields from tools/synth/hep2_fields.py, one
  pattern per field. A field's cells are cut either with the generator's own truth masks
  after a random erode / dilate / shift of each mask, or as the assay's segmentation
  finds and crops them (labelled by the truth cell they match): the network must know a
  Golgi-like cell found as its bright spot as well as the whole cell. Stratified: the
  fields cycle through the patterns and each pattern stops contributing once it has its
  share. Seeded end to end.
* **compound cells** (:func:`compound_crops`): two patterns of different regions drawn
  in the same cells (AC-3 in the nucleus with AC-22 in the cytoplasm, say), with the
  second pattern in ``CropSet.second``.
* **a lab's cell crops** (:func:`folder_crops`): the ICPR 2014 / I3A layout,
  ``DIR/<class name>/*.png|tif``; folder names go through patterns.canonical (so
  "NuMem" is envelope_smooth). Each image is cut as the box cuts a single-cell image
  (appliance/assays/hep2/single_cell.py: at the true size when the images' scale is
  given, with the companion ``<stem>_mask.*`` file as the mask when there is one). The
  mitotic state is unknown (-1: not trained on).
* **a lab's whole fields** (:func:`field_crops`): a CSV ``file,pattern[,pattern2]`` of
  specimen labels. Cells are segmented by appliance.assays.hep2.segmentation and every
  cell takes the specimen's pattern. These are WEAK labels: a specimen's pattern is not
  every cell's (unstained or mitotic cells, debris, a minor second pattern), so such
  crops get weight 0.5, and 0.25 for two-pattern specimens, where each cell is labelled
  with the first (strongest) pattern because which cell shows which is not known.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.assays.hep2.cell_files import IMAGE_SUFFIXES, companion_mask, is_mask_file
from appliance.assays.hep2.crops import cell_crop, crops_for
from appliance.assays.hep2.patterns import NAMES, canonical
from appliance.assays.hep2.scale import estimate_scale
from appliance.assays.hep2.single_cell import single_cell_crop
from appliance.assays.hep2.types import MITOSIS_CLASSES
from appliance.config import Hep2CellsConfig

# Seed ranges: never overlap, so held-out figures are honest.
TRAIN_SEEDS = range(700_000, 710_000)
VAL_SEEDS = range(720_000, 721_000)
CALIBRATION_SEEDS = range(730_000, 731_000)
COMPOUND_SEEDS = range(740_000, 750_000)  # compound (two-region) cells for training
VAL_COMPOUND_SEEDS = range(750_000, 751_000)
COMPOUND_PER_FIELD = 12  # compound cells taken from one field, so each pair has many looks
WEAK_WEIGHT = 0.5
MIN_IOU = 0.5  # a segmented cell is the truth cell it overlaps this much (else: centroid)
MIXED_WEIGHT = 0.25

Segmenter = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class CropSet:
    """Normalised crops with their labels."""

    crops: np.ndarray  # (N, 2, S, S) float32
    pattern: np.ndarray  # (N,) int64 index into patterns.NAMES
    mitosis: np.ndarray  # (N,) int64 index into MITOSIS_CLASSES, -1 unknown
    weight: np.ndarray  # (N,) float32 loss weight (1 exact, < 1 weak labels)
    # (N,) int64: the second pattern of a compound cell (two regions stained), -1 none.
    second: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.second is None:
            object.__setattr__(self, "second", np.full(len(self.pattern), -1, np.int64))

    @property
    def seconds(self) -> np.ndarray:
        """``second`` as an array (never None after construction)."""
        assert self.second is not None
        return self.second

    def __len__(self) -> int:
        return len(self.pattern)

    def subset(self, index: np.ndarray) -> CropSet:
        """The crops at ``index``."""
        return CropSet(self.crops[index], self.pattern[index], self.mitosis[index],
                       self.weight[index], self.seconds[index])


def concat(sets: Iterable[CropSet], crop_px: int = 64) -> CropSet:
    """One CropSet from several (an empty one when there are none)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        return CropSet(np.zeros((0, 2, crop_px, crop_px), np.float32), np.zeros(0, np.int64),
                       np.zeros(0, np.int64), np.zeros(0, np.float32))
    return CropSet(np.concatenate([s.crops for s in sets]),
                   np.concatenate([s.pattern for s in sets]),
                   np.concatenate([s.mitosis for s in sets]),
                   np.concatenate([s.weight for s in sets]),
                   np.concatenate([s.seconds for s in sets]))


# --- generated cells -------------------------------------------------------------------------

def perturb_mask(mask: np.ndarray, um_per_px: float, rng: np.random.Generator) -> np.ndarray:
    """The mask eroded or dilated by up to ~1 µm and shifted by up to ~1 µm (never empty)."""
    px = max(1, round(1.0 / um_per_px))
    grown = mask.astype(np.uint8)
    r = int(rng.integers(-px, px + 1))
    if r:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(r) + 1, 2 * abs(r) + 1))
        grown = np.asarray(cv2.dilate(grown, kernel) if r > 0 else cv2.erode(grown, kernel))
    dx, dy = (int(v) for v in rng.integers(-px, px + 1, size=2))
    out = np.roll(grown, (dy, dx), axis=(0, 1)).astype(bool)
    return out if out.any() else mask.astype(bool)


def label_overlaps(seg_labels: np.ndarray, truth_labels: np.ndarray) -> np.ndarray:
    """(n_seg + 1, n_truth + 1) pixel counts of every (segmented, truth) label pair,
    background (0) included: one bincount gives the intersections of all pairs."""
    n_seg = int(seg_labels.max(initial=0))
    n_truth = int(truth_labels.max(initial=0))
    pair = seg_labels.ravel().astype(np.int64) * (n_truth + 1) + truth_labels.ravel()
    counts = np.bincount(pair, minlength=(n_seg + 1) * (n_truth + 1))
    return counts.reshape(n_seg + 1, n_truth + 1)


def match_cells(seg_labels: np.ndarray, centroids: np.ndarray, truth_labels: np.ndarray,
                *, min_iou: float = MIN_IOU) -> dict[int, int]:
    """Segmented label -> truth cell id, for every segmented cell that matches one.

    A match is the truth cell overlapping it with IoU >= ``min_iou``, or failing that the
    truth cell under its centroid (a segmented cell a bit too large or small is still
    that cell; one lying on background matches nothing). ``centroids``: (count, 2) x, y
    of labels 1..count.
    """
    if seg_labels.shape != truth_labels.shape:
        raise ValueError(f"segmentation {seg_labels.shape} and truth {truth_labels.shape} "
                         "label images differ in shape")
    n_seg = int(seg_labels.max(initial=0))
    if n_seg == 0:
        return {}
    inter = label_overlaps(seg_labels, truth_labels)
    seg_area = inter.sum(axis=1)
    truth_area = inter.sum(axis=0)
    out: dict[int, int] = {}
    h, w = seg_labels.shape
    for s in range(1, n_seg + 1):
        if seg_area[s] == 0:
            continue
        row = inter[s, 1:]
        t = int(np.argmax(row)) + 1 if row.size else 0
        if t and row[t - 1] > 0:
            iou = row[t - 1] / (seg_area[s] + truth_area[t] - row[t - 1])
            if iou >= min_iou:
                out[s] = t
                continue
        if s - 1 < len(centroids):
            x, y = centroids[s - 1]
            xi, yi = min(w - 1, max(0, round(float(x)))), min(h - 1, max(0, round(float(y))))
            under = int(truth_labels[yi, xi])
            if under:
                out[s] = under
    return out


def mitosis_index(mitotic: bool, plate_stained: bool) -> int:
    """Index into MITOSIS_CLASSES of a cell's truth."""
    if not mitotic:
        return 0
    return 1 if plate_stained else 2


def _truth_mask_crops(field: Any, cfg: Hep2CellsConfig, rng: np.random.Generator,
                      um_seen: float) -> list[tuple[np.ndarray, Any]]:
    """(crop, truth cell) of every whole cell, cut with its own mask after a perturbation,
    at the scale the box would believe (``um_seen``)."""
    labels, um = field.cell_labels, float(field.um_per_px)
    green = field.image[..., 1].astype(np.float32)
    out = []
    for cell in field.cells:
        if cell.touches_edge:
            continue
        mask = perturb_mask(labels == cell.cell_id, um, rng)
        ys, xs = np.nonzero(mask)
        out.append((cell_crop(green, mask, (float(xs.mean()), float(ys.mean())), um_seen,
                              cfg), cell))
    return out


def _segmented_crops(field: Any, cfg: Hep2CellsConfig, um_seen: float
                     ) -> list[tuple[np.ndarray, Any]]:
    """(crop, truth cell) of every whole cell the assay's own segmentation finds, cut as
    the assay cuts it (crops_for), labelled by the truth cell it matches.

    A Golgi-like or nucleolar cell is often found as its bright part only: the classifier
    must know that crop too, not just the whole-cell mask of the truth. Segmented and
    cut at the scale the box would believe (``um_seen``).
    """
    from appliance.assays.hep2.segmentation import segment_cells

    um = um_seen
    green = field.image[..., 1].astype(np.float32)
    seg = segment_cells(green, um, cfg)
    crops, ids = crops_for(green, seg.labels, um, cfg)
    matches = match_cells(seg.labels, seg.centroids, field.cell_labels)
    by_id = {c.cell_id: c for c in field.cells}
    out = []
    for crop, sid in zip(crops, ids.tolist(), strict=True):
        cell = by_id.get(matches.get(sid, 0))
        if cell is not None and not seg.touches_edge[sid - 1] and not cell.touches_edge:
            out.append((crop, cell))
    return out


def field_cell_crops(field: Any, cfg: Hep2CellsConfig, rng: np.random.Generator,
                     classes: Iterable[str] = NAMES, *, compound: bool = False,
                     segmented: bool = False, scale_error: float = 1.0) -> CropSet:
    """Crops of the whole (not edge-cut) cells of one generated field.

    ``segmented``: the cells as the assay's segmentation finds and crops them; otherwise
    the truth masks, perturbed. ``compound``: only the interphase cells drawn with two
    patterns (their second in ``second``). ``scale_error``: the box believes the field's
    scale to be this many times the true one (an estimated scale), and cuts accordingly.
    """
    keep = set(classes)
    um_seen = float(field.um_per_px) * scale_error
    found = (_segmented_crops(field, cfg, um_seen) if segmented
             else _truth_mask_crops(field, cfg, rng, um_seen))
    crops, pats, mits, seconds = [], [], [], []
    for crop, cell in found:
        if cell.pattern not in keep:
            continue
        if compound and (cell.second is None or cell.mitotic):
            continue
        crops.append(crop)
        pats.append(NAMES.index(cell.pattern))
        mits.append(mitosis_index(cell.mitotic, cell.plate_stained))
        seconds.append(NAMES.index(cell.second) if cell.second is not None else -1)
    n = len(pats)
    if not n:
        return concat([], cfg.crop_px)
    return CropSet(np.stack(crops), np.array(pats, np.int64), np.array(mits, np.int64),
                   np.ones(n, np.float32), np.array(seconds, np.int64))


def generated_crops(seeds: Iterable[int], per_class: int, cfg: Hep2CellsConfig, *,
                    classes: tuple[str, ...] = NAMES, rng_seed: int = 0,
                    max_per_field: int = 40, segmented_share: float = 0.0,
                    scale_error: float = 1.0, camera_share: float = 0.0,
                    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
                    **spec_overrides: Any) -> CropSet:
    """Up to ``per_class`` crops of each class from generated one-pattern fields.

    Field ``i`` of ``seeds`` shows pattern ``classes[i % len(classes)]`` (stratified); a
    class that has its ``per_class`` crops is skipped from then on. Stops when every class
    is full or the seeds run out. At most ``max_per_field`` cells of a field are used (a
    random choice), so a class is seen at many scales, intensities and cameras.
    ``segmented_share`` of the fields are cut as the assay's segmentation finds them
    (see :func:`field_cell_crops`). ``scale_error`` > 1: half the fields are cut at a
    wrong scale, off by a factor drawn log-uniform up to ``scale_error`` either way, as an
    estimated scale would be (:func:`drawn_scale_error`). ``camera_share`` of the fields
    are seen through a randomly drawn real camera first (:func:`through_a_camera`).
    ``spec_overrides`` go to Hep2FieldSpec (e.g. width, mitotic_fraction).
    """
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    rng = np.random.default_rng(rng_seed)
    counts = dict.fromkeys(classes, 0)
    sets: list[CropSet] = []
    seed_list = list(seeds)
    order = progress(range(len(seed_list))) if progress else range(len(seed_list))
    for i in order:
        name = classes[i % len(classes)]
        if counts[name] >= per_class:
            if all(c >= per_class for c in counts.values()):
                break
            continue
        spec = Hep2FieldSpec(seed=seed_list[i], patterns=((name, 1.0),),
                             **spec_overrides)
        segmented = segmented_share > 0 and rng.random() < segmented_share
        field = through_a_camera(generate_hep2_field(spec), rng, camera_share)
        got = field_cell_crops(field, cfg, rng, classes=(name,), segmented=segmented,
                               scale_error=drawn_scale_error(rng, scale_error))
        take = min(len(got), per_class - counts[name], max_per_field)
        counts[name] += take
        sets.append(got.subset(np.sort(rng.permutation(len(got))[:take])))
    return concat(sets, cfg.crop_px)


SCALE_ERROR_SHARE = 0.5  # of the fields, with scale_error > 1: the others are cut exactly


def drawn_scale_error(rng: np.random.Generator, largest: float) -> float:
    """1, or (for SCALE_ERROR_SHARE of the fields) a factor log-uniform in
    [1 / largest, largest]. ``largest`` <= 1 draws nothing, so the crops (and caches) of a
    run without scale errors stay what they were."""
    if largest <= 1.0 or rng.random() >= SCALE_ERROR_SHARE:
        return 1.0
    return float(np.exp(rng.uniform(-np.log(largest), np.log(largest))))


def through_a_camera(field: Any, rng: np.random.Generator, share: float) -> Any:
    """``field`` with its picture as a randomly drawn real camera would give it
    (tools/synth/camera_looks.py: colour mosaic or monochrome, read noise, tone curve,
    MJPG), for ``share`` of the fields; the truth is unchanged. ``share`` 0 draws nothing,
    so the crops (and caches) of a run without it stay what they were."""
    from tools.synth.camera_looks import random_camera

    if share <= 0 or rng.random() >= share:
        return field
    return replace(field, image=random_camera(field.image, rng)[0])


def compound_pairs(classes: tuple[str, ...] = NAMES) -> list[tuple[str, str]]:
    """Every pair of staining classes of different cell regions (they can share a cell)."""
    from tools.synth.hep2_fields import region_of

    staining = [n for n in classes if region_of(n) != "none"]
    return [(a, b) for i, a in enumerate(staining) for b in staining[i + 1:]
            if region_of(a) != region_of(b)]


def compound_crops(seeds: Iterable[int], count: int, cfg: Hep2CellsConfig, *,
                   rng_seed: int = 0, max_per_field: int = COMPOUND_PER_FIELD,
                   segmented_share: float = 0.0, scale_error: float = 1.0,
                   camera_share: float = 0.0,
                   progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
                   **spec_overrides: Any) -> CropSet:
    """About ``count`` crops of compound cells: two patterns of different regions in one cell.

    Field ``i`` draws pair ``i`` of :func:`compound_pairs` (cycling), both patterns in
    every cell (``combined=True``), so the classifier learns that a cell can show, say,
    AC-3 in its nucleus and AC-22 in its cytoplasm, and gives both their probability.
    At most ``max_per_field`` cells per field, so every pair is seen at many looks.
    ``camera_share``: as in :func:`generated_crops`.
    """
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    rng = np.random.default_rng(rng_seed)
    pairs = compound_pairs()
    sets: list[CropSet] = []
    have = 0
    seed_list = list(seeds)
    order = progress(range(len(seed_list))) if progress else range(len(seed_list))
    for i in order:
        if have >= count:
            break
        a, b = pairs[i % len(pairs)]
        spec = Hep2FieldSpec(seed=seed_list[i], patterns=((a, 0.5), (b, 0.5)), combined=True,
                             **spec_overrides)
        segmented = segmented_share > 0 and rng.random() < segmented_share
        field = through_a_camera(generate_hep2_field(spec), rng, camera_share)
        got = field_cell_crops(field, cfg, rng, compound=True, segmented=segmented,
                               scale_error=drawn_scale_error(rng, scale_error))
        take = min(len(got), count - have, max_per_field)
        have += take
        sets.append(got.subset(np.sort(rng.permutation(len(got))[:take])))
    return concat(sets, cfg.crop_px)


def save_cropset(path: Path, data: CropSet) -> None:
    """Write ``data`` to ``path`` (.npz, uncompressed: the crops are read back often)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, crops=data.crops, pattern=data.pattern, mitosis=data.mitosis,
             weight=data.weight, second=data.seconds)
    tmp.replace(path)  # atomic: a run killed mid-write leaves no half cache behind


def load_cropset(path: Path) -> CropSet:
    """A CropSet written by :func:`save_cropset`; clear error when the file is not one."""
    try:
        with np.load(path) as z:
            # Caches written before compound cells have no "second": none then.
            second = z["second"].astype(np.int64) if "second" in z.files else None
            data = CropSet(z["crops"].astype(np.float32), z["pattern"].astype(np.int64),
                           z["mitosis"].astype(np.int64), z["weight"].astype(np.float32),
                           second)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a crop cache ({exc})") from exc
    n = len(data.pattern)
    if not (len(data.crops) == len(data.mitosis) == len(data.weight) == len(data.seconds)
            == n):
        raise ValueError(f"{path}: crop cache arrays differ in length")
    return data


def cached(path: Path | None, build: Callable[[], CropSet]) -> CropSet:
    """``build()``, or its earlier result from ``path`` when there is one (None: no cache).

    The caller puts every input of ``build`` in the file name, so a cache is never reused
    for other seeds or counts.
    """
    if path is not None and path.is_file():
        return load_cropset(path)
    data = build()
    if path is not None:
        save_cropset(path, data)
    return data


# --- a lab's cell crops (ICPR 2014 / I3A layout) ----------------------------------------------

def read_grey(path: Path) -> np.ndarray:
    """An image file as one float32 channel in 8-bit grey levels (green of an RGB image)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    if img.ndim == 3:
        # OpenCV is BGR(A): index 1 is green either way.
        img = img[..., 1]
    scale = 255.0 / 65535.0 if img.dtype == np.uint16 else 1.0
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: unsupported pixel type {img.dtype} (8- or 16-bit expected)")
    return img.astype(np.float32) * np.float32(scale)


def folder_classes(root: Path) -> dict[str, str]:
    """Folder name -> our class name for every class folder under ``root``; clear errors."""
    if not root.is_dir():
        raise ValueError(f"no dataset folder at {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root} has no class folders (expected DIR/<class name>/*.png)")
    out = {}
    for name in folders:
        try:
            out[name] = canonical(name)
        except ValueError as exc:
            raise ValueError(f"dataset {root}: folder {name!r}: {exc}") from None
    return out


def folder_crops(root: Path, cfg: Hep2CellsConfig, um_per_px: float | None = None) -> CropSet:
    """Crops from a folder-per-class tree of single-cell images (ICPR 2014 / I3A layout).

    Each image is cut as the box cuts a single-cell image (single_cell.py), so a model
    trained on them reads the box's crops: at the true size when ``um_per_px`` (the
    images' scale) is given, else at a scale from the companion mask's size, else with
    the image taken as one cell filling it. A companion mask (``<stem>_mask.*``) is the
    cell's mask.
    """
    crops, pats = [], []
    for folder, name in folder_classes(root).items():
        files = sorted(p for p in (root / folder).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask_file(p))
        for path in files:
            grey = read_grey(path)
            mask_path = companion_mask(path)
            mask = None if mask_path is None else read_grey(mask_path) > 0
            if mask is not None and mask.shape != grey.shape:
                raise ValueError(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]} px, its cell "
                                 f"{path.name} {grey.shape[1]}x{grey.shape[0]}")
            crops.append(single_cell_crop(grey, cfg, um_per_px=um_per_px, mask=mask).crop)
            pats.append(NAMES.index(name))
    if not pats:
        raise ValueError(f"{root}: the class folders hold no images "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    n = len(pats)
    return CropSet(np.stack(crops), np.array(pats, np.int64), np.full(n, -1, np.int64),
                   np.ones(n, np.float32))


# --- a lab's whole fields with specimen labels -------------------------------------------------

def read_specimen_csv(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Rows ``file,pattern[,pattern2]`` (a header row starting "file" is skipped)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or (lineno == 1 and cells[0].lower() == "file"):
                continue
            if len(cells) < 2:
                raise ValueError(f"{path}:{lineno}: expected file,pattern[,pattern2]")
            try:
                names = tuple(canonical(c) for c in cells[1:3])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            rows.append((cells[0], names))
    if not rows:
        raise ValueError(f"{path}: no labelled fields")
    return rows


def _default_segmenter(cfg: Hep2CellsConfig) -> Segmenter:
    try:
        from appliance.assays.hep2.segmentation import segment_cells
    except ImportError as exc:
        raise RuntimeError(f"whole-field training needs appliance.assays.hep2.segmentation "
                           f"({exc})") from exc

    def run(green: np.ndarray, um_per_px: float) -> np.ndarray:
        return segment_cells(green, um_per_px, cfg).labels

    return run


def field_crops(csv_path: Path, um_per_px: float | None, cfg: Hep2CellsConfig, *,
                segment: Segmenter | None = None) -> CropSet:
    """Weakly labelled crops of every segmented cell of the fields listed in ``csv_path``.

    Files are relative to the CSV's folder. ``um_per_px`` is the fields' scale; None
    estimates it field by field from the cells' size (scale.estimate_scale: the box's
    first step where nothing declares it; the box then checks it with its classifier,
    which a model still in training cannot do, so give the scale where it is known).
    ``segment(green, um_per_px) -> labels`` defaults to the assay's own segmentation, so
    training sees the masks the box makes.
    """
    if um_per_px is not None and not (um_per_px > 0 and math.isfinite(um_per_px)):
        raise ValueError(f"um_per_px must be positive, got {um_per_px!r}")
    seg = segment or _default_segmenter(cfg)
    sets = []
    for name, patterns in read_specimen_csv(csv_path):
        green = read_grey(csv_path.parent / name)
        um = um_per_px if um_per_px is not None else estimate_scale(green, cfg).um_per_px
        crops, _ids = crops_for(green, seg(green, um), um, cfg)
        n = len(crops)
        weight = WEAK_WEIGHT if len(patterns) == 1 else MIXED_WEIGHT
        sets.append(CropSet(crops, np.full(n, NAMES.index(patterns[0]), np.int64),
                            np.full(n, -1, np.int64), np.full(n, weight, np.float32)))
    return concat(sets, cfg.crop_px)


__all__ = ["MITOSIS_CLASSES", "CropSet", "cached", "compound_crops", "compound_pairs", "concat",
           "field_crops", "folder_crops", "generated_crops",
           "load_cropset", "save_cropset"]
