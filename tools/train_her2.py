"""Train the HER2 segmentation network on generated fields and export it to ONNX.

    python -m tools.train_her2 --out build/her2 [--fields 600] [--steps 2500]

Writes build/her2/her2_fp32.onnx, a training-curve plot and recipe.json (the
recipe that goes into the model manifest). Quantisation, evaluation and the
manifest are separate steps (tools/quantise_model.py, tools/eval_her2.py,
tools/publish_model.py); `make model` runs them all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from appliance.inference.backend import to_model_input
from tools.her2_dataset import TRAIN_SEEDS, make_samples, random_crops
from tools.her2_net import CLASSES, INPUT_SPEC, OUTPUT_STRIDE, Her2Net
from tools.numbers import save_chart

# Nuclei and membranes are a small part of each field; weight them up.
CLASS_WEIGHTS = (1.0, 2.0, 2.0, 3.0)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float tensor, normalised by the runtime's own code."""
    return torch.from_numpy(np.concatenate([to_model_input(img, INPUT_SPEC) for img in images]))


def colour_jitter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild per-image gain/gamma jitter on top of the generator's own stain variation."""
    out = images.astype(np.float32) / 255.0
    for i in range(len(out)):
        gain = rng.uniform(0.85, 1.1, size=3).astype(np.float32)
        gamma = np.float32(rng.uniform(0.8, 1.25))
        out[i] = np.clip(out[i] * gain, 0, 1) ** gamma
    return (out * 255.0 + 0.5).astype(np.uint8)


def train(args: argparse.Namespace) -> dict[str, object]:
    """Train and export; returns the recipe dictionary."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    seeds = list(TRAIN_SEEDS[: args.fields])
    samples = make_samples(seeds, vary_scale=True, workers=args.threads, desc="training fields")
    model = Her2Net(width=args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.1)
    weights = torch.tensor(CLASS_WEIGHTS)
    batches = random_crops(samples, args.crop, args.batch, rng)
    losses: list[float] = []
    start = time.time()
    model.train()
    for _step in (bar := tqdm(range(args.steps), desc="training")):
        imgs, labs = next(batches)
        x = to_tensor(colour_jitter(imgs, rng))
        y = torch.from_numpy(labs.astype(np.int64))
        logits = F.interpolate(model(x), scale_factor=OUTPUT_STRIDE, mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "her2_fp32.onnx")
    plot_losses(losses, out / "training_loss.png")
    recipe = {
        "script": "tools/train_her2.py",
        "data": f"generated fields tools/synth/her2_fields.py, seeds {seeds[0]}..{seeds[-1]}",
        "fields": len(seeds), "steps": args.steps, "batch": args.batch, "crop": args.crop,
        "lr": args.lr, "width": args.width, "seed": args.seed, "optimizer": "AdamW, one-cycle",
        "loss": f"weighted cross-entropy {CLASS_WEIGHTS}", "torch": torch.__version__,
        "train_seconds": round(time.time() - start), "final_loss": float(np.mean(losses[-100:])),
        "mean": INPUT_SPEC.mean, "std": INPUT_SPEC.std,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return recipe


def export_onnx(model: Her2Net, path: Path) -> None:
    """Export with dynamic height and width (the runtime pads to a multiple of 8)."""
    model.eval()
    dummy = torch.zeros(1, 3, 256, 256)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                      "logits": {0: "batch", 2: "out_height", 3: "out_width"}},
        opset_version=17, dynamo=False,
    )


def plot_losses(losses: list[float], path: Path) -> None:
    """Training curve (smoothed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 25
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) > k else losses
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title("HER2 segmentation training")
    save_chart(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="build/her2")
    ap.add_argument("--fields", type=int, default=600)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    recipe = train(ap.parse_args())
    print(json.dumps(recipe, indent=2))


if __name__ == "__main__":
    assert len(CLASSES) == 4
    main()
