"""How well the HEp-2 segmentation finds and outlines the cells of each pattern.

    python -m tools.eval_hep2_segmentation [--fields 6] [--seed 860000]
                                           [--json build/eval/hep2_segmentation.json]

Generated one-pattern fields (640x480; scale, intensity, density, bleaching and optics
drawn by the seed, so 10x to 40x), ``--fields`` per stained pattern, are segmented at
their true scale (the scale estimate is measured by the assay's own tests). For the
whole cells of the truth (not cut by the border) it counts:

- found: a segmented object matches the cell, as the eval matches them (IoU >= 0.5, or
  failing that the object's centroid lies in it): the cell gets a crop and a vote;
- split: found, by two or more objects (it is counted, and votes, more than once);
- merged: not found, and its nucleus centre lies in an object matched to another cell;
- missed: not found, and its nucleus centre lies on background;
- outlined: one object overlaps it at IoU >= 0.5 (an outline the overlay can show as
  the cell's; a nucleus-only outline of a cell with a wide dark cytoplasm fails this);

and, of the segmented objects, those matching no whole or edge cell (false objects).
Negative fields are left out: their faint cells need not be found. Seeds 860000+ are
used by nothing else. Prints a table, writes the numbers and a bar chart.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.segmentation import Hep2Cells, segment_cells
from appliance.config import Hep2CellsConfig
from tools.eval_hep2 import BANDS, scale_band
from tools.hep2_dataset import label_overlaps, match_cells
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

FIRST_SEED = 860_000  # apart from the eval (500000+), tuning (600000+), training (700000+)
PATTERNS = tuple(n for n in NAMES if n != "negative")
WIDTH, HEIGHT = 640, 480
OUTLINE_IOU = 0.5


@dataclass
class SegTally:
    """Counts over some fields (see the module docstring for each)."""

    cells: int = 0
    found: int = 0
    split: int = 0
    merged: int = 0
    missed: int = 0
    outlined: int = 0
    objects: int = 0
    false_objects: int = 0
    fields: int = 0
    seconds: float = 0.0

    def add(self, other: SegTally) -> None:
        """Add ``other``'s counts to these."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def rates(self) -> dict[str, float | int | None]:
        """The counts as shares: of the whole cells, and of the segmented objects."""
        def share(n: int, d: int) -> float | None:
            return round(n / d, 4) if d else None
        return {"cells": self.cells, "found": share(self.found, self.cells),
                "split": share(self.split, self.cells),
                "merged": share(self.merged, self.cells),
                "missed": share(self.missed, self.cells),
                "outlined": share(self.outlined, self.cells),
                "objects": self.objects,
                "false_objects": share(self.false_objects, self.objects),
                "ms_per_field": round(1000 * self.seconds / self.fields, 1)
                if self.fields else None}


def outline_ious(seg_labels: np.ndarray, truth_labels: np.ndarray) -> np.ndarray:
    """(truth cells,) the best IoU any segmented object reaches with each truth cell."""
    n_seg, n_truth = int(seg_labels.max(initial=0)), int(truth_labels.max(initial=0))
    if n_truth == 0:
        return np.zeros(0)
    if n_seg == 0:
        return np.zeros(n_truth)
    inter = label_overlaps(seg_labels, truth_labels)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = (inter / np.maximum(union, 1))[1:, 1:]
    return np.asarray(iou.max(axis=0))


def tally_field(field: Hep2Field, seg: Hep2Cells) -> SegTally:
    """The counts of one segmented field against its truth."""
    matches = match_cells(seg.labels, seg.centroids, field.cell_labels)
    per_cell = Counter(matches.values())
    best = outline_ious(seg.labels, field.cell_labels)
    out = SegTally(objects=seg.count, false_objects=seg.count - len(matches), fields=1)
    for cell in field.cells:
        if cell.touches_edge:
            continue
        out.cells += 1
        out.outlined += int(best[cell.cell_id - 1] >= OUTLINE_IOU)
        if per_cell[cell.cell_id]:
            out.found += 1
            out.split += int(per_cell[cell.cell_id] > 1)
            continue
        h, w = seg.labels.shape
        x = min(w - 1, max(0, round(cell.x)))
        y = min(h - 1, max(0, round(cell.y)))
        if seg.labels[y, x]:
            out.merged += 1
        else:
            out.missed += 1
    return out


