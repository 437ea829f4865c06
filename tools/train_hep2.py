"""Train the HEp-2 cell classifier, export FP32 and INT8 ONNX, measure them, write the manifest.

    python -m tools.train_hep2 --out models/hep2 [--per-class 600] [--epochs 12]
    # the shipped hep2-cells-v9 (`make model-hep2`; 20 min of crops and 40 min of
    # training on 2 cores with --bf16): half the training fields through a drawn camera,
    # then the region head fitted on the frozen trunk
    python -m tools.train_hep2 --cache build/hep2_cache --per-class 4500 --compound 18000 \
        --steps 12000 --lr 0.003 --width 32 --bf16 --camera-looks 0.5 \
        --checkpoint build/hep2_v9.pt --out build/hep2 --plots build/hep2
    # the region head alone, from a checkpoint (a few minutes)
    python -m tools.train_hep2 --cache build/hep2_cache --per-class 4500 --compound 18000 \
        --width 32 --camera-looks 0.5 --init build/hep2_v9.pt --head-only \
        --out build/hep2 --plots build/hep2
    python -m tools.train_hep2 ... --resume          # continue from --checkpoint
    python -m tools.train_hep2 --cells-dir LAB/cells [--cells-um-per-px 0.3]  # + a lab's cells
    python -m tools.train_hep2 --fields-csv LAB/fields.csv [--fields-um-per-px 0.5]

Training data: generated one-pattern fields (tools/hep2_dataset.py, seeds 700000+) plus,
when given, a lab's cell folders and whole fields (weak labels, see hep2_dataset.py).
Held-out figures are measured on generated seeds 720000+ (never trained on), by ONNX
Runtime on the exported files, FP32 and INT8. The INT8 models are Q/DQ from the same
toolchain as HER2 (tools/quantise_model.py: quant_pre_process, quantize_static, MinMax,
per-channel weights), calibrated on generated crops of seeds 730000+.

Writes into --out: hep2_fp32.onnx, hep2_int8.onnx, hep2_int8_trt.onnx, manifest.json;
into --plots: hep2_training_loss.png and hep2_confusion_int8.png.

--cache DIR keeps each generated crop set as a .npz named by its seeds, counts and
options (a rebuild of 17 k crops takes minutes); --data-only stops after building them.
Training length is --steps (or --epochs); --time-budget-min fits it to a wall-clock
budget instead (the manifest then records the step count, which --steps reproduces).
The torch checkpoint (--checkpoint, every epoch end) lets --resume continue a run.
--bf16 runs the forward pass in bfloat16 autocast (the weights, the optimiser and the
losses stay float32). On a CPU with AVX-512 BF16 a step is about twice as fast; the network
is trained in the channels-last layout in any case, which alone is about 1.5x.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from tqdm import tqdm

from appliance.assays.hep2.assay import sigmoid, softmax
from appliance.assays.hep2.patterns import BY_NAME, NAMES, REGIONS
from appliance.assays.hep2.types import MITOSIS_CLASSES
from appliance.config import Hep2CellsConfig, Hep2SpecimenConfig
from appliance.inference.manifest import file_sha256
from appliance.inference.onnxruntime_backend import X64_QUANT_PRECISION
from tools.hep2_dataset import (
    CALIBRATION_SEEDS,
    COMPOUND_PER_FIELD,
    COMPOUND_SEEDS,
    TRAIN_SEEDS,
    VAL_COMPOUND_SEEDS,
    VAL_SEEDS,
    CropSet,
    cached,
    compound_crops,
    compound_pairs,
    concat,
    field_crops,
    folder_crops,
    generated_crops,
    mitosis_index,
)
from tools.hep2_net import (
    CROP_PX,
    INPUT_NAME,
    MITOSIS_OUTPUT,
    PATTERN_OUTPUT,
    REGION_OUTPUT,
    Hep2Net,
    export_onnx,
    load_weights,
)
from tools.numbers import save_chart
from tools.quantise_model import quantise_qdq

PRECISIONS = ("fp32", "int8", "int8_trt")
# The model's name in results, MQTT and engine files: a new training recipe, a new name.
MODEL_NAME = "hep2-cells-v9"
# What the manifest's training data says of --camera-looks.
CAMERA_LOOKS_SAID = ("; {share:g} of the generated fields (one-pattern and compound) seen "
                     "through a randomly drawn real camera before they are cut "
                     "(tools/synth/camera_looks.py: a colour mosaic or monochrome, read "
                     "noise, a tone curve, MJPG)")
VALIDATED_ON = (
    "generated data only (tools/synth/hep2_fields.py held-out seeds 720000+); not validated "
    "on real HEp-2 slides - research use only"
)
TRAIN_MITOTIC_FRACTION = 0.12
MITOSIS_LOSS_WEIGHT = 0.5  # the mitosis head rides along; the pattern is the main task
WARMUP_STEPS = 150
PROBE_STEPS = 30  # steps timed before a time-budgeted run fixes its length
# A compound cell (two regions stained) is taught as half one pattern, half the other, so
# its probabilities name both and the specimen rules can count both
# (specimen.votes_from_probabilities).
COMPOUND_SPLIT = 0.5
# What "both named" means below: the assay's default second vote.
SECOND_VOTE = Hep2SpecimenConfig().second_vote
# The region head's fit: interphase one-pattern crops per class, compound crops, steps.
REGION_FIT_PER_CLASS = 500
REGION_FIT_COMPOUND = 6000
REGION_FIT_STEPS = 600


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


def pattern_targets(pattern: torch.Tensor, second: torch.Tensor, n_classes: int,
                    smoothing: float) -> torch.Tensor:
    """(N, C) target distributions: one-hot, or split between a compound cell's two
    patterns; then label smoothing (``smoothing`` spread evenly over all classes)."""
    t = F.one_hot(pattern, n_classes).to(torch.float32)
    two = second >= 0
    if bool(two.any()):
        t[two] *= 1.0 - COMPOUND_SPLIT
        t[two] += COMPOUND_SPLIT * F.one_hot(second[two], n_classes).to(torch.float32)
    return t * (1.0 - smoothing) + smoothing / n_classes


def pattern_loss(logits: torch.Tensor, targets: torch.Tensor, class_w: torch.Tensor,
                 sample_w: torch.Tensor) -> torch.Tensor:
    """Class- and sample-weighted cross-entropy against soft targets, normalised by the
    total weight so a batch of rare classes does not dominate the step size."""
    tw = targets * class_w
    per = -(tw * F.log_softmax(logits, dim=1)).sum(dim=1)
    return (per * sample_w).sum() / (tw.sum(dim=1) * sample_w).sum().clamp(min=1e-6)


def lr_at(step: int, total: int, peak: float, warmup: int = WARMUP_STEPS) -> float:
    """One-cycle learning rate: linear warm-up from peak/25, then cosine down to ~0.

    The warm-up is a fixed number of steps (not a share of ``total``), so the first steps
    are the same whatever ``total`` turns out to be (see ``time_budget_s``).
    """
    warm = max(1, min(warmup, total // 5))
    if step < warm:
        return peak * (0.04 + 0.96 * step / warm)
    frac = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _save_checkpoint(path: Path, model: Hep2Net, opt: torch.optim.Optimizer, state: dict[str, Any],
                     rng: np.random.Generator) -> None:
    """Model, optimiser, progress and RNG states at an epoch boundary (atomic write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model: Hep2Net, opt: torch.optim.Optimizer,
                     rng: np.random.Generator) -> dict[str, Any]:
    """Restore what :func:`_save_checkpoint` wrote; returns the progress state."""
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path}")
    ck = torch.load(path, weights_only=False)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: checkpoint does not fit this network (width?): {exc}") from exc
    opt.load_state_dict(ck["opt"])
    rng.bit_generator.state = ck["rng"]
    torch.set_rng_state(ck["torch_rng"])
    return dict(ck["state"])


