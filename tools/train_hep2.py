"""Train the HEp-2 cell classifier, export FP32 and INT8 ONNX, measure them, write the manifest.

    python -m tools.train_hep2 --out models/hep2 [--per-class 600] [--epochs 12]
    python -m tools.train_hep2 --cells-dir LAB/cells            # + a lab's folder per class
    python -m tools.train_hep2 --fields-csv LAB/fields.csv --fields-um-per-px 0.5

Training data: generated one-pattern fields (tools/hep2_dataset.py, seeds 700000+) plus,
when given, a lab's cell folders and whole fields (weak labels, see hep2_dataset.py).
Held-out figures are measured on generated seeds 720000+ (never trained on), by ONNX
Runtime on the exported files, FP32 and INT8. The INT8 models are Q/DQ from the same
toolchain as HER2 (tools/quantise_model.py: quant_pre_process, quantize_static, MinMax,
per-channel weights), calibrated on generated crops of seeds 730000+.

Writes into --out: hep2_fp32.onnx, hep2_int8.onnx, hep2_int8_trt.onnx, manifest.json;
into --plots: hep2_training_loss.png and hep2_confusion_int8.png.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from appliance.assays.hep2.patterns import BY_NAME, NAMES
from appliance.assays.hep2.types import MITOSIS_CLASSES
from appliance.config import Hep2CellsConfig
from appliance.inference.manifest import file_sha256
from tools.hep2_dataset import (
    CALIBRATION_SEEDS,
    TRAIN_SEEDS,
    VAL_SEEDS,
    CropSet,
    concat,
    field_crops,
    folder_crops,
    generated_crops,
)
from tools.hep2_net import (
    CROP_PX,
    INPUT_NAME,
    MITOSIS_OUTPUT,
    PATTERN_OUTPUT,
    Hep2Net,
    export_onnx,
)
from tools.quantise_model import FieldReader

PRECISIONS = ("fp32", "int8", "int8_trt")
VALIDATED_ON = (
    "generated data only (tools/synth/hep2_fields.py held-out seeds 720000+); not validated "
    "on real HEp-2 slides - research use only"
)
TRAIN_MITOTIC_FRACTION = 0.12
MITOSIS_LOSS_WEIGHT = 0.5  # the mitosis head rides along; the pattern is the main task


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random 90° rotation, flip and a mild gamma on the signal: a cell has no orientation."""
    k = int(rng.integers(4))
    x = torch.rot90(x, k, dims=(2, 3))
    if rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    gamma = float(rng.uniform(0.8, 1.25))
    sig = x[:, :1].clamp(min=0) ** gamma
    return torch.cat([sig, x[:, 1:]], dim=1)


def batches(n: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches covering ``n`` once (the last one may be short)."""
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield order[i:i + batch]


def class_weights(pattern: np.ndarray) -> torch.Tensor:
    """Inverse-frequency class weights (classes absent from the data get 0)."""
    counts = np.bincount(pattern, minlength=len(NAMES)).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()),
                 0.0)
    return torch.tensor(w, dtype=torch.float32)


def train_model(data: CropSet, *, epochs: int, batch: int = 128, lr: float = 3e-3,
                width: int = 16, seed: int = 1, show: bool = True) -> tuple[Hep2Net, list[float]]:
    """Train a Hep2Net on ``data``; returns the model (eval mode) and the per-step losses."""
    if not len(data):
        raise ValueError("no training crops")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Hep2Net(width=width)
    steps = epochs * -(-len(data) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    cw = class_weights(data.pattern)
    crops = torch.from_numpy(data.crops)
    pattern = torch.from_numpy(data.pattern)
    mitosis = torch.from_numpy(data.mitosis)
    weight = torch.from_numpy(data.weight)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="training", disable=not show)
    for _epoch in range(epochs):
        for idx in batches(len(data), batch, rng):
            t = torch.from_numpy(idx)
            p_logits, m_logits = model(augment(crops[t], rng))
            w = weight[t]
            loss_p = (F.cross_entropy(p_logits, pattern[t], weight=cw, reduction="none")
                      * w).sum() / (cw[pattern[t]] * w).sum().clamp(min=1e-6)
            known = mitosis[t] >= 0  # a lab's crops carry no mitosis truth
            loss_m = (F.cross_entropy(m_logits[known], mitosis[t][known]) if bool(known.any())
                      else p_logits.sum() * 0.0)
            loss = loss_p + MITOSIS_LOSS_WEIGHT * loss_m
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    model.eval()
    return model, losses


# --- quantisation (the HER2 toolchain, fed with cell crops) ----------------------------------

@contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    """Work in ``path`` for a while: ONNX Runtime's quantiser leaves scratch files in the cwd."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantise(fp32: Path, out: Path, calibration: np.ndarray, *, symmetric: bool = False) -> None:
    """INT8 Q/DQ copy of ``fp32`` calibrated on ``calibration`` crops (MinMax).

    Same settings as tools/quantise_model.py: per-channel signed weights, unsigned
    activations on the CPU; ``symmetric`` writes the TensorRT variant (zero point 0).
    """
    fp32, out = fp32.resolve(), out.resolve()
    inputs = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    with tempfile.TemporaryDirectory() as tmp, _in_directory(Path(tmp)):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), FieldReader(inputs, INPUT_NAME),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}
            if symmetric else {},
        )


