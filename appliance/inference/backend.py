"""The interfaces inference backends implement, and input preparation shared by all."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from appliance.inference.manifest import InputSpec


class SegmentationBackend(Protocol):
    """Runs one segmentation model: NCHW float32 in, NCHW float32 class logits out."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a (N, 3, H, W) float32 batch; H and W are multiples of the stride."""
        ...

    def close(self) -> None:
        """Release the model; calling it twice is harmless."""
        ...


class ClassifierBackend(Protocol):
    """Runs one classifier with several heads: a batch of items in, every head's logits out."""

    name: str

    def run_named(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on a (N, ...) float32 batch; each output by name, N rows each."""
        ...

    def close(self) -> None:
        """Release the model; calling it twice is harmless."""
        ...


def to_model_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (1, 3, H, W) float32 normalised as the manifest says.

    Training uses this same function, so the model always sees what it was trained on.
    """
    x = rgb.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
