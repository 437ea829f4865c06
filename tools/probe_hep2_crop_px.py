"""Would a finer cell crop help the fine-detail HEp-2 subtypes? A small, paired experiment.

    python -m tools.probe_hep2_crop_px [--um-per-px 0.25 0.5] [--fields 280] [--steps 2000]
                                       [--crop-px 64 96] [--json build/probe/crop_px.json]

The shipped crop is ``crop_px`` 64 over ``crop_um`` 32 µm: 0.5 µm per pixel, so what a 40x
objective resolves beyond that is thrown away. Changing it means a new model contract
(manifest input shape) and a slower classifier, so it is worth measuring first.

Every cell of the generated fields is cut once per crop size from the same perturbed mask,
a small network (width 16) is trained for the same number of steps on each size, and
both are measured on held-out fields. Only the classes that differ in sub-micrometre
detail (``CLASSES``) are drawn, at the scales given (default 40x to 20x), so the
experiment is about resolution and fits in about 20 minutes on 2 cores. Prints the
held-out and training mean class accuracy of each size and writes a per-class chart.
Seeds 810000+ (training) and 820000+ (held out) are used by nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from appliance.assays.hep2.crops import cell_crop
from appliance.assays.hep2.patterns import NAMES
from appliance.config import Hep2CellsConfig
from tools.hep2_dataset import CropSet, perturb_mask
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.train_hep2 import confusion, mean_class_accuracy, train_model

# The subtypes told apart by detail below a micrometre (ICAP expert level).
CLASSES = ("dense_fine_speckled", "fine_speckled", "multiple_nuclear_dots",
           "few_nuclear_dots", "nucleolar_homogeneous", "nucleolar_clumpy",
           "nucleolar_punctate")
TRAIN_SEED = 810_000
HELD_SEED = 820_000
CELLS_PER_FIELD = 25
WIDTH = 16


def paired_crops(first_seed: int, fields: int, crop_sizes: Sequence[int],
                 um_range: tuple[float, float], rng: np.random.Generator,
                 classes: Sequence[str] = CLASSES, show: bool = True) -> dict[int, CropSet]:
    """Interphase crops of one-pattern fields, each cell cut at every size in ``crop_sizes``
    from the same perturbed mask (field ``i`` shows ``classes[i % len(classes)]`` at a scale
    log-uniform in ``um_range``)."""
    cfgs = {px: dataclasses.replace(Hep2CellsConfig(), crop_px=px) for px in crop_sizes}
    crops: dict[int, list[np.ndarray]] = {px: [] for px in crop_sizes}
    labels: list[int] = []
    lo, hi = math.log(um_range[0]), math.log(um_range[1])
    for i in tqdm(range(fields), desc=f"fields from seed {first_seed}", disable=not show):
        name = classes[i % len(classes)]
        um = float(math.exp(rng.uniform(lo, hi)))
        field = generate_hep2_field(Hep2FieldSpec(seed=first_seed + i, patterns=((name, 1.0),),
                                                  um_per_px=um, mitotic_fraction=0.0))
        green = field.image[..., 1].astype(np.float32)
        cells = [c for c in field.cells if not c.touches_edge and not c.mitotic]
        for k in rng.permutation(len(cells))[:CELLS_PER_FIELD]:
            mask = perturb_mask(field.cell_labels == cells[k].cell_id, um, rng)
            ys, xs = np.nonzero(mask)
            centre = (float(xs.mean()), float(ys.mean()))
            for px in crop_sizes:
                crops[px].append(cell_crop(green, mask, centre, um, cfgs[px]))
            labels.append(NAMES.index(name))
    y = np.array(labels, np.int64)
    return {px: CropSet(np.stack(crops[px]).astype(np.float32), y, np.zeros(len(y), np.int64),
                        np.ones(len(y), np.float32)) for px in crop_sizes}


def predict(model: torch.nn.Module, crops: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Class indices (into NAMES) of ``crops``, the argmax taken over ``classes`` only."""
    allowed = np.array([NAMES.index(c) for c in classes])
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), 256):
            logits = model(torch.from_numpy(crops[i:i + 256]))[0].numpy()
            out.append(allowed[logits[:, allowed].argmax(axis=1)])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def figures(truth: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, object]:
    """Mean class accuracy and per-class recall of one crop size."""
    cm = confusion(truth, pred, len(NAMES))
    return {"mean_class_accuracy": round(mean_class_accuracy(cm), 4),
            "recall": {c: round(float(cm[NAMES.index(c), NAMES.index(c)]
                                      / max(1, cm[NAMES.index(c)].sum())), 4)
                       for c in classes}}


