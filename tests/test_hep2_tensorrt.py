"""The HEp-2 cell classifier on TensorRT, against the faithful tensorrt and pycuda fakes.

The fake classifier engine computes a known function of every crop for each of its two
heads, so these tests check the numbers that come back (and their row order after a
batch is split), not only which calls were made.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2 import assay as hep2_assay
from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.types import Hep2Result, PatternCall
from appliance.assays.her2.types import ModelRef
from appliance.capture.frame import Frame
from appliance.config import Config, config_from_dict
from appliance.inference import tensorrt_backend
from appliance.inference.engine_stamp import engine_path, read_stamp, stamp_path
from appliance.inference.manifest import ModelError, file_sha256, load_manifest
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend
from appliance.inference.tensorrt_backend import (
    ProfileShapes,
    TensorRTBackend,
    allocation_shape,
    batch_item_shape,
    batch_slices,
    describe_profile,
    leading_view,
    profile_for,
    profile_shapes,
    tensorrt_backend_for,
)
from tests.fakes.pycuda import FakeGpu
from tests.fakes.tensorrt import FakeTensorRT, classifier_function
from tools import build_engine as build_engine_tool
from tools import verify_engine
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.verify_engine import compare_cell_logits, hep2_label

REPO = Path(__file__).resolve().parent.parent
HEADS = {"pattern_logits": 17, "mitosis_logits": 3, "region_logits": 4}  # as shipped (v6)
BATCH = hep2_assay.CLASSIFIER_BATCH
PROFILE = ((1, 2, 64, 64), (64, 2, 64, 64), (BATCH, 2, 64, 64))


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    """Both heads of the fake engine for a batch of crops."""
    return {name: classifier_function(x, k, head) for head, (name, k) in enumerate(HEADS.items())}


class Rig:
    """Fake pycuda + tensorrt in sys.modules; a models/ folder whose HEp-2 manifest is the
    shipped one with the fake model file in place of the real ones; a TensorRT config."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gpu = FakeGpu()
        self.trt = FakeTensorRT(self.gpu)
        package, driver = self.gpu.module()
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt.module())
        self.models = tmp / "models"
        folder = self.models / "hep2"
        folder.mkdir(parents=True)
        self.onnx = folder / "hep2_fake.onnx"
        self.onnx.write_text(json.dumps({"input": "crops", "input_shape": [-1, 2, 64, 64],
                                         "outputs": HEADS}))
        manifest = json.loads((REPO / "models" / "hep2" / "manifest.json").read_text())
        manifest["files"] = {p: {"path": self.onnx.name, "sha256": file_sha256(self.onnx)}
                             for p in ("fp32", "int8", "int8_trt")}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        self.manifest = load_manifest(folder)
        self.engine_dir = tmp / "engines"
        self.cfg = self.config()

    def config(self, **hep2_cells: int) -> Config:
        return config_from_dict({
            "assay": "hep2", "hep2": {"cells": dict(hep2_cells)},
            "inference": {"backend": "tensorrt", "engine_dir": str(self.engine_dir),
                          "models_dir": str(self.models)}})

    def toml(self, tmp: Path) -> Path:
        path = tmp / "config.toml"
        path.write_text(f'assay = "hep2"\n[inference]\nbackend = "tensorrt"\n'
                        f'models_dir = "{self.models}"\nengine_dir = "{self.engine_dir}"\n')
        return path

    def backend(self, max_batch: int = BATCH) -> TensorRTBackend:
        return tensorrt_backend_for(self.cfg, self.manifest, "int8_trt", self.onnx,
                                    max_batch=max_batch)

    @property
    def engine(self) -> Path:
        return engine_path(self.engine_dir, self.manifest, "int8_trt")


@pytest.fixture()
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(tmp_path, monkeypatch)


def crops(n: int, seed: int = 3, side: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1.5, size=(n, 2, side, side)).astype(
        np.float32)


# ------------------------------------------------------------------ profiles (pure)


