"""A stand-in for the ``tensorrt`` (10.x) Python API, the parts the backend uses.

Builder → ``create_network(flags)`` → ``OnnxParser(network, logger).parse(bytes, path)``
→ ``create_builder_config`` with a timing cache and an optimisation profile →
``build_serialized_network``; ``Runtime(logger).deserialize_cuda_engine(bytes)`` →
engine I/O by name (``num_io_tensors``, ``get_tensor_name/mode/dtype``,
``get_tensor_profile_shape``) → ``create_execution_context`` with ``set_input_shape``,
``get_tensor_shape``, ``set_tensor_address`` and ``execute_async_v3(stream_handle)``.

The "ONNX model" is a small JSON file; the "engine" is JSON too and records the profile
and TensorRT version it was built with. Two kinds of model:

* segmentation (HER2): ``{"input", "output", "classes", "stride"}``, one output
  ``logits[n, k, i, j] = (k + 1) * mean_c(x[n, c, s*i, s*j])`` with ``s`` the stride;
* classifier (HEp-2): ``{"input", "input_shape": [-1, C, H, W], "outputs": {name:
  classes}}``, one (N, classes) output per head, in that order:
  ``y_h[n, k] = (k + 1) * mean(x[n]) + h`` for head index ``h``. As in TensorRT, a
  profile whose fixed dimensions differ from the network's does not build.

Running queues the function, on the fake pycuda stream, over real device memory.
As in TensorRT, refusals return False/None instead of raising.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any

import numpy as np

from tests.fakes.pycuda import FakeGpu


class DataType(enum.Enum):
    FLOAT = 0
    INT8 = 2


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


def known_function(x: np.ndarray, classes: int, stride: int) -> np.ndarray:
    """What the fake engine computes (tests compare against it)."""
    sub = x[:, :, ::stride, ::stride].mean(axis=1, keepdims=True)
    return (sub * np.arange(1, classes + 1, dtype=np.float32)[None, :, None, None]).astype(
        np.float32)


def classifier_function(x: np.ndarray, classes: int, head: int) -> np.ndarray:
    """What the fake classifier engine computes for its output number ``head``."""
    mean = x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float64)
    return (mean[:, None] * np.arange(1, classes + 1)[None, :] + head).astype(np.float32)


def output_names(spec: dict[str, Any]) -> list[str]:
    """The model's outputs in engine order."""
    return list(spec["outputs"]) if "outputs" in spec else [spec["output"]]


def profile_fits_network(spec: dict[str, Any], shapes: tuple[tuple[int, ...], ...]) -> bool:
    """TensorRT's build-time check: min <= opt <= max, and fixed dimensions kept."""
    if not all(len(s) == len(shapes[0]) for s in shapes) or not all(
            a <= b <= c for a, b, c in zip(*shapes, strict=True)):
        return False
    network = spec.get("input_shape")
    if network is None:
        return True
    return len(network) == len(shapes[0]) and all(
        d == -1 or all(s[i] == d for s in shapes) for i, d in enumerate(network))


