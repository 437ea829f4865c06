"""Running a fully-convolutional model over an image of any size."""

from __future__ import annotations

import numpy as np

from appliance.inference.backend import SegmentationBackend


def _pad_to(x: np.ndarray, multiple: int, minimum: int) -> tuple[np.ndarray, int, int]:
    """Reflect-pad a (1, C, H, W) batch so H and W are multiples of ``multiple``."""
    _, _, h, w = x.shape
    ph = max(minimum, -(-h // multiple) * multiple) - h
    pw = max(minimum, -(-w // multiple) * multiple) - w
    if ph or pw:
        widths = ((0, 0), (0, 0), (0, ph), (0, pw))
        # Reflection needs the picture to be larger than the padding.
        x = np.pad(x, widths, mode="reflect") if h > ph and w > pw else np.pad(x, widths, "edge")
    return x, h, w


def run_padded(backend: SegmentationBackend, x: np.ndarray, *, multiple: int,
               stride: int) -> np.ndarray:
    """Run one (1, C, H, W) input, padded as needed; returns (K, ceil(H/s), ceil(W/s)) logits."""
    padded, h, w = _pad_to(x, multiple, multiple)
    out = backend.run(padded)[0]
    return out[:, : -(-h // stride), : -(-w // stride)]


def _starts(size: int, tile: int, step: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``step``, and a last one reaching the far edge.

    Origins stay on the output grid (multiples of ``stride``); the last tile may then
    be a little short and is padded.
    """
    last = -(-(size - tile) // stride) * stride
    return [*range(0, last, step), last]


def run_tiled(backend: SegmentationBackend, x: np.ndarray, *, tile: int, overlap: int,
              multiple: int, stride: int) -> np.ndarray:
    """Run a large (1, C, H, W) input in overlapping tiles and stitch the tile centres.

    Each tile keeps its central part (``overlap`` pixels in from an inner edge), where
    the network saw enough context; consecutive kept parts meet without gaps.
    """
    _, _, h, w = x.shape
    if h <= tile and w <= tile:
        return run_padded(backend, x, multiple=multiple, stride=stride)
    if tile % multiple or overlap % stride or tile <= 2 * overlap:
        raise ValueError(f"bad tiling: tile {tile}, overlap {overlap}, stride {stride}")
    step = tile - 2 * overlap
    out: np.ndarray | None = None
    for ty in _starts(h, tile, step, stride) if h > tile else [0]:
        for tx in _starts(w, tile, step, stride) if w > tile else [0]:
            part = run_padded(backend, x[:, :, ty:ty + tile, tx:tx + tile],
                              multiple=multiple, stride=stride)
            if out is None:
                out = np.zeros((part.shape[0], -(-h // stride), -(-w // stride)), np.float32)
            ky0 = ty + overlap if ty > 0 else 0
            kx0 = tx + overlap if tx > 0 else 0
            ky1 = ty + tile - overlap if ty + tile < h else h
            kx1 = tx + tile - overlap if tx + tile < w else w
            sy0, sx0 = ky0 // stride, kx0 // stride
            sy1, sx1 = -(-ky1 // stride), -(-kx1 // stride)
            oy, ox = ty // stride, tx // stride
            out[:, sy0:sy1, sx0:sx1] = part[:, sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox]
    assert out is not None  # at least one tile ran
    return out
