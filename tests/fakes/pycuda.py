"""A stand-in for ``pycuda`` (``pycuda.driver``) following its documented API.

Device memory is simulated by a :class:`FakeGpu`: ``mem_alloc`` returns an allocation
whose ``int()`` is an address into it, and freed memory is unusable. As on a GPU,
``memcpy_htod_async``/``memcpy_dtoh_async`` and work queued by a fake TensorRT context
only happen when the stream is synchronized, so code that reads results before
``Stream.synchronize()`` gets stale data, as it would on the device. Every call that
touches the device requires a current context (``Context.push``), as pycuda does.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np


class LogicError(RuntimeError):
    """pycuda.driver.LogicError: e.g. no current context."""


class FakeGpu:
    """Simulated device memory, streams and the context stack of one thread."""

    def __init__(self, name: str = "Orin (fake)", capability: tuple[int, int] = (8, 7)) -> None:
        self.name = name
        self.capability = capability
        self.memory: dict[int, np.ndarray] = {}  # address -> uint8 bytes
        self.next_address = 0x1000
        self.streams: dict[int, list[Callable[[], None]]] = {}
        self.context_stack: list[object] = []
        self.pagelocked: int = 0
        self.detached = 0

    def require_context(self) -> None:
        if not self.context_stack:
            raise LogicError("invalid device context - no currently active context?")

    def alloc(self, nbytes: int) -> int:
        self.require_context()
        address = self.next_address
        self.memory[address] = np.zeros(nbytes, np.uint8)
        self.next_address += nbytes + 256
        return address

    def view(self, address: int, nbytes: int) -> np.ndarray:
        if address not in self.memory:
            raise LogicError(f"invalid device pointer {address:#x}")
        mem = self.memory[address]
        if nbytes > mem.size:
            raise LogicError(f"access of {nbytes} bytes beyond allocation of {mem.size}")
        return mem[:nbytes]

    def enqueue(self, handle: int, op: Callable[[], None]) -> None:
        self.require_context()
        if handle not in self.streams:
            raise LogicError(f"unknown stream handle {handle}")
        self.streams[handle].append(op)

    def module(self) -> tuple[types.ModuleType, types.ModuleType]:
        """``(pycuda, pycuda.driver)`` module objects bound to this GPU."""
        driver = types.ModuleType("pycuda.driver")
        gpu = self

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                self.address = gpu.alloc(nbytes)
                self.nbytes = nbytes

            def __int__(self) -> int:
                return self.address

            def free(self) -> None:
                gpu.memory.pop(self.address, None)

        class Stream:
            _next = 1

            def __init__(self) -> None:
                gpu.require_context()
                self.handle = Stream._next
                Stream._next += 1
                gpu.streams[self.handle] = []

            def synchronize(self) -> None:
                gpu.require_context()
                ops, gpu.streams[self.handle] = gpu.streams[self.handle], []
                for op in ops:
                    op()

        class Context:
            def push(self) -> None:
                gpu.context_stack.append(self)

            @staticmethod
            def pop() -> None:
                if not gpu.context_stack:
                    raise LogicError("context stack is empty")
                gpu.context_stack.pop()

            def detach(self) -> None:
                gpu.detached += 1

        class Device:
            def __init__(self, ordinal: int) -> None:
                if ordinal != 0:
                    raise LogicError(f"invalid device ordinal {ordinal}")

            def name(self) -> str:
                return gpu.name

            def compute_capability(self) -> tuple[int, int]:
                return gpu.capability

            def retain_primary_context(self) -> Context:
                return Context()

        def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
            gpu.pagelocked += 1
            return np.empty(shape, dtype)

        def mem_alloc(nbytes: int) -> DeviceAllocation:
            return DeviceAllocation(nbytes)

        def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
            data = np.ascontiguousarray(src).view(np.uint8).reshape(-1).copy()
            gpu.enqueue(stream.handle, lambda: gpu.view(int(dest), data.size).__setitem__(
                slice(None), data))

        def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
            flat = dest.reshape(-1).view(np.uint8)
            gpu.enqueue(stream.handle, lambda: flat.__setitem__(
                slice(None), gpu.view(int(src), flat.size)))

        driver.LogicError = LogicError  # type: ignore[attr-defined]
        driver.init = lambda: None  # type: ignore[attr-defined]
        driver.Device = Device  # type: ignore[attr-defined]
        driver.Context = Context  # type: ignore[attr-defined]
        driver.Stream = Stream  # type: ignore[attr-defined]
        driver.pagelocked_empty = pagelocked_empty  # type: ignore[attr-defined]
        driver.mem_alloc = mem_alloc  # type: ignore[attr-defined]
        driver.memcpy_htod_async = memcpy_htod_async  # type: ignore[attr-defined]
        driver.memcpy_dtoh_async = memcpy_dtoh_async  # type: ignore[attr-defined]
        package = types.ModuleType("pycuda")
        package.driver = driver  # type: ignore[attr-defined]
        return package, driver
