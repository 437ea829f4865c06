"""HEp-2 benchmark: the cell classifier alone, and the whole assay per field, FP32 vs INT8.

    python -m tools.bench_hep2 [--fields 8] [--repeats 30] [--batch 256] [--quick]
                               [--out docs/img/bench_hep2.png] [--json FILE]

1. Classifier alone: one batch of real cell crops (cut from generated fields by the assay's
   own crop step) through ONNX Runtime, FP32 and INT8 alternating within each repeat so
   both see the same machine load; median of the repeats, cells/s, and how often the two
   agree on the pattern and on the mitotic state.
2. Whole assay (quality gates + segmentation + crops + classifier + specimen rules, as
   ``Hep2Assay.score`` runs it, scale declared) on generated fields at 800x600 and
   1280x960 (0.5 µm/px, the 20x objective), FP32 and INT8 alternating field by field:
   fields/s, cells/s and the stage split from ``result.timings_ms`` (quality / cells /
   model / rules). The model stage classifies each crop in ``hep2.cells.orientations``
   orientations (``--orientations``, default the config's), so it costs that many times
   the classifier alone.
3. The scale (INT8, 800x600): the whole assay with the scale declared, estimated from the
   cells' size alone (``hep2.cells.scale_search_steps`` 0), and estimated with the
   classifier's check (the default), the three rotating field by field. In the service
   the estimate runs once per still view, not per frame. And a declared 10x field
   (0.95 µm/px), whose crops are cut where the classifier reads surest, against the same
   with ``hep2.cells.crop_search_steps`` 0.

Prints a table and writes a chart; asserts nothing (speed targets live here, never in
tests). Absolute times on a shared 2-core machine drift from run to run: compare the
ratios, which come from one run. Seeds from 900000: never trained on, apart from the eval.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.orientations import ORIENTATIONS
from appliance.assays.hep2.patterns import NAMES
from appliance.capture.frame import Frame
from appliance.config import Config, Hep2CellsConfig, with_overrides
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

BENCH_SEED = 900_000  # apart from training (700000+) and the eval (500000+)
PRECISIONS = ("fp32", "int8")
SIZES = ((800, 600), (1280, 960))
UM_PER_PX = 0.5
STAGES = ("quality", "scale", "cells", "model", "rules")
STAINED = tuple(n for n in NAMES if n != "negative")
SCALE_MODES = ("declared", "size estimate", "size + classifier")
COARSE_UM_PER_PX = 0.95  # a 10x objective: coarser than hep2.specimen.subtype_max_um_per_px


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def bench_field_set(count: int, width: int, height: int, *, first_seed: int = BENCH_SEED,
                    um_per_px: float = UM_PER_PX) -> list[Hep2Field]:
    """``count`` positive fields of one size, the stained patterns in turn, at 0.5 µm/px
    (or ``um_per_px``)."""
    return [generate_hep2_field(Hep2FieldSpec(
        seed=first_seed + i, width=width, height=height, um_per_px=um_per_px,
        patterns=((STAINED[i % len(STAINED)], 1.0),), intensity=100.0))
        for i in range(count)]


def crop_batch(assay: Hep2Assay, fields: Sequence[Hep2Field], size: int) -> np.ndarray:
    """``size`` real cell crops cut by the assay from ``fields`` (repeated if too few)."""
    got = []
    for i, f in enumerate(fields):
        prepared = assay.prepare(Frame(image=f.image, seq=i, timestamp=0.0, source="bench",
                                       um_per_px=f.um_per_px))
        if prepared.crops is not None and len(prepared.crops):
            got.append(prepared.crops)
    if not got:
        raise RuntimeError("no cell crop in the benchmark fields: segmentation found no cell")
    crops = np.concatenate(got)
    reps = -(-size // len(crops))  # ceiling division
    return np.ascontiguousarray(np.concatenate([crops] * reps)[:size])


def time_classifier(assays: dict[str, Hep2Assay], batch: np.ndarray, repeats: int
                    ) -> dict[str, list[float]]:
    """Milliseconds per batch for each precision, alternating which goes first."""
    times: dict[str, list[float]] = {p: [] for p in assays}
    order = list(assays)
    for r in tqdm(range(repeats), desc="classifier"):
        for p in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            assays[p].backend.run_named(batch)
            times[p].append((time.perf_counter() - t0) * 1000.0)
    return times


def agreement(assays: dict[str, Hep2Assay], batch: np.ndarray) -> dict[str, float]:
    """Share of crops where FP32 and INT8 give the same pattern, and the same mitotic state."""
    outs = {p: a.backend.run_named(batch) for p, a in assays.items()}
    f, i = outs["fp32"], outs["int8"]
    return {
        "pattern": float(np.mean(f["pattern_logits"].argmax(1) == i["pattern_logits"].argmax(1))),
        "mitosis": float(np.mean(f["mitosis_logits"].argmax(1) == i["mitosis_logits"].argmax(1))),
    }


def classifier_report(times: dict[str, list[float]], batch: int) -> dict[str, dict[str, float]]:
    """Median ms per batch, ms per cell and cells/s of each precision."""
    out = {}
    for p, t in times.items():
        ms = _median(t)
        out[p] = {"ms_per_batch": round(ms, 2), "ms_per_cell": round(ms / batch, 4),
                  "cells_per_s": round(1000.0 * batch / ms, 1)}
    return out


def time_assay(assays: dict[str, Hep2Assay], fields: Sequence[Hep2Field], label: str
               ) -> dict[str, dict[str, object]]:
    """Whole-assay timings per precision on ``fields``, alternating which goes first."""
    totals: dict[str, list[float]] = defaultdict(list)
    stages: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in assays}
    cells: list[int] = []
    order = list(assays)
    for i, f in enumerate(tqdm(fields, desc=f"assay {label}")):
        frame = Frame(image=f.image, seq=i, timestamp=0.0, source="bench",
                      um_per_px=f.um_per_px)
        for p in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            result = assays[p].score(frame)
            totals[p].append((time.perf_counter() - t0) * 1000.0)
            for k in STAGES:
                stages[p][k].append(result.timings_ms.get(k, 0.0))
        cells.append(len(result.cells))
    out: dict[str, dict[str, object]] = {}
    for p in assays:
        total = _median(totals[p])
        per_field = _median(cells)
        out[p] = {"ms_per_field": round(total, 1), "fields_per_s": round(1000.0 / total, 2),
                  "cells_per_field": per_field,
                  "cells_per_s": round(1000.0 * per_field / total, 1),
                  "stages_ms": {k: round(_median(stages[p][k]), 1) for k in STAGES}}
    return out


def time_scale_modes(assays: dict[str, Hep2Assay], fields: Sequence[Hep2Field],
                     declared: frozenset[str]) -> dict[str, dict[str, float]]:
    """Whole-assay ms per field of each assay (by mode name), rotating which goes first
    field by field. The modes in ``declared`` are given the field's scale; the others
    estimate it (``SCALE_MODES``: declared; from the cells' size alone; and checked with
    the classifier)."""
    totals: dict[str, list[float]] = defaultdict(list)
    modes = list(assays)
    for i, f in enumerate(tqdm(fields, desc="scale modes")):
        for k in range(len(modes)):
            mode = modes[(i + k) % len(modes)]
            frame = Frame(image=f.image, seq=i, timestamp=0.0, source="bench",
                          um_per_px=f.um_per_px if mode in declared else None)
            t0 = time.perf_counter()
            assays[mode].score(frame)
            totals[mode].append((time.perf_counter() - t0) * 1000.0)
    return {m: {"ms_per_field": round(_median(totals[m]), 1)} for m in modes}


def format_table(report: dict[str, Any]) -> str:
    """The figures as fixed-width text (for the closing note)."""
    clf, fields, agree = report["classifier"], report["assay"], report["agreement"]
    batch = report["batch"]
    lines = [f"classifier alone (batch of {batch} crops, median of {report['repeats']})",
             f"{'precision':<10}{'ms/batch':>10}{'ms/cell':>10}{'cells/s':>10}"]
    for p in PRECISIONS:
        c = clf[p]
        lines.append(f"{p:<10}{c['ms_per_batch']:>10.1f}{c['ms_per_cell']:>10.3f}"
                     f"{c['cells_per_s']:>10.0f}")
    speedup = clf["fp32"]["ms_per_batch"] / clf["int8"]["ms_per_batch"]
    lines.append(f"INT8 speed-up over FP32: {speedup:.2f}x; FP32/INT8 agreement: pattern "
                 f"{agree['pattern']:.3f}, mitosis {agree['mitosis']:.3f}")
    lines += ["", f"whole assay per field (0.5 um/px, scale declared, "
                  f"{report['orientations']} orientations per crop)",
              f"{'size':<10}{'precision':<10}{'cells':>6}{'ms':>8}{'fields/s':>10}"
              f"{'cells/s':>9}" + "".join(f"{s:>9}" for s in STAGES)]
    for size, per in fields.items():
        for p in PRECISIONS:
            r = per[p]
            lines.append(f"{size:<10}{p:<10}{r['cells_per_field']:>6.0f}"
                         f"{r['ms_per_field']:>8.0f}{r['fields_per_s']:>10.2f}"
                         f"{r['cells_per_s']:>9.0f}"
                         + "".join(f"{r['stages_ms'][s]:>9.1f}" for s in STAGES))
    modes = report.get("scale_modes")
    if modes:
        declared = modes["declared"]["ms_per_field"]
        lines += ["", "the scale, INT8, 800x600 (the estimate runs once per still view)",
                  f"{'scale':<20}{'ms/field':>9}{'x declared':>12}"]
        for mode, r in modes.items():
            lines.append(f"{mode:<20}{r['ms_per_field']:>9.0f}"
                         f"{r['ms_per_field'] / declared:>12.2f}")
    coarse = report.get("coarse_modes")
    if coarse:
        plain = coarse["10x, crops not searched"]["ms_per_field"]
        lines += ["", f"a declared 10x field ({COARSE_UM_PER_PX} um/px), INT8, 800x600",
                  f"{'crops':<26}{'ms/field':>9}{'x not searched':>16}"]
        for mode, r in coarse.items():
            lines.append(f"{mode:<26}{r['ms_per_field']:>9.0f}"
                         f"{r['ms_per_field'] / plain:>16.2f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Classifier cells/s per precision, and the stage split of the whole assay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clf, fields = report["classifier"], report["assay"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2),
                                      gridspec_kw={"width_ratios": [1, 2]})
    left.bar(list(PRECISIONS), [clf[p]["cells_per_s"] for p in PRECISIONS],
             color=["#E69F00", "#D55E00"])
    left.set_ylabel("cells/s")
    left.set_title(f"Classifier alone (batch {report['batch']})")
    labels = [f"{size}\n{p}" for size in fields for p in PRECISIONS]
    bottom = np.zeros(len(labels))
    colours = ("#999999", "#CC79A7", "#0072B2", "#D55E00", "#009E73")
    for stage, colour in zip(STAGES, colours, strict=True):
        values = np.array([fields[size][p]["stages_ms"][stage]
                           for size in fields for p in PRECISIONS])
        right.bar(labels, values, bottom=bottom, label=stage, color=colour)
        bottom += values
    right.set_ylabel("median ms per field")
    right.set_title("Whole assay, stage split (lower is better)")
    right.legend(fontsize=8)
    fig.suptitle(f"HEp-2 assay speed, {report['device']}", fontsize=10)
    save_chart(fig, path, dpi=100)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick is a few fields and repeats (a smoke run)."""
    ap = argparse.ArgumentParser(prog="python -m tools.bench_hep2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=_positive, default=8, help="fields per size")
    ap.add_argument("--repeats", type=_positive, default=30, help="classifier repeats")
    ap.add_argument("--batch", type=_positive, default=256, help="crops per classifier run")
    ap.add_argument("--threads", type=int, default=0,
                    help="ONNX Runtime threads (default 0: one per core)")
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    ap.add_argument("--orientations", type=int, choices=ORIENTATIONS,
                    default=Hep2CellsConfig().orientations,
                    help="orientations per crop in the whole assay (default: the config's)")
    ap.add_argument("--out", type=Path, default=Path("docs/img/bench_hep2.png"),
                    help="the chart (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--quick", action="store_true", help="2 fields per size, 4 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.fields, args.repeats = 2, 4
    if args.threads < 0:
        ap.error(f"--threads {args.threads}: not negative")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load both precisions, run both benchmarks, return the report."""
    base = with_overrides(Config(), {"assay": "hep2", "inference.models_dir": args.models_dir,
                                     "inference.threads": args.threads,
                                     "hep2.cells.orientations": args.orientations})
    assays = {p: Hep2Assay.from_config(with_overrides(base, {"inference.precision": p}))
              for p in PRECISIONS}
    extra: list[Hep2Assay] = []  # opened for the scale tables; closed with the others

    def opened(cfg: Config) -> Hep2Assay:
        extra.append(Hep2Assay.from_config(cfg))
        return extra[-1]

    try:
        sets = {f"{w}x{h}": bench_field_set(args.fields, w, h) for w, h in SIZES}
        batch = crop_batch(assays["int8"], sets["800x600"], args.batch)
        times = time_classifier(assays, batch, args.repeats)
        report: dict[str, Any] = {
            "device": f"{os.cpu_count()} CPU cores, ONNX Runtime threads "
                      f"{args.threads or 'one per core'}",
            "batch": args.batch, "repeats": args.repeats, "fields_per_size": args.fields,
            "um_per_px": UM_PER_PX, "model": assays["int8"].model.name,
            "orientations": args.orientations,
            "classifier": classifier_report(times, args.batch),
            "agreement": agreement(assays, batch),
            "assay": {label: time_assay(assays, fields, label) for label, fields in sets.items()},
        }
        int8 = with_overrides(base, {"inference.precision": "int8"})
        scale_assays = {
            "declared": assays["int8"],
            "size estimate": opened(with_overrides(int8, {"hep2.cells.scale_search_steps": 0})),
            "size + classifier": opened(int8)}
        report["scale_modes"] = time_scale_modes(scale_assays, sets["800x600"],
                                                 frozenset({"declared"}))
        # At 10x a declared scale's crops are searched too (hep2.cells.crop_search_steps).
        coarse = {"declared 10x": assays["int8"], "10x, crops not searched":
                  opened(with_overrides(int8, {"hep2.cells.crop_search_steps": 0}))}
        report["coarse_modes"] = time_scale_modes(
            coarse, bench_field_set(args.fields, 800, 600, um_per_px=COARSE_UM_PER_PX),
            frozenset(coarse))
    finally:
        for a in (*assays.values(), *extra):
            a.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the chart (and the JSON)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    print(format_table(report))
    plot(report, args.out)
    print(f"chart: {args.out}")
    if args.json is not None:
        write_numbers(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
