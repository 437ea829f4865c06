"""Training-tool plumbing of the HEp-2 classifier: schedule, crop cache, checkpoint resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Training needs torch (`pip install torch==2.13.0`, the CPU build); the runtime and CI do not.
torch = pytest.importorskip("torch")

from tools.hep2_dataset import CropSet, cached, load_cropset, save_cropset  # noqa: E402
from tools.train_hep2 import checkpoint_seconds, lr_at, train_model  # noqa: E402


def small_set(n: int = 24, seed: int = 0) -> CropSet:
    """Random two-class crops: enough for the plumbing, no learning asked of it."""
    rng = np.random.default_rng(seed)
    crops = rng.random((n, 2, 64, 64), dtype=np.float32)
    crops[:, 1] = (crops[:, 1] > 0.5).astype(np.float32)
    return CropSet(crops, np.arange(n, dtype=np.int64) % 2, np.zeros(n, np.int64),
                   np.ones(n, np.float32))


def test_one_cycle_schedule_warms_up_then_decays_to_near_zero() -> None:
    peak, total = 3e-3, 1000
    lrs = [lr_at(s, total, peak, warmup=100) for s in range(total)]
    assert lrs[0] == pytest.approx(0.04 * peak)
    assert max(lrs) == pytest.approx(peak)
    assert int(np.argmax(lrs)) == 100
    tail = np.array(lrs[100:])
    assert np.all(np.diff(tail) <= 0)
    assert lrs[-1] < 0.01 * peak


def test_warm_up_is_capped_for_short_runs() -> None:
    # A 50-step run cannot spend 150 steps warming up: warm-up is at most a fifth.
    lrs = [lr_at(s, 50, 1.0, warmup=150) for s in range(50)]
    assert int(np.argmax(lrs)) == 10


def test_crop_cache_builds_once_then_reads(tmp_path: Path) -> None:
    calls = []

    def build() -> CropSet:
        calls.append(1)
        return small_set(6)

    path = tmp_path / "c" / "train.npz"
    first = cached(path, build)
    second = cached(path, build)
    assert len(calls) == 1 and path.is_file()
    np.testing.assert_array_equal(first.crops, second.crops)
    np.testing.assert_array_equal(first.pattern, second.pattern)
    assert second.crops.dtype == np.float32 and second.pattern.dtype == np.int64
    assert cached(None, build) is not None and len(calls) == 2  # no cache: always builds


def test_a_broken_cache_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, crops=np.zeros((2, 2, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_cropset(bad)
    uneven = tmp_path / "uneven.npz"
    s = small_set(4)
    save_cropset(uneven, CropSet(s.crops, s.pattern[:3], s.mitosis, s.weight))
    with pytest.raises(ValueError, match="length"):
        load_cropset(uneven)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = small_set()
    full, full_losses = train_model(data, epochs=3, batch=8, width=4, show=False)
    ck = tmp_path / "ck.pt"
    train_model(data, epochs=3, batch=8, width=4, show=False, checkpoint=ck,
                stop_after_epochs=1)
    first_part_s = checkpoint_seconds(ck)
    resumed, losses = train_model(data, epochs=3, batch=8, width=4, show=False,
                                  checkpoint=ck, resume=True)
    # The checkpoint counts the training time of both calls, for the manifest.
    assert 0.0 < first_part_s < checkpoint_seconds(ck)
    assert len(losses) == len(full_losses) == 9
    np.testing.assert_allclose(losses, full_losses, rtol=1e-5)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoint"):
        train_model(small_set(), epochs=1, batch=8, width=4, show=False,
                    checkpoint=tmp_path / "none.pt", resume=True)


def test_fixed_step_count_is_honoured() -> None:
    _model, losses = train_model(small_set(), epochs=99, steps=5, batch=8, width=4, show=False)
    assert len(losses) == 5


def test_init_starts_from_a_checkpoints_weights(tmp_path: Path) -> None:
    data = small_set()
    ck = tmp_path / "stage1.pt"
    first, _ = train_model(data, epochs=1, batch=8, width=4, show=False, checkpoint=ck)
    # Zero steps of a second stage: the weights are exactly the first stage's.
    second, losses = train_model(data, epochs=1, steps=0, batch=8, width=4, show=False,
                                 init=ck)
    assert losses == []
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="no checkpoint"):
        train_model(data, epochs=1, batch=8, width=4, show=False, init=tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this network"):
        train_model(data, epochs=1, batch=8, width=8, show=False, init=ck)


def test_the_region_loss_trains_the_region_head_with_the_trunk(tmp_path: Path) -> None:
    data = small_set()
    ck = tmp_path / "start.pt"
    train_model(data, epochs=1, batch=8, width=4, show=False, checkpoint=ck)
    start = torch.load(ck, weights_only=False)["model"]
    # Without the loss the region head gets no gradient: it stays as it was.
    plain, _ = train_model(data, epochs=2, batch=8, width=4, show=False, init=ck)
    torch.testing.assert_close(plain.regions.weight, start["regions.weight"])
    with_loss, losses = train_model(data, epochs=2, batch=8, width=4, show=False, init=ck,
                                    region_loss=1.0)
    assert not torch.allclose(with_loss.regions.weight, start["regions.weight"])
    assert len(losses) == 6 and all(np.isfinite(losses))
    # A resumed run keeps its loss: another weight is refused, not mixed in.
    ck2 = tmp_path / "region.pt"
    train_model(data, epochs=2, batch=8, width=4, show=False, checkpoint=ck2,
                region_loss=1.0, stop_after_epochs=1)
    with pytest.raises(ValueError, match=r"region_loss 1\.0, not 0\.0"):
        train_model(data, epochs=2, batch=8, width=4, show=False, checkpoint=ck2,
                    resume=True)


def test_bf16_training_rounds_only_and_is_kept_on_resume(tmp_path: Path) -> None:
    data = small_set()
    _, full_losses = train_model(data, epochs=2, batch=8, width=4, show=False)
    half, half_losses = train_model(data, epochs=2, batch=8, width=4, show=False, bf16=True)
    # The same run, rounded: the first loss (before any update) agrees to bfloat16's
    # precision, and no step diverges.
    assert half_losses[0] == pytest.approx(full_losses[0], rel=0.02)
    assert len(half_losses) == 6 and all(np.isfinite(half_losses))
    assert half_losses != full_losses  # bfloat16 really ran
    # The weights come back float32 and in the default layout, ready for ONNX export.
    for name, w in half.state_dict().items():
        assert w.dtype in (torch.float32, torch.int64), name
        assert w.dim() != 4 or w.is_contiguous(), name
    ck = tmp_path / "bf16.pt"
    train_model(data, epochs=2, batch=8, width=4, show=False, checkpoint=ck, bf16=True,
                stop_after_epochs=1)
    with pytest.raises(ValueError, match="bf16 True, not False"):
        train_model(data, epochs=2, batch=8, width=4, show=False, checkpoint=ck, resume=True)
    # A checkpoint from before the setting existed was trained in float32.
    old = torch.load(ck, weights_only=False)
    del old["state"]["bf16"]
    torch.save(old, ck)
    with pytest.raises(ValueError, match="bf16 False, not True"):
        train_model(data, epochs=2, batch=8, width=4, show=False, checkpoint=ck, resume=True,
                    bf16=True)


def test_the_held_out_compound_set_takes_every_pair(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    import argparse

    from appliance.config import Hep2CellsConfig
    from tools import train_hep2
    from tools.hep2_dataset import COMPOUND_PER_FIELD, compound_pairs

    seen: dict[str, int] = {}

    def fake(seeds: range, count: int, cfg: Hep2CellsConfig, **kw: object) -> CropSet:
        seen["per_field"] = int(kw["max_per_field"])  # type: ignore[call-overload]
        return small_set(4)

    monkeypatch.setattr(train_hep2, "compound_crops", fake)
    args = argparse.Namespace(cache=str(tmp_path))
    cfg = Hep2CellsConfig()
    pairs = len(compound_pairs())
    train_hep2._compound(args, cfg, "valcompound", range(10), 600, 2, every_pair=True)
    # 600 crops at 7 a field take 86 fields: nearly every one of the 89 pairs.
    assert seen["per_field"] == -(-600 // pairs) and 600 / seen["per_field"] >= pairs - 5
    train_hep2._compound(args, cfg, "compound", range(10), 600, 2)
    assert seen["per_field"] == COMPOUND_PER_FIELD
    names = sorted(p.name for p in tmp_path.iterdir())
    assert any("_p7" in n for n in names) and any("_p" not in n for n in names)