# --- measurement -----------------------------------------------------------------------------

def onnx_predict(path: Path, crops: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pattern and mitosis class indices of ``crops`` from an ONNX model file."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    pats, mits = [], []
    for i in range(0, len(crops), batch):
        p, m = sess.run([PATTERN_OUTPUT, MITOSIS_OUTPUT], {INPUT_NAME: crops[i:i + batch]})
        pats.append(np.argmax(p, axis=1))
        mits.append(np.argmax(m, axis=1))
    return np.concatenate(pats), np.concatenate(mits)


def confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = truth, columns = prediction."""
    return np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean over the classes present of each class's recall."""
    present = cm.sum(axis=1) > 0
    return float(np.mean(np.diag(cm)[present] / cm.sum(axis=1)[present]))


def measure(path: Path, data: CropSet) -> tuple[dict[str, object], np.ndarray]:
    """Held-out figures of one model file and its pattern confusion matrix."""
    start = time.perf_counter()
    pat, mit = onnx_predict(path, data.crops)
    seconds = time.perf_counter() - start
    cm = confusion(data.pattern, pat, len(NAMES))
    known = data.mitosis >= 0
    mcm = confusion(data.mitosis[known], mit[known], len(MITOSIS_CLASSES))
    per_class = {NAMES[i]: round(float(cm[i, i] / cm[i].sum()), 4)
                 for i in range(len(NAMES)) if cm[i].sum()}
    return {
        "cells": len(data),
        "mean_class_accuracy": round(mean_class_accuracy(cm), 4),
        "accuracy": round(float(np.trace(cm) / max(1, cm.sum())), 4),
        "per_class_accuracy": per_class,
        "mitosis_mean_class_accuracy": round(mean_class_accuracy(mcm), 4),
        "mitotic_cells": int((data.mitosis[known] > 0).sum()),
        "cells_per_s_2_threads": round(len(data) / seconds, 1),
    }, cm


def plot_losses(losses: list[float], path: Path) -> None:
    """Training-loss curve (raw and smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.5, alpha=0.4, label="step")
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(smooth)) + k // 2, smooth, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="HEp-2 cell classifier training")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, path: Path, title: str) -> None:
    """Row-normalised confusion matrix with ICAP codes on the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ticks = [f"{BY_NAME[n].icap} {n}" for n in NAMES]
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(NAMES)):
        for j in range(len(NAMES)):
            if cm[i, j]:
                ax.text(j, i, f"{rows[i, j]:.2f}"[1:] if rows[i, j] < 1 else "1", ha="center",
                        va="center", fontsize=6, color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(NAMES)), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(len(NAMES)), ticks, fontsize=7)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- manifest --------------------------------------------------------------------------------

def build_manifest(directory: Path, recipe: dict[str, object],
                   metrics: dict[str, object], cfg: Hep2CellsConfig) -> dict[str, object]:
    """The manifest for the model files in ``directory`` (loads with load_manifest)."""
    files = {}
    for precision in PRECISIONS:
        path = directory / f"hep2_{precision}.onnx"
        if path.is_file():
            files[precision] = {"path": path.name, "sha256": file_sha256(path),
                                "bytes": path.stat().st_size}
    return {
        "name": "hep2-cells-v1",
        "assay": "hep2",
        "created": date.today().isoformat(),
        "task": "HEp-2 IIF cell classification: ICAP pattern and mitotic state of each cell "
                "from its normalised crop",
        "files": files,
        "input": {
            "name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
            "shape": ["n", 2, cfg.crop_px, cfg.crop_px],
            "channels": ["green signal: (green - local background) / cell's 99th percentile, "
                         "clipped to [0, 1.5]", "cell mask (0/1)"],
            "normalisation": "appliance.assays.hep2.crops.cell_crop; no further mean/std",
            "mean": [0.0, 0.0], "std": [1.0, 1.0],
            "multiple_of": cfg.crop_px,
            "crop_px": cfg.crop_px, "crop_um": cfg.crop_um,
            "um_per_px_range": [0.25, 1.0],
            "note": "each crop spans crop_um at the specimen whatever the objective; "
                    "um_per_px_range is the range of objectives trained on (10x..40x)",
        },
        # "output" is the main head, in the form the shared manifest loader reads.
        "output": {"name": PATTERN_OUTPUT, "classes": list(NAMES), "stride": 1,
                   "note": "per-cell logits; softmax gives the class probabilities"},
        "outputs": {
            PATTERN_OUTPUT: {"classes": list(NAMES),
                             "icap": [BY_NAME[n].icap for n in NAMES]},
            MITOSIS_OUTPUT: {"classes": list(MITOSIS_CLASSES)},
        },
        "quantisation": {
            "format": "QDQ", "tool": "onnxruntime.quantization.quantize_static",
            "weights": "int8 per-channel", "activations": "uint8 per-tensor",
            "calibration": f"MinMax on {recipe.get('calibration_crops')} generated crops "
                           "(seeds 730000+)",
            "int8_trt": "signed, symmetric activations and weights (TensorRT explicit "
                        "quantisation); same calibration",
        },
        "training": recipe,
        "metrics": metrics,
        "validated_on": VALIDATED_ON,
    }


