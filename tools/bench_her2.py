"""HER2 benchmark: per-stage timings, FP32 vs INT8, and the classical reference pipeline.

    python -m tools.bench_her2 [--fields 24] [--out build/bench]

Prints figures and writes a speed chart; asserts nothing (speed targets live
here, never in tests). All ratios come from one run on one machine: absolute
times on a shared 2-core machine drift from run to run.

1. Stages of the product (INT8, ONNX Runtime CPU) on generated 1280x960 camera
   fields saved as JPEG: decode, preprocess, quality, model, postprocess, rules,
   overlay; fields/s end to end.
2. Model only at the working resolution (640x480 at 0.5 µm/px): FP32 vs INT8
   inferences/s, and their agreement (pixel classes, field scores).
3. The classical pipeline (scikit-image deconvolution + watershed nuclei +
   membrane ring, tools/classical_her2.py) on the same fields: speed, and
   agreement with the truth and with the product.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldScore
from appliance.capture.frame import Frame
from appliance.capture.stills import load_still
from appliance.config import Config, with_overrides
from appliance.inference.backend import to_model_input
from appliance.outputs.overlay import render_overlay
from tools.classical_her2 import score_classical
from tools.her2_dataset import SCORES
from tools.numbers import save_chart
from tools.synth.her2_fields import FieldSpec, SyntheticField, generate_field

BENCH_SEEDS = 950_000  # inside the held-out range: never trained on


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def bench_fields(n: int) -> list[tuple[SyntheticField, Path]]:
    """Camera-sized generated fields (1280x960), every score, written as JPEG files."""
    tmp = Path(tempfile.mkdtemp(prefix="eyepiece-bench-"))
    out = []
    for i in tqdm(range(n), desc="generating fields"):
        field = generate_field(FieldSpec(seed=BENCH_SEEDS + i, width=1280, height=960,
                                         target_score=SCORES[i % 4]))
        path = tmp / f"field_{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(field.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append((field, path))
    return out


def bench_stages(cfg: Config, fields: list[tuple[SyntheticField, Path]]) -> dict[str, object]:
    """End-to-end per-stage timings of the product, as `appliance score` runs it."""
    stages: dict[str, list[float]] = defaultdict(list)
    totals, scores = [], []
    with Her2Assay.from_config(cfg) as assay:
        for i, (field, path) in enumerate(tqdm(fields, desc="product (int8)")):
            t0 = time.perf_counter()
            image = load_still(path, cfg.input)
            t1 = time.perf_counter()
            result = assay.score(Frame(image=image, seq=i, timestamp=t1, source=str(path),
                                       um_per_px=field.um_per_px))
            t2 = time.perf_counter()
            render_overlay(image, result)
            t3 = time.perf_counter()
            stages["decode"].append((t1 - t0) * 1000)
            for k, v in result.timings_ms.items():
                stages[k].append(v)
            stages["overlay"].append((t3 - t2) * 1000)
            totals.append((t3 - t0) * 1000)
            scores.append(result.score.value if result.score else "n/s")
    order = ("decode", "preprocess", "quality", "model", "postprocess", "rules", "overlay")
    return {"stages_ms": {k: round(_median(stages[k]), 1) for k in order},
            "total_ms": round(_median(totals), 1),
            "fields_per_s": round(1000 / _median(totals), 2), "scores": scores}


def bench_models(cfg: Config, fields: list[tuple[SyntheticField, Path]],
                 repeats: int) -> dict[str, object]:
    """Model-only speed at 640x480 working resolution, FP32 vs INT8, and their agreement."""
    runs: dict[str, list[float]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        with Her2Assay.from_config(with_overrides(cfg, {"inference.precision": precision})) as a:
            x = to_model_input(np.full((480, 640, 3), 200, np.uint8), a.manifest.input)
            times = []
            for _ in tqdm(range(repeats), desc=f"model {precision}"):
                t0 = time.perf_counter()
                a.backend.run(x)
                times.append((time.perf_counter() - t0) * 1000)
            runs[precision] = times
            outputs[precision] = []
            for field, _ in fields:
                img = cv2.resize(field.image, (640, 480), interpolation=cv2.INTER_AREA)
                outputs[precision].append(a.backend.run(to_model_input(img, a.manifest.input)))
    agree = [float(np.mean(f.argmax(1) == i.argmax(1)))
             for f, i in zip(outputs["fp32"], outputs["int8"], strict=True)]
    return {p: {"median_ms": round(_median(t), 1), "per_s": round(1000 / _median(t), 1)}
            for p, t in runs.items()} | {"pixel_class_agreement": round(float(np.mean(agree)), 4)}


def bench_field_agreement(cfg: Config, fields: list[tuple[SyntheticField, Path]]
                          ) -> dict[str, object]:
    """Field scores of FP32, INT8 and the classical pipeline against the truth and each other."""
    got: dict[str, list[str]] = {}
    for precision in ("fp32", "int8"):
        with Her2Assay.from_config(with_overrides(cfg, {"inference.precision": precision})) as a:
            got[precision] = [
                r.score.value if r.score else "n/s"
                for r in (a.score(Frame(image=f.image, seq=i, timestamp=0.0, source="bench",
                                        um_per_px=f.um_per_px))
                          for i, (f, _) in enumerate(tqdm(fields, desc=f"scores {precision}")))
            ]
    classical, classical_ms = [], []
    for field, _ in tqdm(fields, desc="classical"):
        t0 = time.perf_counter()
        res = score_classical(field.image, field.um_per_px)
        classical_ms.append((time.perf_counter() - t0) * 1000)
        classical.append(res.score.score.value if isinstance(res.score, FieldScore) else "n/s")
    truth = [f.score or "n/s" for f, _ in fields]

    def rate(a: list[str], b: list[str]) -> float:
        return round(float(np.mean([x == y for x, y in zip(a, b, strict=True)])), 3)

    return {
        "accuracy_vs_truth": {"int8": rate(got["int8"], truth), "fp32": rate(got["fp32"], truth),
                              "classical": rate(classical, truth)},
        "int8_vs_fp32": rate(got["int8"], got["fp32"]),
        "classical_vs_int8": rate(classical, got["int8"]),
        "classical_median_ms": round(_median(classical_ms), 1),
    }


def plot(report: dict[str, dict[str, object]], path: Path) -> None:
    """Bar charts: product stages, and ms per field of product vs classical."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["product"]["stages_ms"]
    assert isinstance(stages, dict)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.bar(list(stages), list(stages.values()), color="#0072B2")
    a1.set_ylabel("median ms per 1280x960 field")
    a1.set_title("Product stages (INT8, CPU)")
    a1.tick_params(axis="x", rotation=30)
    models = report["models"]
    labels = ["product\nend to end", "model FP32\n640x480", "model INT8\n640x480",
              "classical\npipeline"]
    values = [report["product"]["total_ms"], models["fp32"]["median_ms"],  # type: ignore[index]
              models["int8"]["median_ms"],  # type: ignore[index]
              report["agreement"]["classical_median_ms"]]
    a2.bar(labels, values, color=["#009E73", "#E69F00", "#D55E00", "#999999"])
    a2.set_ylabel("median ms")
    a2.set_title("Speed (lower is better)")
    save_chart(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fields", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    args = ap.parse_args()
    cfg = Config()
    fields = bench_fields(args.fields)
    report = {
        "product": bench_stages(cfg, fields),
        "models": bench_models(cfg, fields, args.repeats),
        "agreement": bench_field_agreement(cfg, fields),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_her2.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "bench_her2.png")
    report["product"].pop("scores")
    print(json.dumps(report, indent=2))
    print(f"chart: {args.out / 'bench_her2.png'}")


if __name__ == "__main__":
    main()