def checkpoint_seconds(path: Path) -> float:
    """Training time a checkpoint has accumulated (0 for one written before it was kept):
    a resumed run's manifest counts the whole run, not only its last part."""
    return float(torch.load(path, weights_only=False)["state"].get("seconds", 0.0))


def train_model(data: CropSet, *, epochs: int, batch: int = 128, lr: float = 3e-3,
                width: int = 16, seed: int = 1, show: bool = True,
                label_smoothing: float = 0.0, steps: int | None = None,
                time_budget_s: float | None = None, checkpoint: Path | None = None,
                resume: bool = False, stop_after_epochs: int | None = None,
                init: Path | None = None, region_loss: float = 0.0, bf16: bool = False
                ) -> tuple[Hep2Net, list[float]]:
    """Train a Hep2Net on ``data``; returns the model (eval mode) and the per-step losses.

    Length: ``steps`` optimiser steps when given, else ``epochs`` passes over the data.
    ``time_budget_s`` instead fits the run to a wall-clock budget: after PROBE_STEPS steps
    the total is fixed from the measured step time, so the schedule still ends at a low
    learning rate (the step count is returned in the losses' length and reproduces the run
    with ``steps``). The pace is measured once: on a machine whose load changes, prefer
    ``steps``. ``checkpoint`` is written at every epoch end; ``resume`` continues
    from it with the same data, width, seed and region loss; ``stop_after_epochs`` ends
    this call early (the schedule is unchanged), to be resumed later. ``init`` starts from the
    weights of an earlier run's checkpoint with a fresh optimiser and schedule (a warm
    restart: a second, shorter cycle of the one-cycle schedule). ``region_loss`` > 0 adds
    that many times a binary cross-entropy of the region logits against the regions each
    interphase crop's pattern(s) stain, so the trunk itself learns which part of a cell
    stains (a faint second pattern); 0 leaves the region head to ``fit_region_head``.
    ``bf16`` runs the forward pass under bfloat16 autocast (weights, optimiser and losses
    stay float32): about twice as fast on a CPU with AVX-512 BF16, a rounding change only.
    The network is trained channels-last either way (the same arithmetic, a faster layout).
    """
    if not len(data):
        raise ValueError("no training crops")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = initial_model(init, width) if init is not None else Hep2Net(width=width)
    per_epoch = -(-len(data) // batch)
    total = steps if steps is not None else epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "total": total, "losses": [],
                             "fixed": time_budget_s is None, "seconds": 0.0,
                             "region_loss": region_loss, "bf16": bf16}
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint path")
        state = _load_checkpoint(checkpoint, model, opt, rng)
        total = int(state["total"])
        # A run is one recipe: a setting changed half-way would be recorded as neither.
        # A checkpoint from before a key existed: its region loss is unknown (the value
        # asked for is taken), and it was trained in float32.
        for key, asked, before in (("region_loss", float(region_loss), float(region_loss)),
                                   ("bf16", bool(bf16), False)):
            had = state.get(key, before)
            if had != asked:
                raise ValueError(f"{checkpoint} was trained with {key} {had}, not {asked}: "
                                 "resume with the same setting")
            state[key] = asked
    cw = class_weights(data.pattern)
    crops = torch.from_numpy(data.crops)
    pattern = torch.from_numpy(data.pattern)
    second = torch.from_numpy(data.seconds)
    mitosis = torch.from_numpy(data.mitosis)
    weight = torch.from_numpy(data.weight)
    regions = torch.from_numpy(region_targets(data.pattern, data.seconds))
    # Metaphases have no interphase regions; a lab's crops carry no mitosis truth, so
    # only crops known to be interphase teach the regions.
    interphase = mitosis == mitosis_index(False, False)
    losses: list[float] = list(state["losses"])
    step = int(state["step"])
    # torch's stubs leave out Module.to's memory_format, which the runtime takes.
    cast(Any, model).to(memory_format=torch.channels_last)
    model.train()
    bar = tqdm(total=total, initial=step, desc="training", disable=not show)
    start = time.perf_counter()
    earlier_s = float(state.get("seconds", 0.0))  # training time of the calls before a resume
    epochs_here = 0
    while step < total and (stop_after_epochs is None or epochs_here < stop_after_epochs):
        for idx in batches(len(data), batch, rng):
            if step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, lr)
            t = torch.from_numpy(idx)
            x = augment(crops[t], rng).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outs = model(x)
            p_logits, m_logits, r_logits = (o.float() for o in outs)
            targets = pattern_targets(pattern[t], second[t], len(NAMES), label_smoothing)
            loss_p = pattern_loss(p_logits, targets, cw, weight[t])
            known = mitosis[t] >= 0  # a lab's crops carry no mitosis truth
            loss_m = (F.cross_entropy(m_logits[known], mitosis[t][known]) if bool(known.any())
                      else p_logits.sum() * 0.0)
            loss = loss_p + MITOSIS_LOSS_WEIGHT * loss_m
            inter = interphase[t]
            if region_loss > 0 and bool(inter.any()):
                loss = loss + region_loss * F.binary_cross_entropy_with_logits(
                    r_logits[inter], regions[t][inter])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if not state["fixed"] and step == PROBE_STEPS and time_budget_s is not None:
                # Fit the schedule to the budget from the measured pace (warm-up unchanged).
                pace = (time.perf_counter() - start) / PROBE_STEPS
                total = max(step + 1, int(time_budget_s / pace))
                state["fixed"] = True
                bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        state.update(step=step, epoch=int(state["epoch"]) + 1, total=total, losses=losses,
                     seconds=earlier_s + time.perf_counter() - start)
        epochs_here += 1
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, opt, state, rng)
    bar.close()
    cast(Any, model).to(memory_format=torch.contiguous_format)
    model.eval()
    return model, losses


