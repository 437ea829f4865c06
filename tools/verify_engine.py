"""Run the same generated fields through TensorRT and ONNX Runtime and compare (on a device).

    python -m tools.verify_engine [--config FILE] [--assay her2|hep2] [--fields 40]
                                  [--min-field-agreement 0.95]

Both backends run the same model file, the one TensorRT builds from (``int8_trt`` for
precision int8), so the differences are TensorRT's alone. HER2: for every held-out
generated field, the working-scale picture goes through both; the tool prints the largest
and mean absolute logit difference, the share of pixels whose class (argmax) agrees,
and whether the field scores agree. HEp-2: the crops of every held-out generated field
go through both; per head (pattern, mitosis) the largest logit difference and the
share of cells whose class agrees, and whether the specimen calls agree. The exit
status is 1 when the field outcomes agree on fewer than ``--min-field-agreement`` of
the fields that reached the model, 2 when a backend cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from appliance.assays.hep2.assay import REGION_LOGITS, Hep2Assay
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldResult
from appliance.capture.frame import Frame
from appliance.config import Config, ConfigError, load_config, with_overrides
from appliance.inference.manifest import ModelError, load_manifest, verify_model
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend
from appliance.inference.tensorrt_backend import tensorrt_backend_for
from tools.build_engine import engine_precision
from tools.eval_her2 import held_out_specs
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.synth.her2_fields import generate_field

HEP2_FIRST_SEED = 500_000  # held out: HEp-2 training uses seeds from 700000


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


def compare_cell_logits(reference: dict[str, np.ndarray],
                        candidate: dict[str, np.ndarray]) -> dict[str, LogitComparison]:
    """Per head, two (N, K) cell logit arrays compared; the agreement is per cell: the same
    class, or for the region head (independent yes / no logits) the same regions stained."""
    if sorted(reference) != sorted(candidate):
        raise ValueError(f"heads differ: {sorted(reference)} vs {sorted(candidate)}")
    out = {name: compare_logits(reference[name].T, candidate[name].T) for name in reference}
    if REGION_LOGITS in reference:
        ref, cand = reference[REGION_LOGITS], candidate[REGION_LOGITS]
        same = ((ref > 0) == (cand > 0)).all(axis=1)
        out[REGION_LOGITS] = replace(out[REGION_LOGITS],
                                     pixel_agreement=float(same.mean()) if len(same) else 1.0)
    return out


def hep2_label(result: Hep2Result) -> str:
    """A HEp-2 field's outcome in words: negative, positive with its ICAP codes, or refused."""
    if result.positive is None:
        return f"not scorable ({result.reason_code})"
    if not result.positive:
        return "negative"
    return " ".join(["positive", *(p.icap for p in result.patterns)])


def load_assays(cfg: Config) -> tuple[Her2Assay, Her2Assay]:
    """The same model file and config behind ONNX Runtime and behind TensorRT."""
    precision = engine_precision(cfg.inference.precision)
    manifest = load_manifest(cfg.models_path() / "her2")
    path = verify_model(manifest, precision)
    ort = OnnxRuntimeBackend(path, threads=cfg.inference.threads, input_name=manifest.input.name)
    trt = tensorrt_backend_for(cfg, manifest, precision, path)
    return Her2Assay(cfg, manifest, ort, precision), Her2Assay(cfg, manifest, trt, precision)


def load_hep2_assays(cfg: Config) -> tuple[Hep2Assay, Hep2Assay]:
    """The HEp-2 assay on ONNX Runtime and on TensorRT (as the box loads it), one model file."""
    candidate = Hep2Assay.from_config(with_overrides(cfg, {"inference.backend": "tensorrt"}))
    try:
        manifest, precision = candidate.manifest, candidate.model.precision
        side = cfg.hep2.cells.crop_px
        ort = OnnxRuntimeBackend(verify_model(manifest, precision),
                                 threads=cfg.inference.threads, input_name=manifest.input.name,
                                 warmup_input=(1, 2, side, side))
    except BaseException:
        candidate.close()
        raise
    return Hep2Assay(cfg, manifest, ort, precision), candidate


