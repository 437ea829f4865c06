"""INT8 Q/DQ quantisation of the FP32 ONNX model, calibrated on generated fields.

    python -m tools.quantise_model --fp32 build/her2/her2_fp32.onnx --out build/her2/her2_int8.onnx

`quant_pre_process` first, then static QDQ quantisation with per-channel signed
8-bit weights and unsigned 8-bit activations (what pays on this CPU, see
shared/reference/performance-notes.md).
On an x86 CPU without VNNI these U8S8 products saturate in ONNX Runtime's fast
kernel; the box's backend asks for exact ones there (``session.x64quantprecision``,
appliance/inference/onnxruntime_backend.py), so the files need no change for it.

``--symmetric`` writes the TensorRT variant instead: signed 8-bit activations and
weights, both symmetric (zero point 0). TensorRT's explicit quantisation accepts
only that, so the Jetson builds its INT8 engine from this file, never from the
CPU one (whose activations have non-zero zero points).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from appliance.inference.backend import to_model_input
from appliance.inference.manifest import InputSpec
from tools.her2_dataset import CALIBRATION_SEEDS, make_samples
from tools.her2_net import INPUT_SPEC


class FieldReader(CalibrationDataReader):
    """Feeds whole generated fields at working scale, padded to the model's multiple."""

    def __init__(self, inputs: list[np.ndarray], name: str) -> None:
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def calibration_inputs(count: int, spec: InputSpec) -> list[np.ndarray]:
    """Model inputs from ``count`` calibration fields (seeds never used for training)."""
    samples = make_samples(list(CALIBRATION_SEEDS[:count]), vary_scale=True,
                           desc="calibration fields")
    out = []
    for s in samples:
        h, w = s.image.shape[:2]
        m = spec.multiple_of
        img = np.pad(s.image, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")
        out.append(to_model_input(img, spec))
    return out


def quantise_qdq(fp32: Path, out: Path, inputs: list[np.ndarray], input_name: str, *,
                 symmetric: bool = False) -> None:
    """Write the INT8 Q/DQ copy of ``fp32`` to ``out``, calibrated (MinMax) on ``inputs``.

    The one set of quantisation settings of every model: per-channel signed weights and
    unsigned activations for the CPU; ``symmetric``: the TensorRT variant (zero point 0).
    """
    fp32, out = fp32.resolve(), out.resolve()
    # Both ONNX Runtime steps leave scratch files in the working directory: keep them in tmp.
    with tempfile.TemporaryDirectory() as tmp, _in_directory(Path(tmp)):
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference cannot follow HER2's dynamic Resize; ONNX's can.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), FieldReader(inputs, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}
            if symmetric else {},
        )


@contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    """Work in ``path`` for a while (contextlib.chdir is Python 3.11+; we support 3.10)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantise(fp32: Path, out: Path, spec: InputSpec, *, fields: int = 48,
             symmetric: bool = False) -> None:
    """Write the HER2 INT8 Q/DQ model, calibrated on ``fields`` generated fields
    (``symmetric``: the TensorRT variant)."""
    quantise_qdq(fp32, out, calibration_inputs(fields, spec), spec.name, symmetric=symmetric)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fp32", type=Path, default=Path("build/her2/her2_fp32.onnx"))
    ap.add_argument("--out", type=Path, default=Path("build/her2/her2_int8.onnx"))
    ap.add_argument("--fields", type=int, default=48)
    ap.add_argument("--symmetric", action="store_true",
                    help="TensorRT variant: signed, symmetric activations and weights")
    args = ap.parse_args()
    quantise(args.fp32, args.out, INPUT_SPEC, fields=args.fields, symmetric=args.symmetric)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
