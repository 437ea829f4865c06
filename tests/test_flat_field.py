"""Flat-field estimation: vignetting is undone, an evenly lit field is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.assays.her2.flat_field import estimate_gain, flatten


def tissue_field(seed: int = 0, h: int = 480, w: int = 640) -> np.ndarray:
    """Glass (230) with darker tissue blobs scattered over a third of the field."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 230.0, np.float32)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(25):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 60)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (150.0, 120.0, 170.0)
    return img


def vignette(h: int, w: int, strength: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    return (1.0 - strength * r2 / 2.0).astype(np.float32)


@pytest.mark.parametrize("strength", [0.2, 0.45])
def test_vignetting_is_undone(strength: float) -> None:
    even = tissue_field()
    light = vignette(*even.shape[:2], strength)
    seen = np.clip(even * light[..., None], 0, 255).astype(np.uint8)
    gain = estimate_gain(seen)
    # Relative light recovered within 3 % everywhere (up to the brightest point's level).
    ratio = gain / (light / light.max())
    assert np.abs(ratio - 1.0).max() < 0.03
    corrected = flatten(seen, gain)
    glass = (even[..., 0] == 230.0)
    assert np.ptp(corrected[..., 1][glass]) < 0.06 * 230


def test_evenly_lit_field_is_left_alone() -> None:
    gain = estimate_gain(tissue_field(seed=3).astype(np.uint8))
    assert gain.min() > 0.97


def test_small_images_are_passed_through() -> None:
    crop = (tissue_field()[:100, :300] * vignette(100, 300, 0.4)[..., None]).astype(np.uint8)
    gain = estimate_gain(crop)
    assert gain.shape == (100, 300) and np.all(gain == 1.0)
