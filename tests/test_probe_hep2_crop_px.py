"""The crop-size probe: paired crops of the same cells, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# The probe trains small networks: it needs torch (`pip install torch==2.13.0`, CPU build).
pytest.importorskip("torch")

from appliance.assays.hep2.patterns import NAMES
from tools import probe_hep2_crop_px as probe


def test_paired_crops_cut_the_same_cells_at_every_size() -> None:
    classes = ("few_nuclear_dots", "nucleolar_clumpy")
    sets = probe.paired_crops(7, 2, (32, 48), (0.3, 0.4), np.random.default_rng(1),
                              classes=classes, show=False)
    small, large = sets[32], sets[48]
    assert len(small) == len(large) > 0
    assert small.crops.shape[1:] == (2, 32, 32) and large.crops.shape[1:] == (2, 48, 48)
    np.testing.assert_array_equal(small.pattern, large.pattern)
    assert set(small.pattern.tolist()) == {NAMES.index(c) for c in classes}
    # The same mask at two samplings covers the same share of the 32 µm crop.
    share_small = small.crops[:, 1].mean(axis=(1, 2))
    share_large = large.crops[:, 1].mean(axis=(1, 2))
    np.testing.assert_allclose(share_small, share_large, atol=0.05)


def test_predict_only_names_the_probed_classes() -> None:
    import torch

    class Fixed(torch.nn.Module):  # always prefers class 0 (negative), never probed
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = torch.zeros(len(x), len(NAMES))
            logits[:, 0] = 9.0
            logits[:, NAMES.index("nucleolar_clumpy")] = 1.0
            return logits, torch.zeros(len(x), 3)

    pred = probe.predict(Fixed(), np.zeros((3, 2, 8, 8), np.float32), probe.CLASSES)
    assert pred.tolist() == [NAMES.index("nucleolar_clumpy")] * 3


def test_a_tiny_run_writes_figures_for_every_crop_size(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    assert probe.main(["--fields", "7", "--steps", "2", "--crop-px", "32", "48",
                       "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["by_crop_px"]) == {"32", "48"}
    for res in doc["by_crop_px"].values():
        assert 0.0 <= res["held_out"]["mean_class_accuracy"] <= 1.0
        assert set(res["held_out"]["recall"]) == set(probe.CLASSES)
    assert out.with_suffix(".png").stat().st_size > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        probe.main(["--um-per-px", "0.5", "0.25"])
    with pytest.raises(SystemExit):
        probe.main(["--crop-px", "8"])
