"""Evaluate the HER2 assay end to end on held-out generated fields.

    python -m tools.eval_her2 [--precision int8] [--fields 200] [--out build/eval]

Every field goes through the real assay (scale, quality gates, model,
measurement, rules) and is compared with the generator's exact truth:
field-score accuracy, per-cell membrane-class accuracy (cells matched by
nucleus position), cell detection recall/precision. Writes metrics.json and
confusion-matrix plots. Held-out seeds are never used in training or
calibration. Generated data only: this says nothing yet about real tissue.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldResult, MembraneClass
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.inference.manifest import load_manifest, verify_model
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend
from tools.her2_dataset import HELD_OUT_SEEDS, SCORES
from tools.numbers import save_chart
from tools.synth.her2_fields import FieldSpec, SyntheticField, generate_field

CELL_CLASSES = tuple(MembraneClass)
FIELD_LABELS = (*SCORES, "not scorable")
MATCH_UM = 4.0  # a predicted cell within this distance of a true nucleus centre is that cell


@dataclass
class Metrics:
    """Counts behind the accuracy figures, and the figures themselves."""

    fields: int = 0
    field_correct: int = 0
    field_confusion: list[list[int]] = field(
        default_factory=lambda: [[0] * len(FIELD_LABELS) for _ in FIELD_LABELS])
    cells_true: int = 0
    cells_predicted: int = 0
    cells_matched: int = 0
    cell_correct: int = 0
    cell_confusion: list[list[int]] = field(
        default_factory=lambda: [[0] * len(CELL_CLASSES) for _ in CELL_CLASSES])
    ms_per_field: list[float] = field(default_factory=list)

    @property
    def field_accuracy(self) -> float:
        return self.field_correct / self.fields if self.fields else 0.0

    @property
    def cell_accuracy(self) -> float:
        return self.cell_correct / self.cells_matched if self.cells_matched else 0.0

    @property
    def cell_recall(self) -> float:
        return self.cells_matched / self.cells_true if self.cells_true else 0.0

    @property
    def cell_precision(self) -> float:
        return self.cells_matched / self.cells_predicted if self.cells_predicted else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "fields": self.fields, "field_accuracy": round(self.field_accuracy, 4),
            "cells_true": self.cells_true, "cell_accuracy": round(self.cell_accuracy, 4),
            "cell_recall": round(self.cell_recall, 4),
            "cell_precision": round(self.cell_precision, 4),
            "median_ms_per_field": round(float(np.median(self.ms_per_field)), 1)
            if self.ms_per_field else 0.0,
        }


def held_out_specs(count: int, *, width: int = 640, height: int = 480) -> list[FieldSpec]:
    """Scorable held-out fields, the four scores in turn, scales across 10x..40x."""
    return [FieldSpec(seed=HELD_OUT_SEEDS[i], width=width, height=height,
                      target_score=SCORES[i % 4]) for i in range(count)]


def add_field(metrics: Metrics, truth: SyntheticField, result: FieldResult) -> None:
    """Compare one scored field with its truth."""
    metrics.fields += 1
    true_label = truth.score if truth.score is not None else "not scorable"
    got = result.score.value if result.scored and result.score is not None else "not scorable"
    metrics.field_correct += got == true_label
    metrics.field_confusion[FIELD_LABELS.index(true_label)][FIELD_LABELS.index(got)] += 1
    true_cells = [c for c in truth.cells if c.membrane_class is not None]
    metrics.cells_true += len(true_cells)
    metrics.cells_predicted += len(result.cells)
    if not true_cells or not result.cells:
        return
    pred_xy = np.array([[c.x, c.y] for c in result.cells])
    limit = MATCH_UM / truth.um_per_px
    taken: set[int] = set()
    for t in true_cells:
        d = np.hypot(pred_xy[:, 0] - t.x, pred_xy[:, 1] - t.y)
        j = int(np.argmin(d))
        if d[j] > limit or j in taken:
            continue
        taken.add(j)
        assert t.membrane_class is not None
        p = result.cells[j].membrane_class
        metrics.cells_matched += 1
        metrics.cell_correct += p == t.membrane_class
        metrics.cell_confusion[CELL_CLASSES.index(t.membrane_class)][CELL_CLASSES.index(p)] += 1


def evaluate(assay: Her2Assay, specs: Sequence[FieldSpec], *, known_scale: bool = True,
             progress: bool = False) -> Metrics:
    """Score every spec's field with ``assay`` and accumulate the metrics."""
    metrics = Metrics()
    for i, spec in enumerate(tqdm(specs, desc="evaluating", disable=not progress)):
        truth = generate_field(spec)
        frame = Frame(image=truth.image, seq=i, timestamp=0.0, source=f"seed{spec.seed}",
                      um_per_px=truth.um_per_px if known_scale else None)
        t0 = time.perf_counter()
        result = assay.score(frame)
        metrics.ms_per_field.append((time.perf_counter() - t0) * 1000)
        add_field(metrics, truth, result)
    return metrics


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], title: str,
                   path: Path) -> None:
    """A confusion matrix as a PNG (rows truth, columns prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(m, cmap="Blues")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, str(v), ha="center", va="center",
                color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    save_chart(fig, path, dpi=100)


def _assay(cfg: Config, precision: str) -> Her2Assay:
    """The assay on one shipped model file, run by ONNX Runtime (the TensorRT one too)."""
    if precision in ("int8", "fp32"):
        return Her2Assay.from_config(cfg)
    manifest = load_manifest(cfg.models_path() / "her2")
    path = verify_model(manifest, precision)
    backend = OnnxRuntimeBackend(path, threads=cfg.inference.threads,
                                 input_name=manifest.input.name)
    return Her2Assay(cfg, manifest, backend, precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--precision", default="int8", choices=("int8", "fp32", "int8_trt"),
                    help="int8_trt: the TensorRT (symmetric) model, run here by ONNX Runtime")
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    ap.add_argument("--fields", type=int, default=200)
    ap.add_argument("--estimate-scale", action="store_true",
                    help="do not tell the assay the scale; it estimates it from nuclei")
    ap.add_argument("--out", type=Path, default=Path("build/eval"))
    args = ap.parse_args()
    cfg = with_overrides(Config(), {"inference.precision": args.precision.split("_")[0],
                                    "inference.models_dir": args.models_dir})
    args.out.mkdir(parents=True, exist_ok=True)
    with _assay(cfg, args.precision) as assay:
        metrics = evaluate(assay, held_out_specs(args.fields),
                           known_scale=not args.estimate_scale, progress=True)
    tag = f"{args.precision}{'-estimated-scale' if args.estimate_scale else ''}"
    plot_confusion(metrics.field_confusion, FIELD_LABELS, f"HER2 field score ({tag})",
                   args.out / f"field_confusion_{tag}.png")
    plot_confusion(metrics.cell_confusion, [c.value for c in CELL_CLASSES],
                   f"HER2 cell membrane class ({tag})", args.out / f"cell_confusion_{tag}.png")
    summary = metrics.summary()
    (args.out / f"metrics_{tag}.json").write_text(json.dumps(
        {**summary, "field_confusion": metrics.field_confusion,
         "cell_confusion": metrics.cell_confusion, "field_labels": FIELD_LABELS,
         "cell_labels": [c.value for c in CELL_CLASSES]}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