def test_the_shipped_manifest_gives_a_batch_profile_and_her2_keeps_its_tiles() -> None:
    hep2 = load_manifest(REPO / "models" / "hep2")
    assert batch_item_shape(hep2) == (2, 64, 64)
    profile = profile_for(hep2, 512, BATCH)
    assert profile == ProfileShapes("crops", *PROFILE)
    assert describe_profile(profile) == f"1x2x64x64..64x2x64x64..{BATCH}x2x64x64"
    # A small batch caps the optimum; no batch at all is refused, naming the model.
    assert profile_for(hep2, 512, 16).opt == (16, 2, 64, 64)
    with pytest.raises(ModelError, match=rf"{hep2.name}.*largest batch"):
        profile_for(hep2, 512, None)
    with pytest.raises(ModelError, match="largest batch of 0"):
        profile_for(hep2, 512, 0)
    her2 = load_manifest(REPO / "models" / "her2")
    assert batch_item_shape(her2) is None
    assert profile_for(her2, 512, BATCH) == profile_shapes(her2.input, 512)


def test_batches_split_at_the_profile_maximum_and_wrong_items_are_refused() -> None:
    lo, hi = PROFILE[0], PROFILE[2]
    assert batch_slices((BATCH, 2, 64, 64), lo, hi) == [slice(0, BATCH)]
    assert batch_slices((2 * BATCH + 5, 2, 64, 64), lo, hi) == [
        slice(0, BATCH), slice(BATCH, 2 * BATCH), slice(2 * BATCH, 2 * BATCH + 5)]
    with pytest.raises(ModelError, match=r"axis 2\): each item must be 2x64x64"):
        batch_slices((3, 2, 32, 32), lo, hi)
    with pytest.raises(ModelError, match="axis 1"):
        batch_slices((3, 3, 64, 64), lo, hi)
    with pytest.raises(ModelError, match="a batch of 0"):
        batch_slices((0, 2, 64, 64), lo, hi)
    with pytest.raises(ModelError, match="4 dimensions"):
        batch_slices((2, 64, 64), lo, hi)


def test_buffers_are_for_the_largest_batch_only_when_the_batch_alone_varies() -> None:
    lo, hi = PROFILE[0], PROFILE[2]
    assert allocation_shape((7, 2, 64, 64), lo, hi) == (BATCH, 2, 64, 64)
    tile_lo, tile_hi = (1, 3, 8, 8), (1, 3, 512, 512)
    assert allocation_shape((1, 3, 40, 64), tile_lo, tile_hi) == (1, 3, 40, 64)
    host = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    view = leading_view(host, (4, 3))
    assert np.shares_memory(view, host)
    np.testing.assert_array_equal(view, host[:4])
    with pytest.raises(ModelError, match="does not fit"):
        leading_view(host, (11, 3))


# ------------------------------------------------------------------ the backend


def test_both_heads_come_back_right_for_any_cell_count(rig: Rig) -> None:
    backend = rig.backend()
    for n in (1, 37, BATCH, 5):
        x = crops(n, seed=n)
        got = backend.run_named(x)
        assert list(got) == list(HEADS)
        for name, want in expected(x).items():
            assert got[name].shape == (n, HEADS[name]) and got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], want, rtol=1e-6)
    # ``run`` gives the manifest's output, the pattern head.
    x = crops(3)
    np.testing.assert_allclose(backend.run(x), expected(x)["pattern_logits"], rtol=1e-6)
    backend.close()


def test_a_batch_above_the_profile_runs_in_parts_in_order(rig: Rig) -> None:
    backend = rig.backend()
    ctx = rig.trt.contexts[-1]
    ctx.calls.clear()
    x = crops(2 * BATCH + 40)
    got = backend.run_named(x)
    for name, want in expected(x).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6)
    runs = [a for kind, a in ctx.calls if kind == "set_input_shape"]
    assert [shape[0] for _, shape in runs] == [BATCH, BATCH, 40]
    assert sum(kind == "execute_async_v3" for kind, _ in ctx.calls) == 3
    assert rig.gpu.context_stack == []
    backend.close()


def test_buffers_are_made_once_whatever_the_cell_count(rig: Rig) -> None:
    backend = rig.backend()  # the warm-up made them, for the largest batch
    made = rig.gpu.pagelocked
    assert made == 1 + len(HEADS)  # crops + every head
    sizes = sorted(m.size for m in rig.gpu.memory.values())
    assert sizes == sorted([BATCH * 2 * 64 * 64 * 4] + [BATCH * k * 4 for k in HEADS.values()])
    for n in (3, 120, 17, BATCH, 1):
        backend.run_named(crops(n, seed=n))
    assert rig.gpu.pagelocked == made and len(rig.gpu.memory) == made
    backend.close()
    assert rig.gpu.memory == {}


