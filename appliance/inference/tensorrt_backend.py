"""TensorRT on the Jetson: an engine built on the device from the shipped Q/DQ INT8 model.

The network is created strongly typed from the explicitly quantized ONNX (Q/DQ nodes
carry the scales), so no calibrator is involved: the implicit INT8 calibrators are
deprecated since TensorRT 10.1. Running follows the TensorRT 10 name-based I/O API:
``set_input_shape`` and ``set_tensor_address`` for every I/O tensor, then
``execute_async_v3`` on one CUDA stream, with pycuda page-locked host buffers.

Two kinds of model run here. An image model (HER2) has one (1, 3, H, W) input whose
profile spans H and W up to a tile; a classifier of fixed-size items (the HEp-2 cells,
manifest input shape ``["n", 2, 64, 64]``) has a profile over the batch N only, up to
the assay's batch, and a larger batch is run in parts. ``run`` gives one output (HER2),
``run_named`` every output by name (the HEp-2 pattern and mitosis heads).

``tensorrt`` and ``pycuda`` are imported only when this backend is used, so the rest
of the appliance runs (and is tested) where neither exists. Shape and buffer logic is
in pure functions; the CUDA calls are a handful of lines behind :class:`CudaApi`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from appliance.files import write_atomic
from appliance.inference.engine_stamp import (
    EngineStamp,
    engine_is_current,
    engine_path,
    write_engine,
)
from appliance.inference.manifest import InputSpec, ModelError, ModelManifest

if TYPE_CHECKING:
    import tensorrt as trt

    from appliance.config import Config

_log = logging.getLogger(__name__)

Shape = tuple[int, ...]
MAX_CACHED_SHAPES = 8  # tiles + a few padded field sizes; more would only hold GPU memory
# The batch the engine's kernels are tuned for: a field's cells at 20x are about this many.
DEFAULT_OPT_BATCH = 64


# ------------------------------------------------------------------ pure helpers


@dataclass(frozen=True)
class ProfileShapes:
    """One optimisation profile for the model's input: NCHW min, opt and max shapes."""

    input_name: str
    min: Shape
    opt: Shape
    max: Shape


def profile_shapes(spec: InputSpec, tile_px: int) -> ProfileShapes:
    """The profile the runtime needs: from one stride-multiple up to a whole tile.

    Tiling pads every input to a multiple of ``multiple_of`` (at least one multiple) and
    never sends more than ``tile_px`` a side, so those are the bounds; whole tiles are
    the common case, hence the optimum.
    """
    m = spec.multiple_of
    if m <= 0 or tile_px < m:
        raise ModelError(f"no TensorRT profile for multiple_of {m} and tile {tile_px}")
    side = -(-tile_px // m) * m
    return ProfileShapes(spec.name, (1, 3, m, m), (1, 3, side, side), (1, 3, side, side))


def batch_item_shape(manifest: ModelManifest) -> Shape | None:
    """The fixed (C, H, W) of each item when only the batch is dynamic, else None.

    Read from the manifest's ``input.shape``: ``["n", 2, 64, 64]`` (a named batch, every
    other dimension a number) gives ``(2, 64, 64)``. A manifest without a shape, or with
    named H and W too, is an image model tiled over H and W (the HER2 profile).
    """
    inp = manifest.raw.get("input")
    shape = inp.get("shape") if isinstance(inp, dict) else None
    if not isinstance(shape, list) or len(shape) < 2 or not isinstance(shape[0], str):
        return None
    rest = shape[1:]
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in rest):
        return None
    if any(d < 1 for d in rest):
        raise ModelError(f"{manifest.directory / 'manifest.json'}: input shape {shape} has a "
                         "dimension below 1")
    return tuple(rest)


