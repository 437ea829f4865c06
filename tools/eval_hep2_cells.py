"""How well the box reads single-cell images, by what it is told: the scale, a mask, both.

    python -m tools.eval_hep2_cells [--per-class 60] [--scales 0.25,0.35,0.5,0.9]
                                    [--out docs/img/hep2_single_cell.png] [--json FILE]

Held-out generated cells (tools/synth/hep2_cell_folder.py, seeds from 880000, a new range
per scale) are cut as the public cell datasets cut theirs: the cell's bounding box and a
margin of 15%, with the cell's mask. Each goes through the box's single-cell path
(`appliance score --assay hep2 --cell`, Hep2Assay.classify_cell_image) four ways:
knowing the scale or not (``optics.um_per_px``), given the mask file or not. The figure
is the mean class accuracy over the 17 classes (a cell the single-cell gates refuse
counts as misread); the chart shows it per scale.

Generated data only: it measures how the crop is cut, not how real cells look.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.cell_quality import CellRefused
from appliance.assays.hep2.patterns import NAMES
from appliance.config import Config, with_overrides
from tools.eval_hep2 import mean_class_accuracy
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_cell_folder import FIRST_SEED, cell_images

DEFAULT_SCALES = (0.25, 0.35, 0.5, 0.9)
SEEDS_PER_SCALE = 5_000
# (label, the scale is declared, the mask file is given)
CONDITIONS: tuple[tuple[str, bool, bool], ...] = (
    ("nothing known", False, False),
    ("mask file", False, True),
    ("scale", True, False),
    ("scale and mask file", True, True),
)


def evaluate(per_class: int, scales: Sequence[float], *, first_seed: int = FIRST_SEED,
             models_dir: str = "", progress: bool = False,
             refusals: dict[str, dict[str, int]] | None = None) -> dict[str, dict[str, float]]:
    """Mean class accuracy for every scale (key f"{scale:g}") and condition label.

    ``refusals``, when given, receives the cells a gate refused, by scale and by
    "condition: code"."""
    base = with_overrides(Config(), {"assay": "hep2", "inference.models_dir": models_dir})
    out: dict[str, dict[str, float]] = {}
    with Hep2Assay.from_config(base) as unknown:
        for k, scale in enumerate(scales):
            # The same loaded model told the scale: it shares ``unknown``'s backend, which
            # the ``with`` closes once for both.
            known_cfg = with_overrides(base, {"optics.um_per_px": scale})
            known = Hep2Assay(known_cfg, unknown.manifest, unknown.backend,
                              unknown.model.precision)
            # The last column counts the cells a gate refused (cell_quality.py): errors.
            confusion = {c[0]: np.zeros((len(NAMES), len(NAMES) + 1), np.int64)
                         for c in CONDITIONS}
            cells = cell_images(per_class, um_per_px=scale,
                                first_seed=first_seed + k * SEEDS_PER_SCALE)
            for name, stem, green, mask in tqdm(cells, total=per_class * len(NAMES),
                                                desc=f"{scale:g} um/px", disable=not progress):
                truth = NAMES.index(name)
                for label, scale_known, with_mask in CONDITIONS:
                    assay = known if scale_known else unknown
                    try:
                        call = assay.classify_cell_image(green, stem,
                                                         mask=mask if with_mask else None)
                    except CellRefused as exc:
                        confusion[label][truth, len(NAMES)] += 1
                        if refusals is not None:
                            row = refusals.setdefault(f"{scale:g}", {})
                            key = f"{label}: {exc.code}"
                            row[key] = row.get(key, 0) + 1
                        continue
                    confusion[label][truth, NAMES.index(call.pattern)] += 1
            out[f"{scale:g}"] = {label: mean_class_accuracy(m.tolist())
                                 for label, m in confusion.items()}
    return out


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars: mean class accuracy per scale, one bar per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = list(results)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(CONDITIONS)
    for i, (label, _, _) in enumerate(CONDITIONS):
        xs = np.arange(len(scales)) + (i - (len(CONDITIONS) - 1) / 2) * width
        vals = [results[s][label] for s in scales]
        ax.bar(xs, vals, width, label=label)
        for x, v in zip(xs, vals, strict=True):
            ax.text(x, v + 0.005, f"{v:.2f}", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(scales)), [f"{s} µm/px" for s in scales])
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("mean class accuracy (17 classes)")
    ax.set_title("Single-cell images: what the box is told (held-out generated cells)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    save_chart(fig, path, dpi=110)


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers") from None
    if not values or not all(0.1 <= v <= 3.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be in 0.1..3 um/px")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the chart (and the JSON)."""
    ap = argparse.ArgumentParser(prog="python -m tools.eval_hep2_cells", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--scales", type=_scales, default=DEFAULT_SCALES)
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    ap.add_argument("--out", type=Path, default=Path("docs/img/hep2_single_cell.png"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.per_class < 1:
        ap.error("--per-class must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    refused: dict[str, dict[str, int]] = {}
    results = evaluate(args.per_class, args.scales, first_seed=args.seed,
                       models_dir=args.models_dir, progress=True, refusals=refused)
    print(f"{'um/px':>6} " + " ".join(f"{c[0]:>20}" for c in CONDITIONS))
    for scale, row in results.items():
        print(f"{scale:>6} " + " ".join(f"{row[c[0]]:>20.3f}" for c in CONDITIONS))
    for scale, counts in refused.items():
        print(f"refused at {scale} um/px: "
              + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    plot(results, args.out)
    print(f"chart: {args.out}")
    if args.json is not None:
        write_numbers(args.json, {"per_class": args.per_class, "first_seed": args.seed,
                                  "mean_class_accuracy": results, "refused": refused})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
