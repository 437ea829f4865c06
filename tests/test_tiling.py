"""Tiled inference must equal one whole-image run for a model without context."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.inference.tiling import run_padded, run_tiled


class PixelModel:
    """A per-pixel 'model' at stride 2: the output is the input sampled at even pixels, so
    any misplaced tile, seam or padding shows as a difference from the whole-image run."""

    name = "pixel-model"

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        assert batch.shape[2] % 8 == 0 and batch.shape[3] % 8 == 0
        return batch[:, :, ::2, ::2].astype(np.float32)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("shape", [(37, 51), (300, 200), (513, 1030), (1000, 130)])
def test_tiles_stitch_to_the_whole(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, *shape), dtype=np.float32)
    whole = run_padded(PixelModel(), x, multiple=8, stride=2)
    model = PixelModel()
    tiled = run_tiled(model, x, tile=128, overlap=16, multiple=8, stride=2)
    assert tiled.shape == whole.shape == (3, -(-shape[0] // 2), -(-shape[1] // 2))
    np.testing.assert_array_equal(tiled, whole)
    assert all(max(c[2:]) <= 128 for c in model.calls)


def test_small_input_is_one_call() -> None:
    model = PixelModel()
    run_tiled(model, np.zeros((1, 3, 100, 90), np.float32), tile=128, overlap=16,
              multiple=8, stride=2)
    assert model.calls == [(1, 3, 104, 96)]


def test_bad_tiling_is_refused() -> None:
    with pytest.raises(ValueError, match="bad tiling"):
        run_tiled(PixelModel(), np.zeros((1, 3, 300, 300), np.float32), tile=64, overlap=32,
                  multiple=8, stride=2)