def test_a_wrong_crop_size_is_a_clear_error(rig: Rig) -> None:
    backend = rig.backend()
    with pytest.raises(ModelError, match="each item must be 2x64x64"):
        backend.run_named(crops(4, side=48))
    backend.close()
    with pytest.raises(ModelError, match="closed"):
        backend.run_named(crops(1))
    # A config whose crops the model cannot take fails at load, naming the key.
    with pytest.raises(ModelError, match=r"hep2.cells.crop_px = 48.*2x64x64"):
        Hep2Assay.from_config(rig.config(crop_px=48))
    assert len(rig.trt.builds) == 1  # refused before any engine work


def test_a_profile_the_network_cannot_take_does_not_build(rig: Rig) -> None:
    manifest = json.loads((rig.models / "hep2" / "manifest.json").read_text())
    manifest["input"]["shape"] = ["n", 2, 48, 48]  # says 48 px, the network is 64
    (rig.models / "hep2" / "manifest.json").write_text(json.dumps(manifest))
    rig.manifest = load_manifest(rig.models / "hep2")
    with pytest.raises(ModelError, match="could not build"):
        rig.backend()
    assert not rig.engine.exists() and rig.gpu.detached == 1


# ------------------------------------------------------------------ engine stamps


def test_the_engine_is_stamped_with_its_batch_profile_and_reused(rig: Rig) -> None:
    rig.backend().close()
    rig.backend().close()
    assert len(rig.trt.builds) == 1 and rig.trt.deserialized == 2
    build = rig.trt.builds[0]
    assert build["profile"] == PROFILE and build["flags"] == 1 << 1
    stamp, _ = read_stamp(rig.engine)
    assert stamp is not None
    assert stamp.input_profile == f"1x2x64x64..64x2x64x64..{BATCH}x2x64x64"
    assert stamp.precision == "int8_trt" and stamp.model_sha256 == file_sha256(rig.onnx)


def test_another_batch_size_rebuilds_and_so_does_a_broken_stamp(rig: Rig) -> None:
    rig.backend().close()
    backend = rig.backend(max_batch=32)
    assert len(rig.trt.builds) == 2 and rig.trt.builds[1]["profile"][2] == (32, 2, 64, 64)
    x = crops(70)  # now three parts of at most 32
    np.testing.assert_allclose(backend.run_named(x)["mitosis_logits"],
                               expected(x)["mitosis_logits"], rtol=1e-6)
    backend.close()
    stamp, _ = read_stamp(rig.engine)
    assert stamp is not None and stamp.input_profile.endswith("..32x2x64x64")
    stamp_path(rig.engine).write_text("{")
    rig.backend().close()
    assert len(rig.trt.builds) == 3 and rig.trt.builds[2]["profile"] == PROFILE


# ------------------------------------------------------------------ the assay


def test_from_config_runs_the_classifier_on_tensorrt(rig: Rig) -> None:
    with Hep2Assay.from_config(rig.cfg) as assay:
        assert isinstance(assay.backend, TensorRTBackend)
        assert assay.model.precision == "int8_trt"  # results say which file ran
        assert rig.trt.builds[0]["profile"] == PROFILE
        assert rig.engine.name.startswith(f"{rig.manifest.name}-int8_trt-")
        field = generate_hep2_field(Hep2FieldSpec(seed=61_001, width=640, height=480,
                                                  um_per_px=0.5, patterns=(("centromere", 1),),
                                                  intensity=120.0))
        frame = Frame(image=field.image, seq=1, timestamp=0.0, source="f", um_per_px=0.5)
        prepared = assay.prepare(frame)
        assert prepared.crops is not None and len(prepared.crops) >= 5
        outputs = assay.infer(prepared)
        for name, want in expected(prepared.crops).items():
            np.testing.assert_allclose(outputs[name], want, rtol=1e-5)
        result = assay.finish(prepared, outputs)
        assert len(result.cells) == len(prepared.crops)
        call = assay.classify_cell_image(field.image[:64, :64], "cell.png")
        assert call.pattern in call.probabilities
    assert rig.gpu.memory == {} and rig.gpu.detached == 1


def test_without_tensorrt_the_error_is_clear_and_the_gpu_given_back(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match="TensorRT's Python bindings"):
        Hep2Assay.from_config(rig.cfg)
    assert rig.gpu.detached == 1 and rig.gpu.context_stack == []
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(ModelError, match="needs pycuda"):
        Hep2Assay.from_config(rig.cfg)