def write_manifest(directory: Path, manifest: dict[str, object]) -> None:
    """Write ``directory/manifest.json``."""
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False)
                                             + "\n", encoding="utf-8")


def _training_data(args: argparse.Namespace, cfg: Hep2CellsConfig) -> CropSet:
    # More metaphases than a real well holds, so the mitosis head sees enough of them.
    sets = [generated_crops(TRAIN_SEEDS, args.per_class, cfg, rng_seed=args.seed,
                            mitotic_fraction=TRAIN_MITOTIC_FRACTION,
                            progress=lambda r: tqdm(r, desc="training fields"))]
    if args.cells_dir:
        sets.append(folder_crops(Path(args.cells_dir), cfg))
    if args.fields_csv:
        sets.append(field_crops(Path(args.fields_csv), args.fields_um_per_px, cfg))
    return concat(sets, cfg.crop_px)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Build data, train, export, quantise, measure, plot; returns the manifest."""
    torch.set_num_threads(args.threads)
    cfg = Hep2CellsConfig()
    if cfg.crop_px != CROP_PX:
        raise ValueError(f"the network takes {CROP_PX} px crops, config says {cfg.crop_px}")
    t0 = time.time()
    train = _training_data(args, cfg)
    val = generated_crops(VAL_SEEDS, args.val_per_class, cfg, rng_seed=args.seed + 1,
                          max_per_field=args.val_per_field,
                          progress=lambda r: tqdm(r, desc="held-out fields"))
    calib = generated_crops(CALIBRATION_SEEDS, args.calibration_per_class, cfg,
                            rng_seed=args.seed + 2)
    data_s = time.time() - t0
    model, losses = train_model(train, epochs=args.epochs, batch=args.batch, lr=args.lr,
                                width=args.width, seed=args.seed)
    train_s = time.time() - t0 - data_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "hep2_fp32.onnx")
    quantise(out / "hep2_fp32.onnx", out / "hep2_int8.onnx", calib.crops)
    quantise(out / "hep2_fp32.onnx", out / "hep2_int8_trt.onnx", calib.crops, symmetric=True)
    metrics: dict[str, object] = {}
    for precision in PRECISIONS:
        m, cm = measure(out / f"hep2_{precision}.onnx", val)
        metrics[precision] = m
        if precision == "int8":
            plot_confusion(cm, Path(args.plots) / "hep2_confusion_int8.png",
                           f"HEp-2 cells, INT8, held-out generated (mean class acc "
                           f"{m['mean_class_accuracy']:.3f})")
    plot_losses(losses, Path(args.plots) / "hep2_training_loss.png")
    recipe = {
        "script": "tools/train_hep2.py",
        "data": f"generated one-pattern fields (tools/synth/hep2_fields.py, seeds from "
                f"{TRAIN_SEEDS.start}, mitotic_fraction {TRAIN_MITOTIC_FRACTION}), whole "
                "cells, <= 40 per field, masks perturbed (erode/dilate/shift <= 1 µm)",
        "lab_cells_dir": args.cells_dir, "lab_fields_csv": args.fields_csv,
        "train_crops": len(train), "per_class": args.per_class,
        "held_out_crops": len(val), "calibration_crops": len(calib),
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "width": args.width,
        "seed": args.seed, "optimizer": "AdamW, one-cycle",
        "loss": "class-weighted cross-entropy (pattern) + 0.5 x cross-entropy (mitosis)",
        "augmentation": "rot90, flip, gamma 0.8..1.25 on the signal",
        "torch": torch.__version__, "data_seconds": round(data_s),
        "train_seconds": round(train_s), "final_loss": float(np.mean(losses[-50:])),
    }
    manifest = build_manifest(out, recipe, metrics, cfg)
    write_manifest(out, manifest)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="models/hep2")
    ap.add_argument("--plots", default="docs/img")
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--val-per-class", type=int, default=150)
    ap.add_argument("--val-per-field", type=int, default=40)
    ap.add_argument("--calibration-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells-dir", default="", help="a lab's DIR/<class>/*.png cell crops")
    ap.add_argument("--fields-csv", default="", help="a lab's file,pattern[,pattern2] CSV")
    ap.add_argument("--fields-um-per-px", type=float, default=0.5,
                    help="pixel size of the lab's fields (µm at the specimen)")
    manifest = run(ap.parse_args())
    for precision, m in manifest["metrics"].items():  # type: ignore[attr-defined]
        print(f"{precision}: mean class accuracy {m['mean_class_accuracy']}, "
              f"mitosis {m['mitosis_mean_class_accuracy']}, {m['cells_per_s_2_threads']} cells/s")


if __name__ == "__main__":
    main()
