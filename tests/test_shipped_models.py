"""The shipped INT8 files read as their FP32 files on every CPU.

The INT8 files multiply unsigned 8-bit activations by signed 8-bit weights (U8S8). On an
x86 CPU without VNNI (AVX2 only) ONNX Runtime's fast kernel adds each pair of those
products into a saturating 16-bit sum, which full 8-bit weights overflow: there the HER2
file's logits moved up to 19 from FP32's on a random field, and it read 0.855 of its
held-out fields right instead of 0.955. The backend asks ONNX Runtime for exact products
on such CPUs (``session.x64quantprecision``). The first test fails on an AVX2 CPU without
it; the second holds the backend to it on any CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from appliance.config import Config
from appliance.inference.manifest import load_manifest, verify_model
from appliance.inference.onnxruntime_backend import X64_QUANT_PRECISION, OnnxRuntimeBackend

MODELS = Config().models_path()


def backend(assay: str, precision: str) -> OnnxRuntimeBackend:
    manifest = load_manifest(MODELS / assay)
    shape = (1, 3, 64, 64) if assay == "her2" else (1, 2, 64, 64)
    return OnnxRuntimeBackend(verify_model(manifest, precision), threads=2,
                              input_name=manifest.input.name, warmup_input=shape)


def test_her2_int8_logits_stay_near_fp32_on_this_cpu() -> None:
    field = np.random.default_rng(0).random((1, 3, 240, 320), dtype=np.float32)
    fp32, int8 = backend("her2", "fp32"), backend("her2", "int8")
    try:
        gap = float(np.abs(int8.run(field) - fp32.run(field)).max())
    finally:
        fp32.close()
        int8.close()
    # Exact 8-bit arithmetic: about 0.8 (rounding); saturated: about 19.
    assert gap < 3.0, f"INT8 logits {gap:.1f} from FP32: saturated 8-bit products?"


@pytest.mark.parametrize("assay", ["her2", "hep2"])
def test_the_backend_asks_for_exact_int8_products(assay: str) -> None:
    b = backend(assay, "int8")
    try:
        assert b._session is not None
        options = b._session.get_session_options()
        assert options.get_session_config_entry(X64_QUANT_PRECISION) == "1"
    finally:
        b.close()
