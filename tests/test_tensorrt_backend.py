"""The TensorRT backend against faithful fakes of tensorrt and pycuda (no GPU here).

The fake engine computes a known function over real (simulated) device memory, so these
tests check the numbers that come back, not only which calls were made.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from appliance.config import Config, config_from_dict
from appliance.inference.engine_stamp import (
    EngineStamp,
    engine_is_current,
    engine_path,
    read_stamp,
    stamp_from_json,
    stamp_matches,
    stamp_path,
)
from appliance.inference.manifest import InputSpec, ModelError, ModelManifest, file_sha256
from appliance.inference.tensorrt_backend import (
    MAX_CACHED_SHAPES,
    CudaApi,
    TensorRTBackend,
    profile_shapes,
    tensorrt_backend_for,
)
from tests.fakes.pycuda import FakeGpu
from tests.fakes.tensorrt import FakeTensorRT, known_function
from tools import build_engine as build_engine_tool
from tools.verify_engine import compare_logits, field_agreement

SHA = "ab" * 32
PROFILE = "1x3x8x8..1x3x64x64..1x3x64x64"
STAMP = EngineStamp("10.3.0", "Orin (fake)", "8.7", SHA, "int8", PROFILE)


class Rig:
    """Fake pycuda + tensorrt installed in sys.modules, a manifest and a config."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, tile: int = 64) -> None:
        self.gpu = FakeGpu()
        self.trt = FakeTensorRT(self.gpu)
        package, driver = self.gpu.module()
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt.module())
        self.onnx = tmp / "her2_int8.onnx"
        self.onnx.write_text(json.dumps(
            {"input": "image", "output": "logits", "classes": 4, "stride": 2}))
        self.manifest = ModelManifest(
            name="her2-test", assay="her2", directory=tmp, files={"int8": (self.onnx.name, SHA)},
            input=InputSpec("image", (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 8, (0.5, 1.0)),
            output_name="logits", classes=("bg", "tn", "on", "mem"), output_stride=2,
            validated_on="test", raw={},
        )
        self.engine_dir = tmp / "engines"
        self.cfg: Config = config_from_dict({"inference": {
            "backend": "tensorrt", "engine_dir": str(self.engine_dir), "tile_px": tile}})

    def backend(self) -> TensorRTBackend:
        backend = tensorrt_backend_for(self.cfg, self.manifest, "int8", self.onnx)
        assert isinstance(backend, TensorRTBackend)
        return backend

    @property
    def engine(self) -> Path:
        return engine_path(self.engine_dir, self.manifest, "int8")


@pytest.fixture()
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(tmp_path, monkeypatch)


# ------------------------------------------------------------------ stamps (pure)


def test_stamp_round_trip_and_field_by_field_mismatch() -> None:
    assert stamp_from_json(STAMP.to_json()) == STAMP
    assert stamp_matches(STAMP, STAMP) == (True, "stamp matches")
    for field, value in [("tensorrt_version", "10.4.0"), ("gpu_name", "Other"),
                         ("compute_capability", "7.2"), ("model_sha256", "cd" * 32),
                         ("precision", "fp32"), ("input_profile", "1x3x8x8..")]:
        other = EngineStamp(**{**STAMP.__dict__, field: value})
        ok, reason = stamp_matches(other, STAMP)
        assert not ok and field in reason and value in reason
    assert stamp_matches(None, STAMP) == (False, "no stamp")


@pytest.mark.parametrize("text", ["not json", "[1]", '{"gpu_name": "x"}'])
def test_malformed_stamp_is_refused_with_a_reason(tmp_path: Path, text: str) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    stamp_path(engine).write_text(text)
    stamp, reason = read_stamp(engine)
    assert stamp is None and reason
    assert engine_is_current(engine, STAMP)[0] is False


def test_engine_without_stamp_or_stamp_without_engine_is_not_current(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    assert engine_is_current(engine, STAMP) == (False, f"no engine {engine}")
    engine.write_bytes(b"x")
    ok, reason = engine_is_current(engine, STAMP)
    assert not ok and "no stamp" in reason
    stamp_path(engine).write_text(STAMP.to_json())
    assert engine_is_current(engine, STAMP)[0]


def test_engine_path_names_model_precision_and_hash(rig: Rig) -> None:
    path = rig.engine
    assert path.parent == rig.engine_dir
    assert path.name == f"her2-test-int8-{SHA[:12]}.engine"


def test_profile_covers_one_multiple_up_to_a_rounded_tile() -> None:
    spec = InputSpec("image", (0, 0, 0), (1, 1, 1), 8, (0.5, 1.0))
    p = profile_shapes(spec, 512)
    assert (p.input_name, p.min, p.opt, p.max) == (
        "image", (1, 3, 8, 8), (1, 3, 512, 512), (1, 3, 512, 512))
    assert profile_shapes(spec, 500).max == (1, 3, 504, 504)
    with pytest.raises(ModelError):
        profile_shapes(spec, 4)


# ------------------------------------------------------------------ build / rebuild


def test_first_use_builds_a_strongly_typed_engine_and_stamps_it(rig: Rig) -> None:
    rig.backend().close()
    assert len(rig.trt.builds) == 1
    build = rig.trt.builds[0]
    assert build["flags"] == 1 << 1  # STRONGLY_TYPED, nothing else (no calibrator path)
    assert build["profile"] == ((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 64, 64))
    stamp, _ = read_stamp(rig.engine)
    assert stamp == STAMP
    assert (rig.engine_dir / "timing.cache").read_bytes() == b"+"


def test_matching_engine_is_loaded_without_rebuilding(rig: Rig) -> None:
    rig.backend().close()
    rig.backend().close()
    assert len(rig.trt.builds) == 1 and rig.trt.deserialized == 2


@pytest.mark.parametrize("change", ["tensorrt", "gpu", "stamp-deleted", "stamp-corrupt"])
def test_mismatched_engine_is_rebuilt_never_loaded(rig: Rig, change: str) -> None:
    rig.backend().close()
    if change == "tensorrt":
        rig.trt.upgrade("10.4.0")  # a JetPack update; the old engine would not deserialize
    elif change == "gpu":
        rig.gpu.capability = (7, 2)
    elif change == "stamp-deleted":
        stamp_path(rig.engine).unlink()
    else:
        stamp_path(rig.engine).write_text("{")
    backend = rig.backend()
    backend.close()
    assert len(rig.trt.builds) == 2
    # The rebuild reused the timing cache written by the first build.
    assert rig.trt.builds[1]["timing_cache"] == b"+"
    assert engine_is_current(rig.engine, EngineStamp(
        rig.trt.version, "Orin (fake)", "{}.{}".format(*rig.gpu.capability), SHA, "int8",
        PROFILE))[0]


def test_unparsable_model_is_a_clear_error(rig: Rig) -> None:
    rig.onnx.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="cannot parse"):
        rig.backend()
    assert not rig.engine.exists() and not stamp_path(rig.engine).exists()


def test_missing_tensorrt_or_pycuda_is_a_clear_error(rig: Rig,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match="TensorRT's Python bindings"):
        rig.backend()
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(ModelError, match="needs pycuda"):
        CudaApi()


# ------------------------------------------------------------------ running


def test_outputs_are_the_engine_function_per_input_shape(rig: Rig) -> None:
    backend = rig.backend()
    rng = np.random.default_rng(5)
    for h, w in [(64, 64), (16, 40), (64, 8), (16, 40)]:
        x = rng.normal(size=(1, 3, h, w)).astype(np.float32)
        y = backend.run(x)
        assert y.shape == (1, 4, h // 2, w // 2) and y.dtype == np.float32
        np.testing.assert_allclose(y, known_function(x, 4, 2), rtol=1e-6)
    backend.close()


def test_names_shapes_and_addresses_given_to_the_context(rig: Rig) -> None:
    backend = rig.backend()
    ctx = rig.trt.contexts[-1]
    # Warm-up at load, at the profile's optimum shape.
    assert ctx.calls[0] == ("set_input_shape", ("image", (1, 3, 64, 64)))
    ctx.calls.clear()
    backend.run(np.ones((1, 3, 24, 32), np.float32))
    assert ctx.calls[0] == ("set_input_shape", ("image", (1, 3, 24, 32)))
    addresses = dict(a for kind, a in ctx.calls if kind == "set_tensor_address")
    assert set(addresses) == {"image", "logits"}
    # Each address is a live device buffer of exactly the tensor's size.
    assert rig.gpu.memory[addresses["image"]].size == 3 * 24 * 32 * 4
    assert rig.gpu.memory[addresses["logits"]].size == 4 * 12 * 16 * 4
    assert [k for k, _ in ctx.calls][-1] == "execute_async_v3"
    assert rig.gpu.context_stack == []  # every push popped
    backend.close()


def test_buffers_are_made_once_per_shape_and_bounded(rig: Rig) -> None:
    backend = rig.backend()
    made = rig.gpu.pagelocked
    x = np.zeros((1, 3, 16, 16), np.float32)
    backend.run(x)
    backend.run(x)
    assert rig.gpu.pagelocked == made + 2  # input + output, once
    shapes = [(h, w) for h in range(8, 72, 8) for w in (8, 16)][:MAX_CACHED_SHAPES + 2]
    for h, w in shapes:
        backend.run(np.zeros((1, 3, h, w), np.float32))
    # Evicted shapes gave their device memory back.
    assert len(rig.gpu.memory) == 2 * MAX_CACHED_SHAPES
    backend.close()


def test_shape_outside_the_profile_is_refused(rig: Rig) -> None:
    backend = rig.backend()
    with pytest.raises(ModelError, match="outside the engine's profile"):
        backend.run(np.zeros((1, 3, 72, 64), np.float32))
    with pytest.raises(ModelError, match="4 dimensions"):
        backend.run(np.zeros((3, 64, 64), np.float32))
    backend.close()


def test_runs_from_another_thread_than_the_one_that_loaded(rig: Rig) -> None:
    backend = rig.backend()
    x = np.full((1, 3, 8, 8), 2.0, np.float32)
    result: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: result.append(backend.run(x)))
    worker.start()
    worker.join(5)
    np.testing.assert_allclose(result[0], known_function(x, 4, 2))
    backend.close()


def test_close_is_idempotent_and_frees_the_gpu(rig: Rig) -> None:
    backend = rig.backend()
    backend.run(np.zeros((1, 3, 16, 16), np.float32))
    backend.close()
    backend.close()
    assert rig.gpu.memory == {} and rig.gpu.detached == 1
    with pytest.raises(ModelError, match="closed"):
        backend.run(np.zeros((1, 3, 16, 16), np.float32))


# ------------------------------------------------------------------ tools


def write_models_dir(rig: Rig, tmp: Path) -> Path:
    """A models/ folder whose manifest names the fake model, and a config that uses it."""
    models = tmp / "models"
    (models / "her2").mkdir(parents=True)
    onnx = models / "her2" / rig.onnx.name
    onnx.write_bytes(rig.onnx.read_bytes())
    manifest = {
        "name": "her2-test", "assay": "her2", "validated_on": "test",
        # The tool builds TensorRT's own symmetric file for int8, as the assay loads it.
        "files": {p: {"path": onnx.name, "sha256": file_sha256(onnx)}
                  for p in ("int8", "int8_trt")},
        "input": {"name": "image", "mean": [0.5] * 3, "std": [0.2] * 3, "multiple_of": 8,
                  "um_per_px_range": [0.5, 1.0]},
        "output": {"name": "logits", "classes": ["a", "b", "c", "d"], "stride": 2},
    }
    (models / "her2" / "manifest.json").write_text(json.dumps(manifest))
    config = tmp / "config.toml"
    config.write_text(f'[inference]\nbackend = "tensorrt"\nmodels_dir = "{models}"\n'
                      f'engine_dir = "{rig.engine_dir}"\ntile_px = 64\n')
    return config


def test_build_engine_tool_builds_keeps_and_forces(rig: Rig, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_models_dir(rig, tmp_path)
    assert build_engine_tool.main(["--config", str(config), "--if-needed"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("built: ") and '"tensorrt_version": "10.3.0"' in out
    assert build_engine_tool.main(["--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("current: ")
    assert build_engine_tool.main(["--config", str(config), "--force"]) == 0
    assert capsys.readouterr().out.startswith("built: ")
    assert len(rig.trt.builds) == 2
    assert rig.gpu.detached == 3  # every run gave the GPU context back


def test_build_engine_tool_refuses_a_tampered_model(rig: Rig, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_models_dir(rig, tmp_path)
    (tmp_path / "models" / "her2" / rig.onnx.name).write_text("{}")
    assert build_engine_tool.main(["--config", str(config)]) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    assert rig.trt.builds == []


def test_logit_comparison_figures() -> None:
    a = np.zeros((4, 2, 3), np.float32)
    a[1] = 1.0  # class 1 everywhere
    b = a.copy()
    b[2, 0, 0] = 2.0  # one pixel flips to class 2
    b[0, 1, 1] = -0.5
    c = compare_logits(a, b)
    assert c.max_abs == 2.0
    assert c.mean_abs == pytest.approx(2.5 / 24)
    assert c.pixel_agreement == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(a, b[:, :1])
    assert field_agreement([("2+", "2+"), ("1+", "2+")]) == 0.5
    assert field_agreement([]) == 1.0


def test_a_larger_tile_needs_a_new_engine(rig: Rig) -> None:
    rig.backend().close()
    rig.cfg = config_from_dict({"inference": {"engine_dir": str(rig.engine_dir),
                                              "tile_px": 128}})
    backend = rig.backend()
    assert len(rig.trt.builds) == 2
    assert rig.trt.builds[1]["profile"][2] == (1, 3, 128, 128)
    assert backend.run(np.zeros((1, 3, 128, 96), np.float32)).shape == (1, 4, 64, 48)
    backend.close()


def test_engine_for_another_input_is_refused_and_the_gpu_given_back(rig: Rig) -> None:
    rig.backend().close()
    detached = rig.gpu.detached
    with pytest.raises(ModelError, match="expected \\['rgb'\\]"):
        TensorRTBackend(rig.engine, "rgb")
    assert rig.gpu.detached == detached + 1 and rig.gpu.context_stack == []
    assert rig.gpu.memory == {}
