"""Generated HER2 fields prepared exactly as the runtime prepares camera frames.

Training, INT8 calibration and evaluation all draw from here, so the model sees
images resampled to the working scale by the runtime's own functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import Pool

import cv2
import numpy as np
from tqdm import tqdm

from appliance.assays.her2.working_scale import choose_working_scale, resample
from appliance.config import MeasureConfig
from tools.synth.her2_fields import FieldSpec, SyntheticField, class_map, generate_field

# Seed ranges kept apart so held-out fields are never seen in training or calibration.
TRAIN_SEEDS = range(100_000, 200_000)
CALIBRATION_SEEDS = range(500_000, 510_000)
HELD_OUT_SEEDS = range(900_000, 1_000_000)
SCORES = ("0", "1+", "2+", "3+")


@dataclass(frozen=True)
class WorkingSample:
    """One field at working scale: the picture and its per-pixel classes."""

    image: np.ndarray  # (H, W, 3) uint8
    classes: np.ndarray  # (H, W) uint8, tools.her2_net.CLASSES order
    um_per_px: float


def spec_for(seed: int, *, width: int = 640, height: int = 480) -> FieldSpec:
    """A varied field spec: every score, some special patterns, some glass and fat."""
    rng = np.random.default_rng(seed)
    roll = rng.random()
    if roll < 0.04:
        return FieldSpec(seed=seed, width=width, height=height, tissue="empty")
    if roll < 0.08:
        return FieldSpec(seed=seed, width=width, height=height, tissue="fat")
    if roll < 0.16:
        pattern = str(rng.choice(["null", "ultralow", "unusual_intense", "unusual_basolateral"]))
        return FieldSpec(seed=seed, width=width, height=height, pattern=pattern)
    return FieldSpec(seed=seed, width=width, height=height,
                     target_score=SCORES[int(rng.integers(4))])


def _resize_classes(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downsample a class map keeping thin membranes (area fraction ≥ 0.3 wins)."""
    if classes.shape[::-1] == size:
        return classes
    out = np.zeros(size[::-1], np.uint8)
    # Later classes overwrite earlier ones: membrane last so thin lines survive.
    for k, cut in ((2, 0.5), (1, 0.5), (3, 0.3)):
        frac = cv2.resize((classes == k).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        out[frac >= cut] = k
    return out


def to_working(field: SyntheticField, measure: MeasureConfig,
               working: float | None = None) -> WorkingSample:
    """Resample a generated field (picture and labels) to the runtime's working scale."""
    h, w = field.image.shape[:2]
    scale = working or choose_working_scale(field.um_per_px, h, w, measure)
    image = resample(field.image, field.um_per_px, scale)
    classes = _resize_classes(class_map(field), (image.shape[1], image.shape[0]))
    return WorkingSample(image=image, classes=classes, um_per_px=scale)


def _make(args: tuple[int, bool]) -> WorkingSample:
    seed, vary_scale = args
    field = generate_field(spec_for(seed))
    measure = MeasureConfig()
    working = None
    if vary_scale:
        # Cover the whole band of working scales the runtime may choose.
        lo = max(field.um_per_px, measure.working_um_per_px)
        rng = np.random.default_rng(seed + 7)
        working = float(rng.uniform(lo, max(lo, measure.max_working_um_per_px)))
    return to_working(field, measure, working)


def make_samples(seeds: range | list[int], *, vary_scale: bool, workers: int = 2,
                 desc: str = "generating") -> list[WorkingSample]:
    """Generate and prepare many fields in parallel, with a progress bar."""
    jobs = [(s, vary_scale) for s in seeds]
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(_make, jobs, chunksize=4), total=len(jobs), desc=desc))


def random_crops(samples: list[WorkingSample], size: int, batch: int,
                 rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images, classes) batches of random crops with flips and 90° turns."""
    while True:
        imgs = np.empty((batch, size, size, 3), np.uint8)
        labs = np.empty((batch, size, size), np.uint8)
        for i in range(batch):
            s = samples[int(rng.integers(len(samples)))]
            img, lab = _pad_min(s.image, s.classes, size)
            y = int(rng.integers(img.shape[0] - size + 1))
            x = int(rng.integers(img.shape[1] - size + 1))
            img, lab = img[y:y + size, x:x + size], lab[y:y + size, x:x + size]
            k = int(rng.integers(4))
            img, lab = np.rot90(img, k), np.rot90(lab, k)
            if rng.random() < 0.5:
                img, lab = img[:, ::-1], lab[:, ::-1]
            imgs[i], labs[i] = img, lab
        yield imgs, labs


def _pad_min(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        lab = np.pad(lab, ((0, ph), (0, pw)), mode="reflect")
    return img, lab
