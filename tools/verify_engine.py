"""Run the same generated fields through TensorRT and ONNX Runtime and compare (on a device).

    python -m tools.verify_engine [--config FILE] [--fields 40] [--min-field-agreement 0.95]

For every held-out generated field, the working-scale picture goes through both
backends: the tool prints the largest and mean absolute logit difference, the share
of pixels whose class (argmax) agrees, and whether the field scores agree. The exit
status is 1 when the field scores agree on fewer than ``--min-field-agreement`` of
the scored fields, 2 when a backend cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldResult
from appliance.capture.frame import Frame
from appliance.config import Config, ConfigError, load_config
from appliance.inference.manifest import ModelError, load_manifest, verify_model
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend
from appliance.inference.tensorrt_backend import tensorrt_backend_for
from tools.eval_her2 import held_out_specs
from tools.synth.her2_fields import generate_field


@dataclass(frozen=True)
class LogitComparison:
    """How far one field's TensorRT logits are from ONNX Runtime's."""

    max_abs: float
    mean_abs: float
    pixel_agreement: float  # share of pixels with the same arg-max class


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitComparison:
    """Compare two (K, H, W) logit maps of the same shape."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    same = reference.argmax(axis=0) == candidate.argmax(axis=0)
    return LogitComparison(float(diff.max()), float(diff.mean()), float(same.mean()))


def score_label(result: FieldResult) -> str:
    """A field's outcome as one word: its score, or the refusal code."""
    if result.score is not None:
        return result.score.value
    return f"not scorable ({result.reason_code})"


def field_agreement(pairs: Sequence[tuple[str, str]]) -> float:
    """Share of (reference, candidate) outcomes that are equal; 1.0 for none."""
    if not pairs:
        return 1.0
    return sum(a == b for a, b in pairs) / len(pairs)


def load_assays(cfg: Config) -> tuple[Her2Assay, Her2Assay]:
    """The same model and config behind ONNX Runtime and behind TensorRT."""
    precision = cfg.inference.precision
    manifest = load_manifest(cfg.models_path() / cfg.assay)
    path = verify_model(manifest, precision)
    ort = OnnxRuntimeBackend(path, threads=cfg.inference.threads, input_name=manifest.input.name)
    trt = tensorrt_backend_for(cfg, manifest, precision, path)
    return Her2Assay(cfg, manifest, ort, precision), Her2Assay(cfg, manifest, trt, precision)


def compare_field(reference: Her2Assay, candidate: Her2Assay,
                  frame: Frame) -> tuple[LogitComparison, str, str] | None:
    """Both backends on one field; None when a quality gate refused it before the model."""
    # Each assay prepares its own copy: finish() records its timings in the prepared field.
    prep_ref, prep_cand = reference.prepare(frame), candidate.prepare(frame)
    if prep_ref.refusal is not None:
        return None
    logits_ref, logits_cand = reference.infer(prep_ref), candidate.infer(prep_cand)
    comparison = compare_logits(logits_ref, logits_cand)
    ref = score_label(reference.finish(prep_ref, logits_ref))
    cand = score_label(candidate.finish(prep_cand, logits_cand))
    return comparison, ref, cand


def main(argv: Sequence[str] | None = None) -> int:
    """Compare the backends on ``--fields`` generated fields and print the differences."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--fields", type=int, default=40)
    ap.add_argument("--min-field-agreement", type=float, default=0.95)
    args = ap.parse_args(argv)
    try:
        reference, candidate = load_assays(load_config(args.config))
    except (ConfigError, ModelError) as exc:
        print(f"verify_engine: {exc}", file=sys.stderr)
        return 2
    outcomes: list[tuple[str, str]] = []
    comparisons: list[LogitComparison] = []
    with reference, candidate:
        for i, spec in enumerate(held_out_specs(args.fields)):
            truth = generate_field(spec)
            frame = Frame(image=truth.image, seq=i, timestamp=0.0, source=f"seed{spec.seed}",
                          um_per_px=truth.um_per_px)
            row = compare_field(reference, candidate, frame)
            if row is None:
                print(f"seed {spec.seed}: refused before the model")
                continue
            comparison, ref, cand = row
            comparisons.append(comparison)
            outcomes.append((ref, cand))
            print(f"seed {spec.seed}: max |d| {comparison.max_abs:.4f}  mean |d| "
                  f"{comparison.mean_abs:.5f}  pixels agree {comparison.pixel_agreement:.4f}  "
                  f"onnxruntime {ref} / tensorrt {cand}")
    if not comparisons:
        print("no field reached the model", file=sys.stderr)
        return 1
    agreement = field_agreement(outcomes)
    print(f"fields {len(comparisons)}: max |d| {max(c.max_abs for c in comparisons):.4f}, "
          f"mean |d| {np.mean([c.mean_abs for c in comparisons]):.5f}, pixel agreement "
          f"{np.mean([c.pixel_agreement for c in comparisons]):.4f}, field score agreement "
          f"{agreement:.3f}")
    return 0 if agreement >= args.min_field_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
