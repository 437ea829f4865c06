"""INT8 Q/DQ quantisation of the FP32 ONNX model, calibrated on generated fields.

    python -m tools.quantise_model --fp32 build/her2/her2_fp32.onnx --out build/her2/her2_int8.onnx

`quant_pre_process` first, then static QDQ quantisation with per-channel unsigned
8-bit weights and unsigned 8-bit activations (U8U8).

Why unsigned weights. With signed 8-bit weights (U8S8, ONNX Runtime's fastest x86
path) an x86 CPU without VNNI (AVX2 only, as on many small boxes and on some of our CI
machines) multiplies activations by weights with an instruction that adds each pair of
products into a signed 16-bit sum and saturates it: a pair of bright pixels and large
weights (255 x 127 x 2 = 64,770) overflows it. The HER2 model lost 12 points of cell
recall that way on an AVX2 machine while it scored as FP32 on a VNNI one (README.md,
"INT8 on CPUs without VNNI"). ONNX Runtime runs U8U8 in a widening kernel that cannot
saturate, on every CPU (its own optimisation ``session.x64quantprecision`` switches
U8S8 to U8U8 for this reason, ONNX Runtime PR 12088). The other cure, 7-bit signed
weights (``reduce_range``), was measured too and lost resolution: the HEp-2 model then
called a monochrome red-counterstained negative field positive, where FP32 and U8U8
refuse it. U8U8 is slower than U8S8 on a VNNI CPU; the box's speeds are in the benchmarks.

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

    The one set of quantisation settings of every model: per-channel unsigned weights and
    unsigned activations for the CPU; ``symmetric``: the TensorRT variant (signed, zero
    point 0).
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
            # Unsigned weights for the CPU (see above); TensorRT wants signed symmetric
            # ones and sums in 32 bits.
            weight_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
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
