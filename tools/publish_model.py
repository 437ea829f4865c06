"""Copy a trained model into models/her2/ and write its manifest.

    python -m tools.publish_model --build build/her2 --eval build/eval

The manifest carries what a reviewer needs: sha256 of each file, the input
and its normalisation, the outputs, the training recipe and seed, measured
metrics (tools/eval_her2.py) and, plainly, what the model was validated on.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import date
from pathlib import Path

from appliance.inference.manifest import file_sha256
from tools.her2_net import CLASSES, INPUT_SPEC, OUTPUT_STRIDE

VALIDATED_ON = (
    "generated data only (tools/synth/her2_fields.py held-out seeds); "
    "not validated on real tissue - research use only"
)


# fp32 and int8 run on the CPU; int8_trt is what a Jetson builds its TensorRT engine from.
PRECISIONS = ("fp32", "int8", "int8_trt")


def build_manifest(directory: Path, recipe: dict[str, object],
                   metrics: dict[str, object]) -> dict[str, object]:
    """The manifest dictionary for the model files in ``directory``."""
    files = {}
    for precision in PRECISIONS:
        name = f"her2_{precision}.onnx"
        path = directory / name
        files[precision] = {"path": name, "sha256": file_sha256(path),
                            "bytes": path.stat().st_size}
    return {
        "name": "her2-seg-v1",
        "assay": "her2",
        "created": date.today().isoformat(),
        "task": "semantic segmentation of brightfield HER2 IHC fields at working scale",
        "files": files,
        "input": {
            "name": "image", "layout": "NCHW", "dtype": "float32", "channels": "RGB",
            "normalisation": "(rgb / 255 - mean) / std",
            "mean": list(INPUT_SPEC.mean), "std": list(INPUT_SPEC.std),
            "multiple_of": INPUT_SPEC.multiple_of,
            "um_per_px_range": list(INPUT_SPEC.um_per_px_range),
            "note": "the runtime resamples every field into this band of µm per pixel",
        },
        "output": {
            "name": "logits", "classes": list(CLASSES), "stride": OUTPUT_STRIDE,
            "note": "class logits at 1/2 resolution; upsampled bilinearly by the runtime",
        },
        "quantisation": {
            "format": "QDQ", "tool": "onnxruntime.quantization.quantize_static",
            "weights": "int8 per-channel", "activations": "uint8 per-tensor",
            "calibration": "MinMax on 48 generated fields (seeds 500000+)",
            "int8_trt": {
                "what": "the TensorRT variant: Q/DQ with signed, symmetric (zero point 0) 8-bit "
                        "activations and per-channel symmetric weights, which TensorRT's "
                        "explicit quantisation requires; calibrated on the same 48 generated "
                        "fields (MinMax)",
                "command": "python -m tools.quantise_model --fp32 models/her2/her2_fp32.onnx "
                           "--out models/her2/her2_int8_trt.onnx --symmetric",
            },
        },
        "training": recipe,
        "metrics": metrics,
        "validated_on": VALIDATED_ON,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", type=Path, default=Path("build/her2"))
    ap.add_argument("--eval", type=Path, default=Path("build/eval"))
    ap.add_argument("--dest", type=Path, default=Path("models/her2"))
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for precision in PRECISIONS:
        name = f"her2_{precision}.onnx"
        shutil.copyfile(args.build / name, args.dest / name)
    recipe = json.loads((args.build / "recipe.json").read_text())
    metrics: dict[str, object] = {
        p.stem.removeprefix("metrics_"): {k: v for k, v in json.loads(p.read_text()).items()
                                          if not isinstance(v, list)}
        for p in sorted(args.eval.glob("metrics_*.json"))}
    manifest = build_manifest(args.dest, recipe, metrics)
    (args.dest / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False)
                                             + "\n")
    print(f"published {args.dest}: " + ", ".join(
        f"{k} {v['bytes'] / 1e3:.0f} kB" for k, v in manifest["files"].items()))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