class FakeTensorRT:
    """One fake TensorRT installation bound to a :class:`FakeGpu`; records what happened."""

    def __init__(self, gpu: FakeGpu, version: str = "10.3.0") -> None:
        self.gpu = gpu
        self.version = version
        self.builds: list[dict[str, Any]] = []
        self.contexts: list[FakeContext] = []
        self.deserialized = 0
        self.modules: list[types.ModuleType] = []

    def upgrade(self, version: str) -> None:
        """Install another TensorRT version (as a JetPack update would)."""
        self.version = version
        for mod in self.modules:
            mod.__version__ = version  # type: ignore[attr-defined]

    def module(self) -> types.ModuleType:
        """A module object to put in ``sys.modules["tensorrt"]``."""
        rig = self
        mod = types.ModuleType("tensorrt")

        class Logger:
            WARNING = 2

            def __init__(self, min_severity: int = 2) -> None:
                self.min_severity = min_severity

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.model: dict[str, Any] | None = None

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network
                self.errors: list[str] = []

            def parse(self, model: bytes, path: str | None = None) -> bool:
                try:
                    self.network.model = json.loads(bytes(model))
                except ValueError as exc:
                    self.errors.append(f"In node -1: not a model ({exc})")
                    return False
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> str:
                return self.errors[index]

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data)

            def serialize(self) -> bytes:
                return self.data + b"+"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class BuilderConfig:
            def __init__(self) -> None:
                self.profiles: list[Profile] = []
                self.cache: TimingCache | None = None

            def create_timing_cache(self, data: bytes) -> TimingCache:
                return TimingCache(data)

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> TimingCache:
                assert self.cache is not None, "no timing cache set"
                return self.cache

            def add_optimization_profile(self, profile: Profile) -> int:
                self.profiles.append(profile)
                return len(self.profiles) - 1

        class Builder:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> Network:
                return Network(flags)

            def create_builder_config(self) -> BuilderConfig:
                return BuilderConfig()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network,
                                         config: BuilderConfig) -> bytes | None:
                model = network.model
                if model is None or len(config.profiles) != 1:
                    return None
                shapes = config.profiles[0].shapes.get(model["input"])
                if shapes is None or not profile_fits_network(model, shapes):
                    return None
                rig.builds.append({"flags": network.flags, "profile": shapes,
                                   "timing_cache": config.cache.data if config.cache else None})
                engine = dict(model, profile=shapes, version=rig.version)
                return json.dumps(engine).encode()

        class Engine:
            def __init__(self, spec: dict[str, Any]) -> None:
                self.spec = spec
                self.names = [spec["input"], *output_names(spec)]

            @property
            def num_io_tensors(self) -> int:
                return len(self.names)

            def get_tensor_name(self, index: int) -> str:
                return self.names[index]

            def get_tensor_mode(self, name: str) -> TensorIOMode:
                return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name: str) -> DataType:
                return DataType.FLOAT

            def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
                assert name == self.names[0] and index == 0
                return [tuple(s) for s in self.spec["profile"]]

            def create_execution_context(self) -> FakeContext:
                ctx = FakeContext(rig, self.spec)
                rig.contexts.append(ctx)
                return ctx

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                rig.gpu.require_context()
                spec = json.loads(bytes(data))
                if spec.get("version") != rig.version:
                    return None  # TensorRT logs "version mismatch" and returns None
                rig.deserialized += 1
                return Engine(spec)

        def nptype(dtype: DataType) -> type:
            return {DataType.FLOAT: np.float32, DataType.INT8: np.int8}[dtype]

        mod.__version__ = rig.version  # type: ignore[attr-defined]
        for name, obj in {
            "Logger": Logger, "Builder": Builder, "OnnxParser": OnnxParser, "Runtime": Runtime,
            "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
            "TensorIOMode": TensorIOMode, "DataType": DataType, "nptype": nptype,
            "Dims": tuple,
        }.items():
            setattr(mod, name, obj)
        self.modules.append(mod)
        return mod


class FakeContext:
    """IExecutionContext: shapes and addresses by tensor name; runs on a stream."""

    def __init__(self, rig: FakeTensorRT, spec: dict[str, Any]) -> None:
        self.rig = rig
        self.spec = spec
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple[str, Any]] = []

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self.calls.append(("set_input_shape", (name, tuple(shape))))
        lo, _, hi = self.spec["profile"]
        if name != self.spec["input"] or len(shape) != len(lo) or not all(
                a <= n <= b for n, a, b in zip(shape, lo, hi, strict=True)):
            return False
        self.input_shape = tuple(int(d) for d in shape)
        return True

    def output_shape(self, name: str) -> tuple[int, ...]:
        if "outputs" in self.spec:
            n = -1 if self.input_shape is None else self.input_shape[0]
            return (n, self.spec["outputs"][name])
        if self.input_shape is None:
            return (-1, self.spec["classes"], -1, -1)
        n, _, h, w = self.input_shape
        s = self.spec["stride"]
        return (n, self.spec["classes"], -(-h // s), -(-w // s))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.spec["input"]:
            return self.input_shape or tuple(self.spec.get("input_shape", (-1, 3, -1, -1)))
        assert name in output_names(self.spec), name
        return self.output_shape(name)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.calls.append(("set_tensor_address", (name, address)))
        if name not in (self.spec["input"], *output_names(self.spec)):
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3", stream_handle))
        outputs = output_names(self.spec)
        if self.input_shape is None or len(self.addresses) != 1 + len(outputs):
            return False
        in_shape = self.input_shape
        out_shapes = {name: self.output_shape(name) for name in outputs}
        gpu = self.rig.gpu
        src = self.addresses[self.spec["input"]]
        dst = {name: self.addresses[name] for name in outputs}

        def compute() -> None:
            x = gpu.view(src, int(np.prod(in_shape)) * 4).view(np.float32).reshape(in_shape)
            for head, name in enumerate(outputs):
                if "outputs" in self.spec:
                    y = classifier_function(x, self.spec["outputs"][name], head)
                else:
                    y = known_function(x, self.spec["classes"], self.spec["stride"])
                assert y.shape == out_shapes[name]
                gpu.view(dst[name], y.nbytes)[:] = y.reshape(-1).view(np.uint8)

        gpu.enqueue(stream_handle, compute)
        return True
