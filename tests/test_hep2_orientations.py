"""Test-time orientations of the HEp-2 cell crops: exact symmetries, averaged logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.crops import crops_for
from appliance.assays.hep2.orientations import mean_over_orientations, oriented
from appliance.config import Config, ConfigError, config_from_dict, with_overrides
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

RNG = np.random.default_rng(7)
CROPS = RNG.random((3, 2, 6, 6)).astype(np.float32)  # no symmetry at all


def mirror(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1]


def quarter(x: np.ndarray) -> np.ndarray:
    return np.rot90(x, 1, axes=(-2, -1))


def linear_model(seed: int = 3) -> Callable[[np.ndarray], np.ndarray]:
    """A fixed random linear map: its logits depend on how a crop lies."""
    w = np.random.default_rng(seed).normal(size=(2 * 6 * 6, 5))
    return lambda x: x.reshape(len(x), -1) @ w


def averaged(x: np.ndarray, count: int) -> np.ndarray:
    return mean_over_orientations(linear_model()(oriented(x, count)), count)


def test_eight_orientations_are_the_eight_symmetries_of_the_square() -> None:
    views = oriented(CROPS, 8).reshape(8, *CROPS.shape)
    expected = [np.rot90(m, k, axes=(-2, -1)) for m in (CROPS, mirror(CROPS)) for k in range(4)]
    for e in expected:
        assert sum(np.array_equal(v, e) for v in views) == 1
    assert np.array_equal(views[0], CROPS)


def test_blocks_hold_one_orientation_of_every_crop() -> None:
    views = oriented(CROPS, 2)
    assert views.shape == (6, 2, 6, 6)
    assert np.array_equal(views[:3], CROPS)
    assert np.array_equal(views[3:], mirror(CROPS))
    assert oriented(CROPS, 1) is CROPS


@pytest.mark.parametrize("count", [2, 4, 8])
def test_the_averaged_answer_does_not_depend_on_a_mirror_image(count: int) -> None:
    model = linear_model()
    assert not np.allclose(model(CROPS), model(mirror(CROPS)))  # the model alone does
    assert np.allclose(averaged(CROPS, count), averaged(np.ascontiguousarray(mirror(CROPS)),
                                                         count))


def test_quarter_turns_need_all_eight() -> None:
    turned = np.ascontiguousarray(quarter(CROPS))
    assert not np.allclose(averaged(CROPS, 4), averaged(turned, 4))
    assert np.allclose(averaged(CROPS, 8), averaged(turned, 8))


def test_bad_counts_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one of"):
        oriented(CROPS, 3)
    with pytest.raises(ValueError, match="square"):
        oriented(np.zeros((1, 2, 4, 5), np.float32), 2)
    with pytest.raises(ValueError, match="blocks"):
        mean_over_orientations(np.zeros((5, 17)), 2)
    with pytest.raises(ValueError, match="one of"):
        mean_over_orientations(np.zeros((6, 17)), 6)


def test_the_config_accepts_only_the_four_counts() -> None:
    cfg = config_from_dict({"hep2": {"cells": {"orientations": 8}}})
    assert cfg.hep2.cells.orientations == 8
    with pytest.raises(ConfigError, match=r"hep2\.cells\.orientations.*one of 1, 2, 4, 8"):
        config_from_dict({"hep2": {"cells": {"orientations": 3}}})


class Recorder:
    """Wraps the assay's backend and keeps the batch sizes it was given."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def run_named(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.rows.append(len(batch))
        return self.inner.run_named(batch)  # type: ignore[attr-defined]


def test_the_assay_averages_the_shipped_model_over_its_orientations() -> None:
    cfg = with_overrides(Config(), {"assay": "hep2", "hep2.cells.orientations": 4})
    field = generate_hep2_field(Hep2FieldSpec(seed=71_500, width=400, height=300,
                                              um_per_px=0.5, patterns=(("golgi", 1.0),)))
    with Hep2Assay.from_config(cfg) as assay:
        green = field.image[..., 1].astype(np.float32)
        crops, _ = crops_for(green, field.cell_labels, 0.5, cfg.hep2.cells)
        assert len(crops) >= 3
        recorder = Recorder(assay.backend)
        assay.backend = recorder  # type: ignore[assignment]
        got = assay._logits(crops, 4)
        assert sum(recorder.rows) == 4 * len(crops)
        flipped = assay._logits(np.ascontiguousarray(mirror(crops)), 4)
        one = assay._logits(crops, 1)
        assay.backend = recorder.inner  # type: ignore[assignment]
    for key in ("pattern_logits", "mitosis_logits"):
        assert got[key].shape[0] == len(crops)
        assert np.allclose(got[key], flipped[key], atol=1e-4)
    # Not vacuous: the single orientation answer differs from the average somewhere.
    assert not np.allclose(one["pattern_logits"], got["pattern_logits"], atol=1e-4)