def region_targets(pattern: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, regions) 0/1: which regions (patterns.REGIONS) each crop's pattern(s) stain."""
    region_of = np.array([REGIONS.index(BY_NAME[n].region) if BY_NAME[n].region in REGIONS
                          else -1 for n in NAMES])
    out = np.zeros((len(pattern), len(REGIONS)), np.float32)
    for classes in (pattern, second):
        rows = np.flatnonzero(classes >= 0)
        regions = region_of[classes[rows]]
        stained = regions >= 0
        out[rows[stained], regions[stained]] = 1.0
    return out


def region_fit_rows(data: CropSet, seed: int, per_class: int = REGION_FIT_PER_CLASS,
                    compound: int = REGION_FIT_COMPOUND) -> np.ndarray:
    """The crops the region head is fitted on: up to ``per_class`` interphase one-pattern
    crops of each class and up to ``compound`` compound ones (a lab's crops count as one
    pattern; metaphases are left out: their plate is not a region of an interphase cell)."""
    rng = np.random.default_rng(seed)
    picks = []
    interphase = data.mitosis <= 0
    single = data.seconds < 0
    for c in range(len(NAMES)):
        rows = np.flatnonzero(interphase & single & (data.pattern == c))
        picks.append(rng.permutation(rows)[:per_class])
    picks.append(rng.permutation(np.flatnonzero(interphase & ~single))[:compound])
    return np.sort(np.concatenate(picks))