def check_item_side(manifest: ModelManifest, side: int, key: str) -> None:
    """Refuse a config whose square items differ from the batch-dynamic model's.

    The engine is built for the manifest's item shape, so a config key (``key``, e.g.
    ``hep2.cells.crop_px``) giving another size would fail every run; it fails at load.
    """
    item = batch_item_shape(manifest)
    if item is None:
        raise ModelError(f"{manifest.directory / 'manifest.json'}: model {manifest.name} has "
                         "no input shape with a named batch and fixed items (e.g. "
                         "[\"n\", 2, 64, 64]); no batch profile for TensorRT")
    if item[1:] != (side, side):
        raise ModelError(f"{key} = {side}, but {manifest.directory / 'manifest.json'} gives "
                         f"the model's items as {'x'.join(map(str, item))}: set {key} = "
                         f"{item[-1]} or ship a model for {side} px")


def batch_profile_shapes(input_name: str, item: Shape, max_batch: int,
                         opt_batch: int = DEFAULT_OPT_BATCH) -> ProfileShapes:
    """A profile over the batch only: 1 to ``max_batch`` items of the fixed ``item`` shape.

    ``max_batch`` is the most the assay sends in one run; the optimum is ``opt_batch``
    (a typical field), never above the maximum.
    """
    if max_batch < 1:
        raise ModelError(f"no TensorRT profile for a largest batch of {max_batch}")
    opt = max(1, min(opt_batch, max_batch))
    return ProfileShapes(input_name, (1, *item), (opt, *item), (max_batch, *item))


def profile_for(manifest: ModelManifest, tile_px: int, max_batch: int | None) -> ProfileShapes:
    """The profile an engine for this model is built with (and stamped with).

    A classifier of fixed-size items gets a profile over the batch up to ``max_batch``;
    an image model the tile profile of :func:`profile_shapes` (``max_batch`` unused).
    """
    item = batch_item_shape(manifest)
    if item is None:
        return profile_shapes(manifest.input, tile_px)
    if max_batch is None:
        raise ModelError(f"model {manifest.name}: input {manifest.input.name!r} is dynamic in "
                         "its batch only; the engine needs the assay's largest batch")
    return batch_profile_shapes(manifest.input.name, item, max_batch)


def describe_profile(profile: ProfileShapes) -> str:
    """The profile as stamped: ``1x3x8x8..1x3x512x512..1x3x512x512``."""
    return "..".join("x".join(str(d) for d in s) for s in (profile.min, profile.opt, profile.max))


def check_batch(batch: np.ndarray, lo: Shape, hi: Shape) -> None:
    """Refuse a batch the engine's profile cannot run, naming the reason."""
    if batch.ndim != len(lo):
        raise ModelError(f"TensorRT input must have {len(lo)} dimensions, got {batch.shape}")
    for axis, (n, a, b) in enumerate(zip(batch.shape, lo, hi, strict=True)):
        if not a <= n <= b:
            raise ModelError(
                f"TensorRT input shape {batch.shape} is outside the engine's profile "
                f"{lo}..{hi} (axis {axis})"
            )


def batch_slices(shape: Shape, lo: Shape, hi: Shape) -> list[slice]:
    """The engine runs a batch of ``shape`` needs: parts of at most the profile's batch.

    Only the batch axis is split. An item outside the profile (a crop of another size)
    is refused: it means another model or a config that does not match this one.
    """
    if len(shape) != len(lo):
        raise ModelError(f"TensorRT input must have {len(lo)} dimensions, got {shape}")
    for axis in range(1, len(shape)):
        if not lo[axis] <= shape[axis] <= hi[axis]:
            item = ("x".join(str(d) for d in lo[1:]) if lo[1:] == hi[1:] else
                    f"{lo[1:]}..{hi[1:]}")
            raise ModelError(f"TensorRT input shape {shape} is outside the engine's profile "
                             f"{lo}..{hi} (axis {axis}): each item must be {item}")
    n = shape[0]
    if n < lo[0]:
        raise ModelError(f"TensorRT input shape {shape}: a batch of {n}, the engine's profile "
                         f"{lo}..{hi} takes at least {lo[0]}")
    step = hi[0]
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def allocation_shape(shape: Shape, lo: Shape, hi: Shape) -> Shape:
    """The input shape buffers are made for: the profile's largest batch when only N varies.

    A classifier sees a different number of cells in every field; buffers for the largest
    batch, used in part, are made once instead of once per cell count. Buffers of an image
    model (H and W vary, batch fixed) are made per shape, as before.
    """
    if len(shape) == len(lo) and lo[1:] == hi[1:] and lo[0] != hi[0]:
        return (hi[0], *shape[1:])
    return shape