def plot(results: dict[int, dict[str, object]], classes: Sequence[str], path: Path) -> None:
    """Held-out recall per class, one bar per crop size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    step = 0.8 / max(1, len(results))
    for k, (px, res) in enumerate(results.items()):
        held = res["held_out"]
        assert isinstance(held, dict)
        recall = held["recall"]
        ax.bar(np.arange(len(classes)) + k * step, [recall[c] for c in classes], step,
               label=f"{px} px (MCA {held['mean_class_accuracy']:.3f})")
    ax.set_xticks(np.arange(len(classes)) + 0.4 - step / 2)
    ax.set_xticklabels([c.replace("_", "\n") for c in classes], fontsize=7)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("held-out recall")
    ax.set_title(f"Cell crop over {Hep2CellsConfig().crop_um:g} µm: finer sampling "
                 "(same cells, same training steps)")
    ax.legend()
    save_chart(fig, path, dpi=110)
    print(f"chart: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--um-per-px", type=float, nargs=2, default=(0.25, 0.5),
                    metavar=("LO", "HI"), help="scale range of the fields (default 40x..20x)")
    ap.add_argument("--fields", type=int, default=280, help="training fields (held out: a third)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--crop-px", type=int, nargs="+", default=(64, 96))
    ap.add_argument("--json", type=Path, default=Path("build/probe/crop_px.json"))
    args = ap.parse_args(argv)
    lo, hi = args.um_per_px
    if not 0.1 <= lo <= hi <= 3.0:
        ap.error(f"--um-per-px must be 0.1 <= LO <= HI <= 3, got {lo} {hi}")
    if args.fields < len(CLASSES) or args.steps < 1 or min(args.crop_px) < 16:
        ap.error(f"need --fields >= {len(CLASSES)}, --steps >= 1 and --crop-px >= 16")
    rng = np.random.default_rng(0)
    train = paired_crops(TRAIN_SEED, args.fields, args.crop_px, (lo, hi), rng)
    held = paired_crops(HELD_SEED, max(len(CLASSES), args.fields // 3), args.crop_px,
                        (lo, hi), rng)
    fit_rows = np.arange(min(3000, len(train[args.crop_px[0]])))
    results: dict[int, dict[str, object]] = {}
    for px in args.crop_px:
        start = time.perf_counter()
        model, _ = train_model(train[px], epochs=1, steps=args.steps, batch=64, width=WIDTH)
        seconds = time.perf_counter() - start
        results[px] = {
            "held_out": figures(held[px].pattern, predict(model, held[px].crops, CLASSES),
                                CLASSES),
            "training_fit": figures(train[px].pattern[fit_rows],
                                    predict(model, train[px].crops[fit_rows], CLASSES),
                                    CLASSES)["mean_class_accuracy"],
            "train_seconds": round(seconds, 1),
        }
        held_mca = results[px]["held_out"]["mean_class_accuracy"]  # type: ignore[index]
        print(f"{px:>4} px: held-out MCA {held_mca:.4f}, training fit "
              f"{results[px]['training_fit']:.4f}, {seconds:.0f} s of training")
    write_numbers(args.json, {
        "run": {"um_per_px": [lo, hi], "fields": args.fields, "steps": args.steps,
                "width": WIDTH, "crop_um": Hep2CellsConfig().crop_um,
                "train_crops": len(train[args.crop_px[0]]),
                "held_out_crops": len(held[args.crop_px[0]]), "classes": list(CLASSES)},
        "by_crop_px": {str(px): r for px, r in results.items()}})
    plot(results, CLASSES, args.json.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
