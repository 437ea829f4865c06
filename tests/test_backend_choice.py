"""Which model file each backend loads: TensorRT gets the symmetric INT8 variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from appliance.assays.her2.assay import TENSORRT_INT8, Her2Assay
from appliance.config import Config, with_overrides
from appliance.inference import tensorrt_backend

MODELS = Path(__file__).resolve().parent.parent / "models" / "her2"


class _Backend:
    def run(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("not run in this test")

    def close(self) -> None:
        pass


def test_tensorrt_int8_loads_the_symmetric_file(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_backend_for(cfg: Config, manifest: Any, precision: str, path: Path) -> _Backend:
        seen.update(precision=precision, path=path)
        return _Backend()

    monkeypatch.setattr(tensorrt_backend, "tensorrt_backend_for", fake_backend_for)
    cfg = with_overrides(Config(), {"inference.backend": "tensorrt"})
    assay = Her2Assay.from_config(cfg)
    assert seen["precision"] == TENSORRT_INT8
    assert Path(seen["path"]).name == "her2_int8_trt.onnx"
    assert assay.model.precision == TENSORRT_INT8  # results say which file ran


@pytest.mark.parametrize(("name", "symmetric"), [("her2_int8_trt.onnx", True),
                                                 ("her2_int8.onnx", False)])
def test_only_the_tensorrt_file_has_zero_points_of_zero(name: str, symmetric: bool) -> None:
    """TensorRT's explicit quantisation refuses non-zero zero points (asymmetric INT8)."""
    model = onnx.load(str(MODELS / name))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points
    all_zero = all(not np.any(z) for z in zero_points)
    signed = all(z.dtype in (np.int8, np.int32) for z in zero_points)
    assert (all_zero and signed) is symmetric