def fit_region_head(model: Hep2Net, data: CropSet, *, seed: int = 1,
                    steps: int = REGION_FIT_STEPS, show: bool = True) -> dict[str, object]:
    """Fit ``model.regions`` (one yes / no logit per region) on the frozen trunk's features
    of :func:`region_fit_rows`, by logistic regression; the other heads are untouched, so
    their outputs stay the same. Returns what the manifest records."""
    rows = region_fit_rows(data, seed)
    if not len(rows):
        raise ValueError("no interphase crops to fit the region head on")
    model.eval()
    feats = []
    with torch.no_grad():
        batches_of = range(0, len(rows), 256)
        for i in tqdm(batches_of, desc="region head features", disable=not show):
            feats.append(model.features(torch.from_numpy(data.crops[rows[i:i + 256]])))
    x = torch.cat(feats)
    y = torch.from_numpy(region_targets(data.pattern[rows], data.seconds[rows]))
    # Centred features over one common scale fit well with one learning rate, and the fit
    # folds into the head. One scale, not one per feature: a near-constant feature would
    # get a weight far above the rest, and INT8's per-channel weight scale follows the
    # largest weight, leaving the others a few levels.
    mu, sd = x.mean(0), x.std(0).mean() + 1e-6
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(REGIONS))
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-4)
    z = (x - mu) / sd
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(z), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.regions.weight.copy_(head.weight / sd)
        model.regions.bias.copy_(head.bias - (head.weight * mu / sd).sum(1))
    return {"crops": len(rows), "compound_crops": int((data.seconds[rows] >= 0).sum()),
            "steps": steps, "final_loss": round(float(loss.item()), 4),
            "method": "logistic regression (Adam, lr 0.01, weight decay 1e-4) on the frozen "
                      "trunk's pooled features, centred, over their mean standard "
                      "deviation, folded into the head"}


