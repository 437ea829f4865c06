"""The empty-cell probe's images and bookkeeping (its figures are measurements, not tested)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.config import Hep2CellsConfig
from tools.probe_hep2_empty_cells import (
    KINDS,
    NOISE_SEED,
    SIZES,
    empty_image,
    empty_images,
    probe,
    refused,
)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_empty_image_is_a_green_fluorescence_picture(kind: str) -> None:
    rgb = empty_image(kind, 64, 30.0, 3.0, np.random.default_rng(996_310))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    green = rgb[..., 1].astype(np.float64)
    # The level (a slope or a glow moves it by up to 2 noise sigmas), and not flat.
    assert abs(green.mean() - 30.0) < 7.0 and green.std() > 0.1
    assert rgb[..., 0].mean() < green.mean() and rgb[..., 2].mean() < green.mean()


def test_the_probe_counts_each_image_once_as_the_gate_judges_it() -> None:
    out = probe(1, [0.5], progress=False)
    cells = out["cells"]["0.5"]  # type: ignore[index]
    assert cells["total"] == 17  # one of each class
    empty = out["empty"]
    per_kind = len(SIZES) * 4 * 3
    assert set(empty) == set(KINDS)  # type: ignore[arg-type]
    cfg = Hep2CellsConfig()
    expected: dict[str, int] = {}
    for kind, rgb in empty_images(NOISE_SEED):
        expected[kind] = expected.get(kind, 0) + (refused(rgb, None, cfg) == "nothing_in_view")
    for kind, row in empty.items():  # type: ignore[union-attr]
        assert row["total"] == per_kind
        assert row["nothing_in_view"] == expected[kind]
        assert row["nothing_in_view"] + row["other"] <= per_kind