def leading_view(host: np.ndarray, shape: Shape) -> np.ndarray:
    """The first elements of a flat-contiguous host buffer, as an array of ``shape``.

    With the batch the leading axis, the first N items of a buffer made for more are
    exactly a dense (N, ...) tensor, on the host as on the device.
    """
    count = int(np.prod(shape, dtype=np.int64))
    if any(d < 0 for d in shape) or count > host.size:
        raise ModelError(f"tensor shape {shape} does not fit its buffer of {host.shape}")
    return host.reshape(-1)[:count].reshape(shape)


def nbytes_of(shape: Shape, dtype: np.dtype[Any]) -> int:
    """Bytes of a dense tensor; refuses unresolved (-1) dimensions."""
    if any(d < 0 for d in shape):
        raise ModelError(f"tensor shape {shape} is not resolved; is every input shape set?")
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


@dataclass(frozen=True)
class IoTensor:
    """One engine I/O tensor by name."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]


def pick_output(tensors: list[IoTensor], wanted: str | None) -> str:
    """The output returned by ``run``: the named one, else the engine's only output."""
    outputs = [t.name for t in tensors if not t.is_input]
    if wanted is not None:
        if wanted not in outputs:
            raise ModelError(f"engine has no output {wanted!r} (has {outputs})")
        return wanted
    if len(outputs) != 1:
        raise ModelError(f"engine has {len(outputs)} outputs {outputs}; name the one to use")
    return outputs[0]