def compare_hep2_field(reference: Hep2Assay, candidate: Hep2Assay, frame: Frame
                       ) -> tuple[int, dict[str, LogitComparison], str, str] | None:
    """Both backends on one field's crops: (cells, per-head comparison, outcomes); None
    when a quality gate refused the field or no cell was found."""
    prep_ref, prep_cand = reference.prepare(frame), candidate.prepare(frame)
    if prep_ref.refusal is not None or prep_ref.crops is None or not len(prep_ref.crops):
        return None
    out_ref, out_cand = reference.infer(prep_ref), candidate.infer(prep_cand)
    heads = compare_cell_logits(out_ref, out_cand)
    ref = hep2_label(reference.finish(prep_ref, out_ref))
    cand = hep2_label(candidate.finish(prep_cand, out_cand))
    return len(prep_ref.crops), heads, ref, cand


def verify_hep2(cfg: Config, fields: int) -> list[tuple[str, str]] | None:
    """Compare the backends on ``fields`` generated HEp-2 fields; the outcome pairs."""
    reference, candidate = load_hep2_assays(cfg)
    outcomes: list[tuple[str, str]] = []
    worst: dict[str, float] = {}
    with reference, candidate:
        for i in range(fields):
            spec = Hep2FieldSpec(seed=HEP2_FIRST_SEED + i)
            truth = generate_hep2_field(spec)
            frame = Frame(image=truth.image, seq=i, timestamp=0.0, source=f"seed{spec.seed}",
                          um_per_px=truth.um_per_px)
            row = compare_hep2_field(reference, candidate, frame)
            if row is None:
                print(f"seed {spec.seed}: no cell reached the model")
                continue
            cells, heads, ref, cand = row
            outcomes.append((ref, cand))
            for name, c in heads.items():
                worst[name] = max(worst.get(name, 0.0), c.max_abs)
            figures = "  ".join(f"{name} max |d| {c.max_abs:.4f} cells agree "
                                f"{c.pixel_agreement:.4f}" for name, c in heads.items())
            print(f"seed {spec.seed}: {cells} cells  {figures}  onnxruntime {ref} / "
                  f"tensorrt {cand}")
    if not outcomes:
        return None
    print(f"fields {len(outcomes)}: " + ", ".join(f"{n} max |d| {v:.4f}"
                                                  for n, v in worst.items()))
    return outcomes


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


def verify_her2(cfg: Config, fields: int) -> list[tuple[str, str]] | None:
    """Compare the backends on ``fields`` held-out HER2 fields; the outcome pairs."""
    reference, candidate = load_assays(cfg)
    outcomes: list[tuple[str, str]] = []
    comparisons: list[LogitComparison] = []
    with reference, candidate:
        for i, spec in enumerate(held_out_specs(fields)):
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
        return None
    print(f"fields {len(comparisons)}: max |d| {max(c.max_abs for c in comparisons):.4f}, "
          f"mean |d| {np.mean([c.mean_abs for c in comparisons]):.5f}, pixel agreement "
          f"{np.mean([c.pixel_agreement for c in comparisons]):.4f}")
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Compare the backends on ``--fields`` generated fields and print the differences."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--assay", default=None, choices=("her2", "hep2"),
                    help="default: the config's assay")
    ap.add_argument("--fields", type=int, default=40)
    ap.add_argument("--min-field-agreement", type=float, default=0.95)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        verify = verify_hep2 if (args.assay or cfg.assay) == "hep2" else verify_her2
        pairs = verify(cfg, args.fields)
    except (ConfigError, ModelError) as exc:
        print(f"verify_engine: {exc}", file=sys.stderr)
        return 2
    if pairs is None:
        print("no field reached the model", file=sys.stderr)
        return 1
    agreement = field_agreement(pairs)
    print(f"field / specimen call agreement {agreement:.3f}")
    return 0 if agreement >= args.min_field_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
