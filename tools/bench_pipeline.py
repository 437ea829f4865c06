"""Real-time pipeline benchmark: throughput, latency, drops and memory over time.

    python -m tools.bench_pipeline [--assay her2|hep2] [--fields 8] [--seconds 30]
                                   [--soak-seconds 600] [--hold 3] [--out DIR]

Prints figures and writes a JSON report and a chart; asserts nothing (speed and
memory targets live here, never in tests). Every ratio comes from one run on
one machine. On generated 1280x960 camera fields (JPEG quality 92), INT8, ONNX Runtime
CPU, the assay's embedded defaults (no objective configured: the scale is estimated from
the image, once per still view; ``--um-per-px`` declares it instead, as a lab sets its
objective). HER2 fields: every score in turn; HEp-2 fields (``--assay hep2``): the
stained patterns in turn at 0.5 µm/px (``tools.bench_hep2``'s set). The figures are
per field, whatever its cells:

1. Model only: the model on prepared fields, back to back (inferences/s; for HEp-2 one
   inference is all of a field's cell crops in the configured orientations).
2. Sequential: the assay's ``score`` in a loop on one thread (fields/s), with the
   scale estimated on every field and, as the pipeline does within one view,
   reused.
3. Pipeline, replay at full speed (every frame a new field, as a moving stage):
   processed fps, and its ratio to 1. and to 2.
4. Pipeline, replay at 30 fps with each field held still for a while (a
   pathologist looking): capture fps, processed fps, capture→result latency
   against model time + one frame interval, frames dropped by stage, fields
   reported and how long after their view came to rest, with the display
   composing to an offscreen screen (pygame) or a file.
5. Soak (run first, in a fresh process): 4. for ``--soak-seconds``; resident
   memory every few seconds, its steady level and its growth.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from appliance.assays.results import open_assay
from appliance.capture.factory import open_source
from appliance.capture.frame import Frame
from appliance.capture.stills import load_still
from appliance.config import Config, with_overrides
from appliance.outputs.display.sinks import open_display
from appliance.outputs.store import ResultStore
from appliance.pipeline.engine import Pipeline
from appliance.pipeline.metrics import MetricsSnapshot, rss_mb
from appliance.service.recorder import Recorder
from tools.bench_hep2 import bench_field_set
from tools.bench_her2 import bench_fields
from tools.numbers import save_chart

RSS_EVERY_S = 5.0
# Caches, the field memory and the allocator's arenas fill during the first minutes.
SOAK_WARMUP_S = 120.0


def bench_paths(assay: str, count: int) -> list[Path]:
    """``count`` generated 1280x960 fields of ``assay`` as JPEG files in a new folder."""
    if assay == "her2":
        return [p for _, p in bench_fields(count)]
    folder = Path(tempfile.mkdtemp(prefix="eyepiece-bench-hep2-"))
    paths = []
    for i, field in enumerate(tqdm(bench_field_set(count, 1280, 960),
                                   desc="generating fields")):
        paths.append(folder / f"field_{i:03d}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(field.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
    return paths


def _frames(paths: Sequence[Path], cfg: Config) -> list[Frame]:
    return [Frame(image=load_still(p, cfg.input), seq=i, timestamp=time.monotonic(),
                  source=str(p)) for i, p in enumerate(paths, start=1)]


def _rate(fn: Any, items: Sequence[Any], seconds: float, desc: str) -> tuple[float, float]:
    """Calls of ``fn`` per second over ``items`` in turn for ``seconds``; and mean ms."""
    done, t0 = 0, time.perf_counter()
    with tqdm(total=round(seconds), desc=desc, unit="s", leave=False) as bar:
        while (elapsed := time.perf_counter() - t0) < seconds:
            fn(items[done % len(items)])
            done += 1
            bar.n = min(round(seconds), int(elapsed))
            bar.refresh()
    elapsed = time.perf_counter() - t0
    return done / elapsed, 1000.0 * elapsed / done


def bench_model_and_sequential(cfg: Config, frames: list[Frame], seconds: float) -> dict[str, Any]:
    """Model-only inferences/s and single-thread whole-field rates."""
    with closing(open_assay(cfg)) as assay:
        prepared = [p for p in (assay.prepare(f) for f in frames) if p.refusal is None]
        model_rate, model_ms = _rate(assay.infer, prepared, seconds, "model only")
        seq_rate, seq_ms = _rate(assay.score, frames, seconds, "sequential, scale each field")
        scales = {id(f): p.scale for f, p in zip(frames, prepared, strict=False)}

        def score_with_scale(f: Frame) -> None:
            p = assay.prepare(f, scales.get(id(f)))
            if p.refusal is None:
                assay.finish(p, assay.infer(p))

        reuse_rate, reuse_ms = _rate(score_with_scale, frames, seconds,
                                     "sequential, scale reused")
    return {"model_per_s": model_rate, "model_ms": model_ms,
            "sequential_per_s": seq_rate, "sequential_ms": seq_ms,
            "sequential_scale_reused_per_s": reuse_rate, "sequential_scale_reused_ms": reuse_ms,
            "prepared_fields": len(prepared)}


def run_pipeline(cfg: Config, seconds: float, desc: str,
                 rss_log: list[tuple[float, float]] | None = None) -> MetricsSnapshot:
    """Run the whole pipeline for ``seconds`` and return its last metrics snapshot."""
    stop = threading.Event()
    with ResultStore(cfg.store.path) as store, closing(open_assay(cfg)) as assay:
        recorder = Recorder(store=store, config_sha256=cfg.sha256(), overlay_dir=None,
                            out=io.StringIO())
        display = None if cfg.display.sink == "none" else (lambda: open_display(cfg.display))
        pipeline = Pipeline(cfg, assay=assay, recorder=recorder, display=display, stop=stop,
                            open_source=lambda: open_source(cfg.source, cfg.input))
        t0 = time.monotonic()
        next_rss = t0
        pipeline.start()
        with tqdm(total=round(seconds), desc=desc, unit="s", leave=False) as bar:
            while (elapsed := time.monotonic() - t0) < seconds:
                if pipeline.wait(timeout=0.5):
                    break  # ended by itself: a failure, reported below
                if rss_log is not None and time.monotonic() >= next_rss:
                    if (mb := rss_mb()) is not None:  # None: no /proc to read it from
                        rss_log.append((elapsed, mb))
                    next_rss += RSS_EVERY_S
                bar.n = min(round(seconds), int(elapsed))
                bar.refresh()
        snapshot = pipeline.snapshot()
        pipeline.stop()
        if pipeline.fatal is not None:
            raise RuntimeError(f"pipeline failed: {pipeline.fatal!r}")
    return snapshot


def _pipeline_cfg(base: Config, folder: Path, tmp: Path, *, fps: float, hold_s: float,
                  display: str) -> Config:
    return with_overrides(base, {
        "source.uri": f"replay:{folder}", "source.fps": fps, "source.hold_s": hold_s,
        "source.loop": True, "display.sink": display,
        "display.path": str(tmp / "display.jpg"), "store.path": str(tmp / "results.sqlite"),
    })


def _display_kind() -> str:
    try:
        import pygame  # noqa: F401
    except ImportError:
        return "file"
    return "offscreen"


def _summary(snap: MetricsSnapshot) -> dict[str, Any]:
    d = snap.to_dict()
    return {k: d[k] for k in ("capture_fps", "processed_fps", "frames_captured",
                              "frames_dropped", "fields_reported", "stage_ms", "latency_ms",
                              "view_to_report_ms", "rss_mb") if k in d}


def _steady_and_growth(rss: list[tuple[float, float]], warmup_s: float) -> dict[str, float]:
    """Steady memory after the warm-up, and its growth: first vs last minute, and a slope.

    Medians of whole minutes, not single samples: RSS swings by tens of MB as frames and
    arenas come and go, and two single samples would read that as growth or shrinkage.
    """
    after = [(t, m) for t, m in rss if t >= warmup_s]
    if len(after) < 4:
        return {"steady_mb": float("nan"), "growth_mb": float("nan"),
                "growth_mb_per_hour": float("nan")}
    t = np.array([a for a, _ in after])
    m = np.array([b for _, b in after])
    first = float(np.median(m[t < t[0] + 60.0]))
    last = float(np.median(m[t > t[-1] - 60.0]))
    slope = float(np.polyfit(t, m, 1)[0])  # MB per second, least squares
    return {"steady_mb": float(np.median(m)), "growth_mb": last - first,
            "growth_mb_per_hour": slope * 3600.0}


def plot(report: dict[str, Any], rss: list[tuple[float, float]], path: Path) -> None:
    """Rates side by side, and memory over the soak run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    rates = report["rates_per_s"]
    a1.barh(list(rates), list(rates.values()), color="#0072B2")
    for i, v in enumerate(rates.values()):
        a1.text(v, i, f" {v:.1f}", va="center")
    a1.set_xlabel("per second (higher is better)")
    a1.set_title(f"{report['assay'].upper()}: model vs whole-field scoring vs pipeline "
                 "(1280x960, INT8)")
    a1.invert_yaxis()
    if rss:
        a2.plot([t / 60 for t, _ in rss], [m for _, m in rss], color="#D55E00")
    a2.set_xlabel("minutes")
    a2.set_ylabel("resident memory (MB)")
    a2.set_title(f"{report['assay'].upper()} soak at 30 fps: resident memory")
    save_chart(fig, path, dpi=110)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(prog="python -m tools.bench_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assay", choices=("her2", "hep2"), default="her2",
                   help="the assay run, on its own generated fields")
    p.add_argument("--fields", type=int, default=8, help="generated 1280x960 fields")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each timed part")
    p.add_argument("--soak-seconds", type=float, default=600.0,
                   help="length of the memory soak (0 to skip)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds each field is held at 30 fps")
    p.add_argument("--um-per-px", type=float, default=None,
                   help="declare the fields' scale (optics.um_per_px; the generated fields "
                        "are drawn at 0.5 for HEp-2); default: estimated from the image")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default build/bench_pipeline, "
                        "build/bench_pipeline_hep2 for HEp-2)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("build/bench_pipeline" + ("_hep2" if args.assay == "hep2" else ""))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every part, print the figures, write the report and the chart."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = with_overrides(Config(), {"assay": args.assay, **(
        {} if args.um_per_px is None else {"optics.um_per_px": args.um_per_px})})
    paths = bench_paths(args.assay, args.fields)
    folder = paths[0].parent
    tmp = Path(tempfile.mkdtemp(prefix="eyepiece-bench-pipeline-"))
    rss: list[tuple[float, float]] = []
    soak = None
    if args.soak_seconds > 0:  # first, so its memory figures carry nothing of the other parts
        rss.append((0.0, rss_mb() or float("nan")))
        soak = run_pipeline(_pipeline_cfg(base, folder, tmp / "soak", fps=30, hold_s=args.hold,
                                          display=_display_kind()),
                            args.soak_seconds, "soak, 30 fps", rss_log=rss)
    alone = bench_model_and_sequential(base, _frames(paths, base), args.seconds)
    full = run_pipeline(_pipeline_cfg(base, folder, tmp / "full", fps=0, hold_s=0,
                                      display="none"), args.seconds, "pipeline, full speed")
    live_cfg = _pipeline_cfg(base, folder, tmp / "live", fps=30, hold_s=args.hold,
                             display=_display_kind())
    live = run_pipeline(live_cfg, args.seconds, "pipeline, 30 fps")
    report = _report(alone, full, live, soak, rss, live_cfg, args)
    (args.out / "bench_pipeline.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(report, rss, args.out / "bench_pipeline.png")
    _print(report)
    print(f"report: {args.out / 'bench_pipeline.json'}  chart: {args.out / 'bench_pipeline.png'}")
    return 0


def _report(alone: dict[str, Any], full: MetricsSnapshot, live: MetricsSnapshot,
            soak: MetricsSnapshot | None, rss: list[tuple[float, float]], live_cfg: Config,
            args: argparse.Namespace) -> dict[str, Any]:
    frame_ms = 1000.0 / live_cfg.source.fps
    return {
        "assay": args.assay, "um_per_px_declared": args.um_per_px,
        "rates_per_s": {
            "model only": alone["model_per_s"],
            "sequential (scale each field)": alone["sequential_per_s"],
            "sequential (scale reused)": alone["sequential_scale_reused_per_s"],
            "pipeline, full speed": full.processed_fps,
            "pipeline, 30 fps camera": live.processed_fps,
        },
        "ratios": {
            "pipeline_full_over_model_only": full.processed_fps / alone["model_per_s"],
            "pipeline_full_over_sequential_scale_reused":
                full.processed_fps / alone["sequential_scale_reused_per_s"],
        },
        "latency_budget_ms": {"model_ms": alone["model_ms"], "frame_interval_ms": frame_ms,
                              "model_plus_frame_ms": alone["model_ms"] + frame_ms,
                              "whole_field_ms": alone["sequential_scale_reused_ms"]},
        "alone": alone, "full_speed": _summary(full), "camera_30fps": _summary(live),
        "soak": None if soak is None else {**_summary(soak), "seconds": args.soak_seconds,
                                           **_steady_and_growth(rss, warmup_s=SOAK_WARMUP_S)},
        "rss_samples": rss,
    }


def _print(report: dict[str, Any]) -> None:
    print("\nrates (per second, this machine, one run):")
    for name, value in report["rates_per_s"].items():
        print(f"  {name:34s} {value:7.2f}")
    for name, value in report["ratios"].items():
        print(f"  ratio {name:44s} {value:5.2f}")
    live, budget = report["camera_30fps"], report["latency_budget_ms"]
    print(f"30 fps camera: capture {live.get('capture_fps')} fps, processed "
          f"{live.get('processed_fps')} fps, latency {live.get('latency_ms')} ms vs model + one "
          f"frame {budget['model_plus_frame_ms']:.0f} ms (whole field alone "
          f"{budget['whole_field_ms']:.0f} ms); dropped {live.get('frames_dropped')}; "
          f"reported {live.get('fields_reported')}, view still → reported "
          f"{live.get('view_to_report_ms')} ms")
    if report["soak"]:
        s = report["soak"]
        print(f"soak {s['seconds']:.0f} s: steady RSS {s['steady_mb']:.0f} MB after "
              f"{SOAK_WARMUP_S:.0f} s, growth first to last minute {s['growth_mb']:+.1f} MB "
              f"({s['growth_mb_per_hour']:+.1f} MB/h by least squares)")


if __name__ == "__main__":
    raise SystemExit(main())