class _Lru:
    """Per-input-shape buffers, oldest evicted (and released) past a bound."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.items: dict[Shape, _Buffers] = {}

    def get(self, key: Shape) -> _Buffers | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.items[key] = item  # most recent last
        return item

    def put(self, key: Shape, item: _Buffers) -> None:
        self.items[key] = item
        while len(self.items) > self.bound:
            self.items.pop(next(iter(self.items))).free()

    def clear(self) -> None:
        for item in self.items.values():
            item.free()
        self.items.clear()


# ------------------------------------------------------------------ CUDA (pycuda) wrapper


class DeviceBuffer(Protocol):
    """A pycuda ``DeviceAllocation``: ``int()`` gives the device pointer."""

    def __int__(self) -> int: ...

    def free(self) -> None: ...


class CudaStream(Protocol):
    """A pycuda ``Stream``."""

    handle: int

    def synchronize(self) -> None: ...


class CudaApi:
    """The few pycuda calls this backend makes, typed (pycuda has no stubs).

    The device's primary context is retained explicitly and pushed around every use,
    instead of ``pycuda.autoinit``, because the model is loaded on one thread and run on
    the pipeline's analysis thread; a context is only current on the thread that pushed it.
    """

    def __init__(self, device: int = 0) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise ModelError(
                "backend 'tensorrt' needs pycuda (pip install pycuda, built against "
                f"JetPack's CUDA): {exc}"
            ) from exc
        self._cuda: Any = cuda
        cuda.init()
        self._device: Any = cuda.Device(device)
        self._context: Any = self._device.retain_primary_context()
        self._lock = threading.RLock()

    def gpu_name(self) -> str:
        """The GPU's name as CUDA reports it."""
        return str(self._device.name())

    def compute_capability(self) -> str:
        """``major.minor``, e.g. ``8.7`` for Orin."""
        major, minor = self._device.compute_capability()
        return f"{int(major)}.{int(minor)}"

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make the device context current on this thread for the block."""
        with self._lock:
            self._context.push()
            try:
                yield
            finally:
                self._cuda.Context.pop()

    def pagelocked_empty(self, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        """A page-locked host array (fast, truly asynchronous copies)."""
        return np.asarray(self._cuda.pagelocked_empty(shape, dtype))

    def mem_alloc(self, nbytes: int) -> DeviceBuffer:
        """A device buffer of ``nbytes``."""
        buf: DeviceBuffer = self._cuda.mem_alloc(nbytes)
        return buf

    def stream(self) -> CudaStream:
        """A new CUDA stream."""
        stream: CudaStream = self._cuda.Stream()
        return stream

    def htod(self, dst: DeviceBuffer, src: np.ndarray, stream: CudaStream) -> None:
        """Queue a host-to-device copy on ``stream``."""
        self._cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer, stream: CudaStream) -> None:
        """Queue a device-to-host copy on ``stream``."""
        self._cuda.memcpy_dtoh_async(dst, src, stream)

    def close(self) -> None:
        """Release the retained primary context (idempotent)."""
        if self._context is not None:
            self._context.detach()
            self._context = None


@dataclass
class _Buffers:
    """Host and device memory for every I/O tensor at one input shape."""

    shapes: dict[str, Shape]
    host: dict[str, np.ndarray]
    device: dict[str, DeviceBuffer]

    def free(self) -> None:
        for buf in self.device.values():
            buf.free()
        self.device.clear()


def allocate(cuda: CudaApi, shapes: dict[str, Shape],
             dtypes: dict[str, np.dtype[Any]]) -> _Buffers:
    """Page-locked host and device buffers sized for ``shapes``."""
    host = {n: cuda.pagelocked_empty(s, dtypes[n]) for n, s in shapes.items()}
    device = {n: cuda.mem_alloc(max(1, nbytes_of(s, dtypes[n]))) for n, s in shapes.items()}
    return _Buffers(dict(shapes), host, device)


# ------------------------------------------------------------------ TensorRT


def _import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a ModelError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelError(
            "backend 'tensorrt' needs TensorRT's Python bindings (JetPack: "
            f"python3-libnvinfer, in a venv with system site packages): {exc}"
        ) from exc
    return tensorrt


def _logger(trt_mod: Any) -> trt.ILogger:
    logger: trt.ILogger = trt_mod.Logger(trt_mod.Logger.WARNING)
    return logger


def expected_stamp(manifest: ModelManifest, precision: str, cuda: CudaApi,
                   profile: ProfileShapes) -> EngineStamp:
    """The stamp an engine must carry to be loaded on this box, for this model."""
    trt_mod = _import_tensorrt()
    return EngineStamp(
        tensorrt_version=str(trt_mod.__version__), gpu_name=cuda.gpu_name(),
        compute_capability=cuda.compute_capability(),
        model_sha256=manifest.sha256(precision), precision=precision,
        input_profile=describe_profile(profile),
    )


def _parse_onnx(trt_mod: Any, network: trt.INetworkDefinition, logger: trt.ILogger,
                onnx_path: Path) -> None:
    parser: trt.OnnxParser = trt_mod.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors or 'no detail'}")


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Reuse earlier kernel timings (a rebuild takes seconds instead of minutes)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    # A cache from another TensorRT or GPU is refused rather than half-used.
    if not config.set_timing_cache(cache, False):
        _log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engine(onnx_path: Path, engine: Path, stamp: EngineStamp, *, timing_cache: Path,
                 profile: ProfileShapes) -> None:
    """Build a strongly typed engine from a Q/DQ ONNX model; write it and its stamp."""
    trt_mod = _import_tensorrt()
    logger = _logger(trt_mod)
    builder: trt.Builder = trt_mod.Builder(logger)
    flags = 1 << int(trt_mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    _parse_onnx(trt_mod, network, logger, onnx_path)
    config = builder.create_builder_config()
    _load_timing_cache(config, timing_cache)
    opt = builder.create_optimization_profile()
    opt.set_shape(profile.input_name, trt_mod.Dims(list(profile.min)),
                  trt_mod.Dims(list(profile.opt)), trt_mod.Dims(list(profile.max)))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    write_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()).tobytes())
    write_engine(engine, memoryview(serialized).tobytes(), stamp)
    _log.info("built %s from %s", engine, onnx_path.name)


def io_tensors(trt_mod: Any, engine: trt.ICudaEngine) -> list[IoTensor]:
    """Every I/O tensor of the engine, by name, with its numpy dtype."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt_mod.TensorIOMode.INPUT
        dtype = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(name)))
        out.append(IoTensor(name, is_input, dtype))
    return out


