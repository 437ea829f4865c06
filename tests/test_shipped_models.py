"""The shipped INT8 files are quantised to give the same answer on every CPU.

ONNX Runtime multiplies a CPU INT8 model's unsigned 8-bit activations by its weights.
With signed 8-bit weights, an x86 CPU without VNNI (AVX2) adds each pair of products in
a saturating 16-bit sum, which they overflow: the HER2 model lost 12 points of cell
recall on such a machine while it scored as FP32 on a VNNI one. Unsigned weights (U8U8)
go through a kernel that cannot saturate, and signed weights within 7 bits cannot
overflow the sum (tools/quantise_model.py). This checks the files, not a machine: the
accuracy tests only fail on the kind of CPU that shows the fault; this one on every CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from appliance.config import Config
from appliance.inference.manifest import load_manifest, verify_model

MODELS = Config().models_path()
WEIGHT_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def quantised_weights(path: str) -> list[tuple[int, np.ndarray]]:
    """(ONNX element type, values) of each 8-bit initialiser a DequantizeLinear reads: the
    quantised weights."""
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    return [(inits[n.input[0]].data_type, numpy_helper.to_array(inits[n.input[0]]))
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type in WEIGHT_TYPES]


@pytest.mark.parametrize("assay", ["her2", "hep2"])
def test_cpu_int8_weights_cannot_saturate_on_any_cpu(assay: str) -> None:
    manifest = load_manifest(MODELS / assay)
    weights = quantised_weights(str(verify_model(manifest, "int8")))  # sha256 checked
    assert len(weights) >= 5  # every convolution's
    for kind, w in weights:
        if kind == onnx.TensorProto.INT8:  # signed: only within 7 bits
            worst = int(np.abs(w.astype(np.int16)).max())
            assert worst <= 64, f"{assay}: signed weights up to {worst}: re-quantise it"
    # The TensorRT file keeps signed 8-bit weights (TensorRT sums in 32 bits on the GPU).
    trt = quantised_weights(str(verify_model(manifest, "int8_trt")))
    assert {kind for kind, _ in trt} == {onnx.TensorProto.INT8}
    assert max(int(np.abs(w.astype(np.int16)).max()) for _, w in trt) > 64