def initial_model(path: Path, width: int) -> Hep2Net:
    """The network with the weights of checkpoint ``path`` (eval mode)."""
    model = Hep2Net(width=width)
    if not path.is_file():
        raise ValueError(f"--init: no checkpoint at {path}")
    try:
        load_weights(model, torch.load(path, weights_only=False)["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: not a checkpoint of this network: {exc}") from exc
    model.eval()
    return model


# --- quantisation (the HER2 toolchain, fed with cell crops) ----------------------------------

def quantise(fp32: Path, out: Path, calibration: np.ndarray, *, symmetric: bool = False) -> None:
    """INT8 Q/DQ copy of ``fp32`` calibrated on ``calibration`` crops, with the settings of
    every model (tools/quantise_model.py; ``symmetric``: the TensorRT variant)."""
    inputs = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    quantise_qdq(fp32, out, inputs, INPUT_NAME, symmetric=symmetric)


# --- measurement -----------------------------------------------------------------------------

def _session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on 2 threads, as every measurement here uses, with the
    box's exact INT8 arithmetic on x86 CPUs without VNNI (onnxruntime_backend)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_outputs(path: Path, crops: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pattern probabilities (N, classes) and mitosis logits of ``crops`` from a model file."""
    sess = _session(path)
    pats, mits = [], []
    for i in range(0, len(crops), batch):
        p, m = sess.run([PATTERN_OUTPUT, MITOSIS_OUTPUT], {INPUT_NAME: crops[i:i + batch]})
        pats.append(softmax(p))
        mits.append(m)
    if not pats:
        return np.zeros((0, len(NAMES)), np.float32), np.zeros((0, len(MITOSIS_CLASSES)))
    return np.concatenate(pats), np.concatenate(mits)


def onnx_regions(path: Path, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, regions) probabilities that each region stains, from a model file."""
    sess = _session(path)
    got = [sigmoid(sess.run([REGION_OUTPUT], {INPUT_NAME: crops[i:i + batch]})[0])
           for i in range(0, len(crops), batch)]
    return np.concatenate(got) if got else np.zeros((0, len(REGIONS)), np.float32)


def measure_regions(path: Path, single: CropSet, compound: CropSet,
                    presence: float = Hep2SpecimenConfig().region_presence
                    ) -> dict[str, object]:
    """Held-out figures of the region head at the assay's default ``presence``: compound
    cells with every region right, the recall of each region in them, and one-pattern
    interphase cells showing a region their pattern does not stain."""
    out: dict[str, object] = {"presence": presence}
    if len(compound):
        truth = region_targets(compound.pattern, compound.seconds) > 0
        said = onnx_regions(path, compound.crops) >= presence
        out["compound_cells"] = len(compound)
        out["compound_all_regions_right"] = round(float((said == truth).all(1).mean()), 4)
        out["compound_recall"] = {r: round(float(said[truth[:, k], k].mean()), 4)
                                  for k, r in enumerate(REGIONS) if truth[:, k].any()}
    rows = np.flatnonzero((single.mitosis <= 0) & (single.seconds < 0))
    if len(rows):
        truth = region_targets(single.pattern[rows], single.seconds[rows]) > 0
        said = onnx_regions(path, single.crops[rows]) >= presence
        out["single_cells"] = len(rows)
        out["single_extra_region"] = round(float((said & ~truth).any(1).mean()), 4)
    return out


def onnx_predict(path: Path, crops: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pattern and mitosis class indices of ``crops`` from an ONNX model file."""
    p, m = onnx_outputs(path, crops, batch)
    return np.argmax(p, axis=1), np.argmax(m, axis=1)


def both_named(probs: np.ndarray, first: np.ndarray, second: np.ndarray,
               second_vote: float = SECOND_VOTE) -> np.ndarray:
    """Per compound crop: do the specimen rules' votes (appliance.assays.hep2.specimen.
    votes_from_probabilities) name both of its patterns?"""
    from appliance.assays.hep2.specimen import votes_from_probabilities

    out = np.zeros(len(first), bool)
    for i, row in enumerate(probs):
        votes = votes_from_probabilities(dict(zip(NAMES, row.tolist(), strict=True)),
                                         second_vote)
        out[i] = {NAMES[first[i]], NAMES[second[i]]} <= set(votes)
    return out


def measure_compound(path: Path, data: CropSet) -> dict[str, object]:
    """Held-out compound cells: how often the specimen votes name both of their patterns."""
    if not len(data):
        return {"cells": 0}
    probs, _ = onnx_outputs(path, data.crops)
    both = both_named(probs, data.pattern, data.seconds)
    return {"cells": len(data), "both_named": round(float(both.mean()), 4),
            "second_vote": SECOND_VOTE}


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


def training_fit(path: Path, data: CropSet, *, count: int = 6000, seed: int = 0
                 ) -> dict[str, object]:
    """Mean class accuracy on up to ``count`` of the one-pattern crops the model was trained
    on. Beside the held-out figure it says what to try next: a wide gap asks for more data,
    none for a bigger network (or the generator draws two classes alike)."""
    single = np.flatnonzero(data.seconds < 0)
    pick = np.sort(np.random.default_rng(seed).permutation(single)[:count])
    if not len(pick):
        return {"crops": 0}
    m, _ = measure(path, data.subset(pick))
    return {"crops": len(pick), "mean_class_accuracy": m["mean_class_accuracy"]}


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
    save_chart(fig, path, dpi=110)


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
    save_chart(fig, path, dpi=110)


# --- manifest --------------------------------------------------------------------------------

def build_manifest(directory: Path, recipe: dict[str, object],
                   metrics: dict[str, object], cfg: Hep2CellsConfig,
                   name: str = MODEL_NAME) -> dict[str, object]:
    """The manifest for the model files in ``directory`` (loads with load_manifest)."""
    files = {}
    for precision in PRECISIONS:
        path = directory / f"hep2_{precision}.onnx"
        if path.is_file():
            files[precision] = {"path": path.name, "sha256": file_sha256(path),
                                "bytes": path.stat().st_size}
    return {
        "name": name,
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
            REGION_OUTPUT: {"classes": list(REGIONS),
                            "note": "one logit per region, independent: sigmoid gives the "
                                    "probability that the region stains"},
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


def _cache_path(args: argparse.Namespace, kind: str, seeds: range, per_class: int,
                rng_seed: int, **extra: object) -> Path | None:
    """Cache file of one generated crop set: every input that shapes it is in the name."""
    if not args.cache:
        return None
    tail = "".join(f"_{k}{v}" for k, v in sorted(extra.items()))
    return Path(args.cache) / f"{kind}_s{seeds.start}_n{per_class}_r{rng_seed}{tail}.npz"


def _generated(args: argparse.Namespace, cfg: Hep2CellsConfig, kind: str, seeds: range,
               per_class: int, rng_seed: int, max_per_field: int = 40,
               segmented_share: float = 0.0, scale_error: float = 1.0,
               camera_share: float = 0.0, **overrides: Any) -> CropSet:
    """Generated crops, read from / written to the --cache folder when one is given."""
    extra: dict[str, object] = {"g": segmented_share} if segmented_share else {}
    if scale_error > 1.0:
        extra["e"] = scale_error
    if camera_share > 0:
        extra["c"] = camera_share
    path = _cache_path(args, kind, seeds, per_class, rng_seed, f=max_per_field, **extra,
                       **overrides)
    return cached(path, lambda: generated_crops(
        seeds, per_class, cfg, rng_seed=rng_seed, max_per_field=max_per_field,
        segmented_share=segmented_share, scale_error=scale_error, camera_share=camera_share,
        progress=lambda r: tqdm(r, desc=f"{kind} fields"), **overrides))


def _compound(args: argparse.Namespace, cfg: Hep2CellsConfig, kind: str, seeds: range,
              count: int, rng_seed: int, segmented_share: float = 0.0,
              every_pair: bool = False, scale_error: float = 1.0,
              camera_share: float = 0.0) -> CropSet:
    """Compound-cell crops, cached like :func:`_generated`. ``every_pair``: few enough
    cells per field that ``count`` crops take every pair of regions (a held-out set)."""
    if count <= 0:
        return concat([], cfg.crop_px)
    per_field = (max(1, math.ceil(count / len(compound_pairs()))) if every_pair
                 else COMPOUND_PER_FIELD)
    extra: dict[str, object] = {"g": segmented_share} if segmented_share else {}
    if every_pair:
        extra["p"] = per_field
    if scale_error > 1.0:
        extra["e"] = scale_error
    if camera_share > 0:
        extra["c"] = camera_share
    path = _cache_path(args, kind, seeds, count, rng_seed, **extra)
    return cached(path, lambda: compound_crops(
        seeds, count, cfg, rng_seed=rng_seed, segmented_share=segmented_share,
        scale_error=scale_error, camera_share=camera_share, max_per_field=per_field,
        progress=lambda r: tqdm(r, desc=f"{kind} fields")))


def _training_data(args: argparse.Namespace, cfg: Hep2CellsConfig) -> CropSet:
    # More metaphases than a real well holds, so the mitosis head sees enough of them.
    sets = [_generated(args, cfg, "train", TRAIN_SEEDS, args.per_class, args.seed,
                       segmented_share=args.segmented_share, scale_error=args.scale_error,
                       camera_share=args.camera_looks,
                       mitotic_fraction=TRAIN_MITOTIC_FRACTION),
            _compound(args, cfg, "compound", COMPOUND_SEEDS, args.compound, args.seed,
                      segmented_share=args.segmented_share, scale_error=args.scale_error,
                      camera_share=args.camera_looks)]
    if args.cells_dir:
        sets.append(folder_crops(Path(args.cells_dir), cfg, args.cells_um_per_px))
    if args.fields_csv:
        sets.append(field_crops(Path(args.fields_csv), args.fields_um_per_px, cfg))
    return concat(sets, cfg.crop_px)


def _init_recipe(path: str) -> object:
    """The training recipe of the run whose weights --init starts from (None: not given)."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))["training"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--init-manifest {path}: no training recipe there ({exc})") from exc


def run(args: argparse.Namespace) -> dict[str, object]:
    """Build data, train, export, quantise, measure, plot; returns the manifest."""
    torch.set_num_threads(args.threads)
    cfg = Hep2CellsConfig()
    if cfg.crop_px != CROP_PX:
        raise ValueError(f"the network takes {CROP_PX} px crops, config says {cfg.crop_px}")
    _init_recipe(args.init_manifest)  # fail before hours of work, not after
    for flag, value in (("--cells-um-per-px", args.cells_um_per_px),
                        ("--fields-um-per-px", args.fields_um_per_px)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{flag} {value}: the scale must be a positive number")
    if not (args.scale_error >= 1.0 and math.isfinite(args.scale_error)):
        raise ValueError(f"--scale-error {args.scale_error}: a factor of 1 (none) or more")
    if not 0.0 <= args.camera_looks <= 1.0:
        raise ValueError(f"--camera-looks {args.camera_looks}: a share of the fields, 0..1")
    if args.head_only and not args.init:
        raise ValueError("--head-only keeps the weights of --init: give --init")
    t0 = time.time()
    train = _training_data(args, cfg)
    val = _generated(args, cfg, "val", VAL_SEEDS, args.val_per_class, args.seed + 1,
                     max_per_field=args.val_per_field)
    calib = _generated(args, cfg, "calib", CALIBRATION_SEEDS, args.calibration_per_class,
                       args.seed + 2)
    val_compound = _compound(args, cfg, "valcompound", VAL_COMPOUND_SEEDS,
                             args.val_compound, args.seed + 1, every_pair=True)
    data_s = time.time() - t0
    if args.data_only:
        print(f"data: {len(train)} training ({int((train.seconds >= 0).sum())} compound), "
              f"{len(val)} + {len(val_compound)} compound held-out, {len(calib)} "
              f"calibration crops in {data_s:.0f} s")
        return {}
    resumed = args.resume and args.checkpoint and Path(args.checkpoint).is_file()
    earlier_s = checkpoint_seconds(Path(args.checkpoint)) if resumed else 0.0
    losses: list[float] = []
    if args.head_only:
        model = initial_model(Path(args.init), args.width)
    else:
        model, losses = train_model(
            train, epochs=args.epochs, batch=args.batch, lr=args.lr, width=args.width,
            seed=args.seed, label_smoothing=args.label_smoothing, steps=args.steps or None,
            time_budget_s=args.time_budget_min * 60.0 if args.time_budget_min else None,
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            resume=args.resume, init=Path(args.init) if args.init else None,
            region_loss=args.region_loss, bf16=args.bf16)
    train_s = earlier_s + time.time() - t0 - data_s
    region_head = fit_region_head(model, train, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "hep2_fp32.onnx")
    quantise(out / "hep2_fp32.onnx", out / "hep2_int8.onnx", calib.crops)
    quantise(out / "hep2_fp32.onnx", out / "hep2_int8_trt.onnx", calib.crops, symmetric=True)
    metrics: dict[str, object] = {}
    for precision in PRECISIONS:
        m, cm = measure(out / f"hep2_{precision}.onnx", val)
        m["compound"] = measure_compound(out / f"hep2_{precision}.onnx", val_compound)
        m["regions"] = measure_regions(out / f"hep2_{precision}.onnx", val, val_compound)
        metrics[precision] = m
        if precision == "int8":
            plot_confusion(cm, Path(args.plots) / "hep2_confusion_int8.png",
                           f"HEp-2 cells, INT8, held-out generated (mean class acc "
                           f"{m['mean_class_accuracy']:.3f})")
    if losses:  # --head-only trains no trunk: the loss plot of the --init run stands
        plot_losses(losses, Path(args.plots) / "hep2_training_loss.png")
    bf16_trunk = args.bf16 and not args.head_only  # --head-only trains no trunk
    recipe = {
        "script": "tools/train_hep2.py",
        "data": f"generated one-pattern fields (tools/synth/hep2_fields.py, seeds from "
                f"{TRAIN_SEEDS.start}, mitotic_fraction {TRAIN_MITOTIC_FRACTION}), whole "
                f"cells, <= 40 per field; {args.segmented_share:g} of the fields cut as the "
                "assay's segmentation finds the cells (labelled by the truth cell matched), "
                "the others with the truth masks perturbed (erode/dilate/shift <= 1 µm); "
                f"plus {args.compound} compound cells (two patterns of different regions in "
                f"one cell, every such pair, seeds from {COMPOUND_SEEDS.start}) taught as "
                f"{COMPOUND_SPLIT:g} / {1 - COMPOUND_SPLIT:g}"
                + (CAMERA_LOOKS_SAID.format(share=args.camera_looks)
                   if args.camera_looks > 0 else ""),
        "scale_error": args.scale_error,
        "camera_looks": args.camera_looks,
        "lab_cells_dir": args.cells_dir, "lab_cells_um_per_px": args.cells_um_per_px,
        "lab_fields_csv": args.fields_csv, "lab_fields_um_per_px": args.fields_um_per_px,
        "train_crops": len(train), "per_class": args.per_class,
        "held_out_crops": len(val), "calibration_crops": len(calib),
        "epochs": round(len(losses) / -(-len(train) // args.batch), 2),
        "steps": len(losses), "batch": args.batch, "lr": args.lr, "width": args.width,
        "pooling": "global mean + global max",
        "seed": args.seed,
        "optimizer": f"AdamW, one-cycle ({WARMUP_STEPS} warm-up steps, cosine to ~0)",
        "loss": f"class-weighted cross-entropy against soft targets (compound cells split "
                f"between their two patterns), label smoothing {args.label_smoothing} "
                f"(pattern) + {MITOSIS_LOSS_WEIGHT:g} x cross-entropy (mitosis)"
                + (f" + {args.region_loss:g} x binary cross-entropy (regions of interphase "
                   "crops; the region head is then refitted on the frozen trunk)"
                   if args.region_loss > 0 and not args.head_only else ""),
        "precision": "bfloat16 autocast forward, float32 weights and losses" if bf16_trunk
                     else "float32",
        "init": args.init or None,
        "head_only": bool(args.head_only),
        "region_head": region_head,
        "init_run": _init_recipe(args.init_manifest),
        "command": "python -m tools.train_hep2 " + " ".join(
            f"--{k} {v}" for k, v in (("per-class", args.per_class), ("compound", args.compound),
                                       ("segmented-share", args.segmented_share),
                                       ("steps", len(losses)),
                                       ("batch", args.batch), ("lr", args.lr),
                                       ("width", args.width), ("seed", args.seed),
                                       ("label-smoothing", args.label_smoothing))
            + ((("init", args.init),) if args.init else ())
            + ((("region-loss", args.region_loss),) if args.region_loss > 0 else ())
            + ((("scale-error", args.scale_error),) if args.scale_error > 1.0 else ())
            + ((("camera-looks", args.camera_looks),) if args.camera_looks > 0 else ()))
            + (" --bf16" if bf16_trunk else "")
            + (" --head-only" if args.head_only else ""),
        "augmentation": "rot90, flip, gamma 0.8..1.25 on the signal",
        "torch": torch.__version__, "data_seconds": round(data_s),
        "train_seconds": round(train_s),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "training_fit_fp32": training_fit(out / "hep2_fp32.onnx", train, seed=args.seed),
    }
    manifest = build_manifest(out, recipe, metrics, cfg, name=args.name)
    write_manifest(out, manifest)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="models/hep2")
    ap.add_argument("--name", default=MODEL_NAME, help="model name in the manifest")
    ap.add_argument("--plots", default="docs/img")
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--val-per-class", type=int, default=150)
    ap.add_argument("--val-per-field", type=int, default=40)
    ap.add_argument("--calibration-per-class", type=int, default=20)
    ap.add_argument("--segmented-share", type=float, default=0.5,
                    help="share of generated training fields cut by the assay's own "
                         "segmentation (the rest: perturbed truth masks)")
    ap.add_argument("--compound", type=int, default=2000,
                    help="compound training cells (two patterns of different regions)")
    ap.add_argument("--val-compound", type=int, default=600,
                    help="held-out compound cells (both patterns named?)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="",
                    help="folder for generated crop sets (.npz), e.g. build/hep2_cache")
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=0,
                    help="optimiser steps (overrides --epochs; 0: use --epochs)")
    ap.add_argument("--time-budget-min", type=float, default=0.0,
                    help="fit the training length to this many minutes (0: off); the "
                         "manifest records the steps run, which --steps reproduces")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast forward (about 2x faster on an AVX-512 BF16 CPU)")
    ap.add_argument("--checkpoint", default="build/hep2_train.pt",
                    help="torch checkpoint written at each epoch end ('' : none)")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ap.add_argument("--init", default="",
                    help="start from this checkpoint's weights (fresh optimiser and schedule)")
    ap.add_argument("--init-manifest", default="",
                    help="manifest of the --init run: its recipe is kept in the new manifest")
    ap.add_argument("--region-loss", type=float, default=0.0,
                    help="weight of the region loss while training the trunk (0: the "
                         "region head is only fitted afterwards, on the frozen trunk)")
    ap.add_argument("--head-only", action="store_true",
                    help="keep the --init weights as they are and fit the region head only")
    ap.add_argument("--data-only", action="store_true",
                    help="build (and cache) the crop sets, then stop")
    ap.add_argument("--scale-error", type=float, default=1.0,
                    help="> 1: half the generated training fields are cut at a scale off by "
                         "up to this factor either way (log-uniform), as an estimated "
                         "scale would be, so the classifier holds when the objective is "
                         "not declared (held-out crops stay exact)")
    ap.add_argument("--camera-looks", type=float, default=0.0,
                    help="share of the generated training fields (one-pattern and compound) "
                         "seen through a randomly drawn real camera first: colour mosaic or "
                         "monochrome, read noise, tone curve, MJPG (tools/synth/"
                         "camera_looks.py; python -m tools.stress_hep2 measures each). "
                         "Held-out and calibration crops stay as drawn")
    ap.add_argument("--cells-dir", default="", help="a lab's DIR/<class>/*.png cell crops")
    ap.add_argument("--cells-um-per-px", type=float, default=None,
                    help="the scale of the --cells-dir images (µm per pixel): they are then "
                         "cut at their true size, as the box cuts them with the same scale")
    ap.add_argument("--fields-csv", default="", help="a lab's file,pattern[,pattern2] CSV")
    ap.add_argument("--fields-um-per-px", type=float, default=None,
                    help="pixel size of the lab's fields (µm at the specimen); default: "
                         "estimated field by field from the cells' size alone (the box "
                         "also checks it with its classifier): give it where it is known")
    manifest = run(ap.parse_args())
    if not manifest:
        return
    for precision, m in manifest["metrics"].items():  # type: ignore[attr-defined]
        print(f"{precision}: mean class accuracy {m['mean_class_accuracy']}, "
              f"mitosis {m['mitosis_mean_class_accuracy']}, compound both named "
              f"{m['compound'].get('both_named')}, {m['cells_per_s_2_threads']} cells/s")


if __name__ == "__main__":
    main()