class TensorRTBackend:
    """A stamped TensorRT engine run on one CUDA stream.

    ``run`` is the SegmentationBackend interface (one output); ``run_named`` the
    ClassifierBackend one (every output by name, batches above the profile in parts).
    A ``cuda`` passed in becomes the backend's: ``close()`` releases it.
    """

    def __init__(self, engine_file: Path, input_name: str, *, output_name: str | None = None,
                 cuda: CudaApi | None = None) -> None:
        trt_mod = _import_tensorrt()
        self._cuda = cuda or CudaApi()
        self.name = f"tensorrt:{engine_file.name}"
        self._cache = _Lru(MAX_CACHED_SHAPES)
        self._context: trt.IExecutionContext | None = None
        try:
            self._load(trt_mod, engine_file, input_name, output_name)
        except BaseException:
            with self._cuda.current():
                self._cache.clear()
            if cuda is None:  # ours to give back
                self._cuda.close()
            raise
        _log.info("loaded %s (profile %s..%s)", engine_file, self._lo, self._hi)

    def _load(self, trt_mod: Any, engine_file: Path, input_name: str,
              output_name: str | None) -> None:
        """Deserialize, find the I/O tensors, make the context and stream, warm up."""
        with self._cuda.current():
            runtime: trt.Runtime = trt_mod.Runtime(_logger(trt_mod))
            engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if engine is None:
                raise ModelError(f"TensorRT cannot deserialize {engine_file}")
            self._engine: trt.ICudaEngine | None = engine
            self._tensors = io_tensors(trt_mod, engine)
            inputs = [t.name for t in self._tensors if t.is_input]
            if inputs != [input_name]:
                raise ModelError(f"{engine_file}: inputs {inputs}, expected [{input_name!r}]")
            self._input = input_name
            self.outputs = [t.name for t in self._tensors if not t.is_input]
            if output_name is not None:
                pick_output(self._tensors, output_name)  # a wrong name fails at load
            self._output_name = output_name
            lo, opt, hi = (tuple(d) for d in engine.get_tensor_profile_shape(input_name, 0))
            self._lo, self._hi = tuple(lo), tuple(hi)
            self._stream = self._cuda.stream()
            self._context = engine.create_execution_context()
        # A warm-up at the common shape: the first real field must not look like a stall.
        self._execute(np.zeros(tuple(opt), dtype=np.float32))

    def _set_shape(self, context: trt.IExecutionContext, shape: Shape) -> None:
        if not context.set_input_shape(self._input, shape):
            raise ModelError(f"TensorRT refused input shape {shape} for {self._input!r}")

    def _buffers(self, context: trt.IExecutionContext,
                 shape: Shape) -> tuple[_Buffers, dict[str, Shape]]:
        """Set the input shape; the buffers for it (made once) and every tensor's shape."""
        key = allocation_shape(shape, self._lo, self._hi)
        bufs = self._cache.get(key)
        if bufs is None:
            self._set_shape(context, key)
            shapes = {t.name: tuple(context.get_tensor_shape(t.name)) for t in self._tensors}
            shapes[self._input] = key
            bufs = allocate(self._cuda, shapes, {t.name: t.dtype for t in self._tensors})
            self._cache.put(key, bufs)
            if key == shape:
                return bufs, bufs.shapes
        self._set_shape(context, shape)
        if key == shape:
            return bufs, bufs.shapes
        shapes = {t.name: tuple(context.get_tensor_shape(t.name)) for t in self._tensors}
        shapes[self._input] = shape
        return bufs, shapes

    def _execute(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One engine run on a batch inside the profile; every output, copied, by name."""
        context = self._context
        if context is None:
            raise ModelError(f"{self.name} is closed")
        shape = tuple(int(d) for d in batch.shape)
        check_batch(batch, self._lo, self._hi)
        with self._cuda.current():
            bufs, shapes = self._buffers(context, shape)
            host = {t.name: leading_view(bufs.host[t.name], shapes[t.name])
                    for t in self._tensors}
            np.copyto(host[self._input], batch, casting="same_kind")
            for t in self._tensors:
                if not context.set_tensor_address(t.name, int(bufs.device[t.name])):
                    raise ModelError(f"TensorRT refused the address of tensor {t.name!r}")
            self._cuda.htod(bufs.device[self._input], host[self._input], self._stream)
            if not context.execute_async_v3(self._stream.handle):
                raise ModelError(f"{self.name}: execute_async_v3 failed")
            for name in self.outputs:
                self._cuda.dtoh(host[name], bufs.device[name], self._stream)
            self._stream.synchronize()
            # Copies: the page-locked buffers are reused by the next run.
            return {name: np.array(host[name], dtype=np.float32) for name in self.outputs}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the engine on a (N, 3, H, W) float32 batch; returns the logits."""
        if self._context is None:
            raise ModelError(f"{self.name} is closed")
        return self._execute(batch)[pick_output(self._tensors, self._output_name)]

    def run_named(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name; a batch above the profile's largest runs in parts, in order."""
        if self._context is None:
            raise ModelError(f"{self.name} is closed")
        parts = [self._execute(batch[rows])
                 for rows in batch_slices(tuple(batch.shape), self._lo, self._hi)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}

    def close(self) -> None:
        """Free GPU memory and the engine (idempotent)."""
        if self._context is None:
            return
        with self._cuda.current():
            self._cache.clear()
            self._context = None
            self._engine = None
        self._cuda.close()


def ensure_engine(cfg: Config, manifest: ModelManifest, precision: str, onnx_path: Path,
                  cuda: CudaApi, *, force: bool = False,
                  max_batch: int | None = None) -> tuple[Path, EngineStamp, bool]:
    """Build the engine unless a current one exists: (engine path, its stamp, whether built).

    ``onnx_path`` must come from :func:`verify_model`: the stamp records the manifest's
    sha256, so only a checked file may be built from. ``max_batch`` is the assay's batch
    for a classifier of fixed-size items (see :func:`profile_for`); the stamp records the
    profile, so another batch or tile size rebuilds.
    """
    profile = profile_for(manifest, cfg.inference.tile_px, max_batch)
    expected = expected_stamp(manifest, precision, cuda, profile)
    engine = engine_path(Path(cfg.inference.engine_dir), manifest, precision)
    current, reason = engine_is_current(engine, expected)
    if current and not force:
        return engine, expected, False
    _log.warning("building TensorRT engine %s: %s", engine.name,
                 "rebuild requested" if current else reason)
    with cuda.current():
        build_engine(onnx_path, engine, expected, timing_cache=engine.parent / "timing.cache",
                     profile=profile)
    return engine, expected, True


def tensorrt_backend_for(cfg: Config, manifest: ModelManifest, precision: str,
                         onnx_path: Path, *, cuda: CudaApi | None = None,
                         max_batch: int | None = None) -> TensorRTBackend:
    """The TensorRT backend for a verified model file, built first unless its stamp matches.

    ``max_batch``: the assay's largest batch, for a model whose batch is its only
    dynamic dimension (the HEp-2 classifier); unused for an image model (HER2).
    """
    cuda = cuda or CudaApi()
    try:
        engine, _, _ = ensure_engine(cfg, manifest, precision, onnx_path, cuda,
                                     max_batch=max_batch)
        return TensorRTBackend(engine, manifest.input.name, output_name=manifest.output_name,
                               cuda=cuda)
    except BaseException:
        cuda.close()  # a failed load must not keep the GPU context retained
        raise