def evaluate(fields_per_pattern: int, first_seed: int = FIRST_SEED,
             cfg: Hep2CellsConfig | None = None, *, progress: bool = False
             ) -> tuple[dict[str, SegTally], dict[str, SegTally]]:
    """Counts per pattern and per objective band (field ``k`` of pattern ``i`` is seed
    ``first_seed + 100 i + k``)."""
    cfg = cfg or Hep2CellsConfig()
    by_pattern = {p: SegTally() for p in PATTERNS}
    by_band = {name: SegTally() for name, _ in BANDS}
    jobs = [(i, p, k) for i, p in enumerate(PATTERNS) for k in range(fields_per_pattern)]
    for i, pattern, k in tqdm(jobs, desc="fields", disable=not progress):
        field = generate_hep2_field(Hep2FieldSpec(
            seed=first_seed + 100 * i + k, width=WIDTH, height=HEIGHT,
            patterns=((pattern, 1.0),)))
        start = time.perf_counter()
        seg = segment_cells(field.image[..., 1].astype(np.float32), field.um_per_px, cfg)
        one = tally_field(field, seg)
        one.seconds = time.perf_counter() - start
        by_pattern[pattern].add(one)
        by_band[scale_band(field.um_per_px)].add(one)
    return by_pattern, by_band


def _pct(value: float | int | None) -> str:
    return "   -" if value is None else f"{100 * value:5.1f}"


def _row(name: str, tally: SegTally) -> str:
    r = tally.rates()
    ms = r["ms_per_field"]
    return (f"{name:24s} {r['cells']:>6} {_pct(r['found']):>8s} {_pct(r['split']):>8s} "
            f"{_pct(r['merged']):>9s} {_pct(r['missed']):>9s} {_pct(r['outlined']):>11s} "
            f"{_pct(r['false_objects']):>12s} {ms if ms is not None else '-':>9}")


def format_table(by_pattern: dict[str, SegTally], by_band: dict[str, SegTally]) -> str:
    """The per-pattern and per-band table the tool prints."""
    head = (f"{'':24s} {'cells':>6s} {'found %':>8s} {'split %':>8s} {'merged %':>9s} "
            f"{'missed %':>9s} {'outlined %':>11s} {'false obj %':>12s} {'ms/field':>9s}")
    total = SegTally()
    for tally in by_pattern.values():
        total.add(tally)
    return "\n".join([head, *(_row(n, t) for n, t in by_pattern.items()), _row("all", total),
                      "by objective (scale band)",
                      *(_row(n, t) for n, t in by_band.items())])


def plot(by_pattern: dict[str, SegTally], path: Path) -> None:
    """Found, merged, missed (stacked), outlined and split (markers) per pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_pattern)
    rates = [by_pattern[n].rates() for n in names]
    x = np.arange(len(names))
    found = np.array([r["found"] or 0.0 for r in rates])
    merged = np.array([r["merged"] or 0.0 for r in rates])
    missed = np.array([r["missed"] or 0.0 for r in rates])
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.bar(x, found, color="#3a8f3a", label="found")
    ax.bar(x, merged, bottom=found, color="#e0a030", label="merged into another")
    ax.bar(x, missed, bottom=found + merged, color="#c03030", label="missed")
    ax.plot(x, [r["outlined"] or 0.0 for r in rates], "kD", markersize=5,
            label=f"outlined (IoU >= {OUTLINE_IOU})")
    ax.plot(x, [r["split"] or 0.0 for r in rates], "bx", markersize=7,
            label="found, but split in two or more")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("share of whole truth cells")
    ax.set_title("HEp-2 segmentation on generated fields, 10x to 40x")
    ax.legend(loc="center left", fontsize=8)
    save_chart(fig, path, dpi=110)
    print(f"chart: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", type=int, default=6, help="fields per stained pattern")
    ap.add_argument("--seed", type=int, default=FIRST_SEED, help="first seed")
    ap.add_argument("--json", type=Path, default=Path("build/eval/hep2_segmentation.json"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.fields < 1:
        ap.error(f"--fields must be at least 1, got {args.fields}")
    by_pattern, by_band = evaluate(args.fields, args.seed, progress=not args.quiet)
    print(format_table(by_pattern, by_band))
    write_numbers(args.json, {
        "run": {"fields_per_pattern": args.fields, "first_seed": args.seed,
                "width": WIDTH, "height": HEIGHT, "outline_iou": OUTLINE_IOU},
        "by_pattern": {p: t.rates() for p, t in by_pattern.items()},
        "by_band": {b: t.rates() for b, t in by_band.items()}})
    plot(by_pattern, args.json.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
