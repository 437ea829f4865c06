"""Quantise a shipped model's FP32 file again into its CPU INT8 file, with the current
settings of ``tools.quantise_model`` and the calibration data of its training recipe.

    python -m tools.requantise_model --assay her2 [--models-dir models] [--measure]
    python -m tools.requantise_model --assay hep2 --measure

Why it exists: the CPU INT8 files shipped before 2026-12-06 had signed 8-bit weights, and
on an x86 CPU without VNNI ONNX Runtime's unsigned-by-signed 8-bit products saturate
(``tools/quantise_model.py``); they are now unsigned. Retraining is not needed to mend
that: the FP32 weights are the trained model. This rewrites ``<assay>_int8.onnx`` only
(the TensorRT file keeps its signed symmetric weights), updates its sha256 and size in
the manifest and records the step under ``quantisation``. ``--measure`` then measures the
new file as its recipe did and writes the manifest's INT8 metrics: HER2 on the 200
held-out fields of ``tools.eval_her2`` (scale known, and estimated), HEp-2 on the
training run's held-out crops (2,550 cells and 600 compound ones; torch is needed to
import the training tool). Without it the INT8 metrics are stale and the tool says so.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.config import Hep2CellsConfig
from appliance.inference.manifest import file_sha256, load_manifest
from tools.hep2_dataset import CALIBRATION_SEEDS, generated_crops
from tools.quantise_model import calibration_inputs, quantise_qdq

HER2_CALIBRATION_FIELDS = 48  # the her2 recipe's (tools.quantise_model --fields)
HEP2_CALIBRATION_PER_CLASS = 20  # the hep2 recipe's (train_hep2 --calibration-per-class)
HEP2_CALIBRATION_RNG_SEED = 3  # train_hep2: --seed 1, calibration crops drawn with seed + 2
EVAL_COMMANDS = {
    "her2": "python -m tools.eval_her2 --precision int8 (and --estimate-scale)",
    "hep2": "python -m tools.eval_hep2 --precision int8 (the three specimen sets)",
}


def calibration(assay: str, folder: Path) -> tuple[list[np.ndarray], str]:
    """The calibration inputs of ``assay``'s recipe, and the model input's name."""
    spec = load_manifest(folder).input
    if assay == "her2":
        return calibration_inputs(HER2_CALIBRATION_FIELDS, spec), spec.name
    crops = generated_crops(CALIBRATION_SEEDS, HEP2_CALIBRATION_PER_CLASS, Hep2CellsConfig(),
                            rng_seed=HEP2_CALIBRATION_RNG_SEED).crops
    return [crops[i:i + 64] for i in range(0, len(crops), 64)], spec.name


def measure_her2(models_dir: Path) -> dict[str, dict[str, object]]:
    """The INT8 figures of the HER2 manifest, as ``tools.eval_her2`` measures them."""
    from appliance.assays.her2.assay import Her2Assay
    from appliance.config import Config, with_overrides
    from tools.eval_her2 import evaluate, held_out_specs

    cfg = with_overrides(Config(), {"inference.models_dir": str(models_dir)})
    out: dict[str, dict[str, object]] = {}
    for tag, known in (("int8", True), ("int8-estimated-scale", False)):
        with Her2Assay.from_config(cfg) as assay:
            metrics = evaluate(assay, held_out_specs(200), known_scale=known, progress=True)
        out[tag] = dict(metrics.summary())
    return out


def measure_hep2(folder: Path) -> dict[str, dict[str, object]]:
    """The INT8 figures of the HEp-2 manifest, on the crops its training run held out."""
    from tools import train_hep2 as train  # imports torch

    args = argparse.Namespace(cache="")
    cfg = Hep2CellsConfig()
    seed = 1  # the recipe's --seed: held-out crops are drawn with seed + 1
    val = train._generated(args, cfg, "val", train.VAL_SEEDS, 150, seed + 1, max_per_field=40)
    val_compound = train._compound(args, cfg, "valcompound", train.VAL_COMPOUND_SEEDS, 600,
                                   seed + 1, every_pair=True)
    path = folder / "hep2_int8.onnx"
    metrics, cm = train.measure(path, val)
    metrics["compound"] = train.measure_compound(path, val_compound)
    metrics["regions"] = train.measure_regions(path, val, val_compound)
    train.plot_confusion(cm, Path("docs/img/hep2_confusion_int8.png"),
                         f"HEp-2 cells, INT8, held-out generated (mean class acc "
                         f"{metrics['mean_class_accuracy']:.3f})")
    return {"int8": metrics}


def requantise(models_dir: Path, assay: str) -> Path:
    """Rewrite ``models_dir/<assay>``'s CPU INT8 file and its manifest entry."""
    folder = models_dir / assay
    path = folder / "manifest.json"
    text = path.read_text(encoding="utf-8")
    manifest = json.loads(text)
    files = manifest["files"]
    fp32, int8 = folder / files["fp32"]["path"], folder / files["int8"]["path"]
    if file_sha256(fp32) != files["fp32"]["sha256"]:
        raise SystemExit(f"{fp32}: sha256 does not match the manifest: not the trained model")
    inputs, name = calibration(assay, folder)
    old = files["int8"]["sha256"]
    quantise_qdq(fp32, int8, inputs, name)
    files["int8"] = {**files["int8"], "sha256": file_sha256(int8),
                     "bytes": int8.stat().st_size}
    q = manifest.setdefault("quantisation", {})
    q["weights"] = "uint8 per-channel (U8U8: cannot saturate on x86 without VNNI)"
    q["requantised"] = {
        "on": date.today().isoformat(), "previous_int8_sha256": old,
        "why": "the signed 8-bit weights saturated ONNX Runtime's u8 x s8 products on x86 "
               "CPUs without VNNI (AVX2): results depended on the CPU",
        "command": f"python -m tools.requantise_model --assay {assay}",
    }
    _save(path, manifest, text)
    return int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--assay", required=True, choices=("her2", "hep2"))
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--measure", action="store_true",
                    help="measure the new file and write the manifest's INT8 metrics")
    args = ap.parse_args()
    out = requantise(args.models_dir, args.assay)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    if not args.measure:
        print(f"its manifest metrics are now stale: --measure, or {EVAL_COMMANDS[args.assay]}")
        return
    folder = args.models_dir / args.assay
    figures = (measure_her2(args.models_dir) if args.assay == "her2"
               else measure_hep2(folder))
    where = (f"{platform.machine()} {_cpu_flags()}, ONNX Runtime {ort.__version__}, "
             f"{date.today().isoformat()}; speeds with whatever else ran on the cores "
             "(speed: make bench)")
    path = folder / "manifest.json"
    text = path.read_text(encoding="utf-8")
    manifest = json.loads(text)
    for tag, values in figures.items():
        manifest["metrics"][tag] = {**values, "measured_on": where}
        print(f"{tag}: {json.dumps(values)}")
    _save(path, manifest, text)


def _save(path: Path, manifest: dict[str, object], before: str) -> None:
    """Write the manifest as the file spelled it (non-ASCII escaped or not), so that its
    diff shows only what changed."""
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=before.isascii()) + "\n",
                    encoding="utf-8")


def _cpu_flags() -> str:
    """Whether this CPU has VNNI (what decides INT8's arithmetic), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return "(CPU flags unknown)"
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return "(" + ", ".join(have or ["no AVX2"]) + ")"


if __name__ == "__main__":
    main()