def test_onnxruntime_never_needs_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU backend is the fallback a box without TensorRT is configured with."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    cfg = config_from_dict({"assay": "hep2", "inference": {"backend": "onnxruntime"}})
    with Hep2Assay.from_config(cfg) as assay:
        assert assay.model.precision == "int8"
        out = assay.backend.run_named(crops(3))
        assert out["pattern_logits"].shape == (3, 17) and out["mitosis_logits"].shape == (3, 3)
        assert out["region_logits"].shape == (3, 4)


# ------------------------------------------------------------------ tools


def test_build_engine_tool_builds_the_hep2_engine_the_assay_loads(
        rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = rig.toml(tmp_path)
    assert build_engine_tool.main(["--config", str(config), "--if-needed"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"built: {rig.engine}")
    assert f'"input_profile": "1x2x64x64..64x2x64x64..{BATCH}x2x64x64"' in out
    assert build_engine_tool.main(["--config", str(config), "--assay", "hep2"]) == 0
    assert capsys.readouterr().out.startswith("current: ")
    Hep2Assay.from_config(rig.cfg).close()
    assert len(rig.trt.builds) == 1  # the service's engine is the one the assay loads
    # --assay all wants every assay's model; this folder has no HER2 one.
    assert build_engine_tool.main(["--config", str(config), "--assay", "all"]) == 2
    assert "no model manifest" in capsys.readouterr().err


def test_cell_logit_comparison_and_outcome_words() -> None:
    ref = {"pattern_logits": np.array([[0.0, 1.0], [2.0, 0.0]], np.float32),
           "mitosis_logits": np.zeros((2, 3), np.float32)}
    cand = {"pattern_logits": np.array([[0.0, 1.5], [0.0, 2.0]], np.float32),
            "mitosis_logits": np.zeros((2, 3), np.float32)}
    c = compare_cell_logits(ref, cand)
    assert c["pattern_logits"].max_abs == 2.0
    assert c["pattern_logits"].pixel_agreement == 0.5  # the second cell flips
    assert c["mitosis_logits"].max_abs == 0.0 and c["mitosis_logits"].pixel_agreement == 1.0
    # The region head's logits are yes / no each: a cell agrees when its stained regions do.
    # (Both cells keep their arg-max; the first loses its second region.)
    regions = {"region_logits": np.array([[2.0, 1.0], [1.0, 3.0]], np.float32)}
    flipped = {"region_logits": np.array([[3.0, -2.0], [1.0, 3.5]], np.float32)}
    r = compare_cell_logits(regions, flipped)["region_logits"]
    assert r.pixel_agreement == 0.5 and r.max_abs == 3.0
    with pytest.raises(ValueError, match="heads differ"):
        compare_cell_logits(ref, {"pattern_logits": cand["pattern_logits"]})
    base = Hep2Result(file="f", seq=1, status="scored", image_width=1, image_height=1,
                      model=ModelRef(name="m", sha256="0", precision="int8", validated_on=""))
    call = PatternCall("centromere", "AC-3", "Centromere", 1.0, 0.9, "")
    assert hep2_label(replace(base, positive=True, patterns=(call,))) == "positive AC-3"
    assert hep2_label(replace(base, positive=False)) == "negative"
    assert hep2_label(replace(base, status="not_scorable", reason_code="too_few_cells")) == (
        "not scorable (too_few_cells)")


def test_verify_engine_hep2_mode_compares_the_two_backends(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The tool's plumbing on the shipped model: a stand-in "TensorRT" that is ONNX Runtime
    on the same file must agree exactly (the real comparison needs a Jetson)."""
    seen: dict[str, object] = {}

    def same_model(cfg: Config, manifest: object, precision: str, path: Path,
                   max_batch: int | None = None) -> OnnxRuntimeBackend:
        seen.update(precision=precision, max_batch=max_batch)
        return OnnxRuntimeBackend(path, input_name="crops", warmup_input=(1, 2, 64, 64))

    monkeypatch.setattr(tensorrt_backend, "tensorrt_backend_for", same_model)
    assert verify_engine.main(["--assay", "hep2", "--fields", "2"]) == 0
    out = capsys.readouterr().out
    assert seen == {"precision": "int8_trt", "max_batch": BATCH}
    assert "pattern_logits max |d| 0.0000 cells agree 1.0000" in out
    assert "specimen call agreement 1.000" in out
