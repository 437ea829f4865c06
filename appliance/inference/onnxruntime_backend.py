"""ONNX Runtime on the CPU: the default backend, and the one every test uses."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.inference.manifest import ModelError

_log = logging.getLogger(__name__)


# ONNX Runtime's session option (PR 12088) for exact U8S8 products on x86 without VNNI.
X64_QUANT_PRECISION = "session.x64quantprecision"


class OnnxRuntimeBackend:
    """A model file run by ONNX Runtime's CPU execution provider."""

    def __init__(self, path: Path, *, threads: int = 0, warmup_shape: tuple[int, int] = (256, 256),
                 input_name: str | None = None,
                 warmup_input: tuple[int, ...] | None = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin: in the real-time pipeline the other stages need
        # those cores while the model waits for its next input.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Exact 8-bit arithmetic on every x86 CPU. The INT8 files multiply unsigned
        # activations by signed weights (U8S8). Without VNNI (AVX2 only) ONNX Runtime's
        # fast kernel sums pairs of those products in a saturating 16-bit integer, which
        # full 8-bit weights overflow: the HER2 file then read 0.855 of its held-out fields
        # right instead of 0.955 (README, "INT8 on CPUs without VNNI"). This option has
        # ONNX Runtime run such layers as U8U8 on those CPUs only (exact, slower); with
        # VNNI, and on ARM, nothing changes.
        opts.add_session_config_entry(X64_QUANT_PRECISION, "1")
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        inputs = self._session.get_inputs()
        self._input = input_name or inputs[0].name
        self.name = f"onnxruntime-cpu:{path.name}"
        self._outputs = [o.name for o in self._session.get_outputs()]
        # A warm-up run here, so the first real field is not mistaken for a stall.
        # ``warmup_input`` is the whole input shape for models that are not (1, 3, H, W).
        h, w = warmup_shape
        self.run(np.zeros(warmup_input or (1, 3, h, w), dtype=np.float32))
        _log.info("loaded %s with %d threads", path, opts.intra_op_num_threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model; returns the first output (class logits)."""
        if self._session is None:
            raise ModelError(f"{self.name} is closed")
        out = self._session.run(None, {self._input: batch})
        return np.asarray(out[0], dtype=np.float32)

    def run_named(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model; every output by name (for models with several heads)."""
        if self._session is None:
            raise ModelError(f"{self.name} is closed")
        out = self._session.run(None, {self._input: batch})
        return {name: np.asarray(v, dtype=np.float32)
                for name, v in zip(self._outputs, out, strict=True)}

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self._session = None
