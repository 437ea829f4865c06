"""A stand-in for the libgpiod v2 Python bindings (``gpiod`` >= 2.0), following their API.

``request_lines(path, config=..., consumer=...)`` opens the chip and requests lines as
``gpiod.Chip(path).request_lines`` does: ``config`` maps an offset, a line name or a tuple
of them to a ``LineSettings`` (or None); a line configured twice is a ValueError; a path
that is not a chip raises FileNotFoundError. As in the real bindings the enums are
checked when the request is made (settings) and when values are set: ``set_value(line,
Value)``/``set_values({line: Value})`` take ``line.Value`` members; an int or bool fails
with AttributeError, as the C extension (which reads ``value.value``) does;
using or releasing a released request raises ``RequestReleasedError``.

A :class:`GpioRig` describes the chips present and records every request;
:meth:`GpioRig.modules` builds ``gpiod`` and ``gpiod.line`` modules for ``sys.modules``.
"""

from __future__ import annotations

import enum
import threading
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class Direction(enum.Enum):
    AS_IS = 1
    INPUT = 2
    OUTPUT = 3


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1


class RequestReleasedError(Exception):
    """Raised by the real bindings when a released request is used."""

    def __init__(self) -> None:
        super().__init__("GPIO lines have been released")


@dataclass(repr=False)
class LineSettings:
    """The subset of ``gpiod.LineSettings`` an output needs (same field names, defaults)."""

    direction: Direction = Direction.AS_IS
    active_low: bool = False
    output_value: Value = Value.INACTIVE

    def check(self) -> None:
        """The types the real C extension insists on when the request is made."""
        if not isinstance(self.direction, Direction):
            raise TypeError(f"direction must be gpiod.line.Direction, not {self.direction!r}")
        if not isinstance(self.output_value, Value):
            raise TypeError(f"output_value must be gpiod.line.Value, not {self.output_value!r}")
        if not isinstance(self.active_low, bool):
            raise TypeError(f"active_low must be bool, not {self.active_low!r}")


@dataclass
class FakeChip:
    """One GPIO chip: how many lines and which of them have names."""

    num_lines: int = 32
    names: dict[str, int] | None = None

    def offset(self, line: int | str) -> int:
        if isinstance(line, str):
            if not self.names or line not in self.names:
                raise ValueError(f"unknown line name: {line}")
            return self.names[line]
        if not isinstance(line, int) or isinstance(line, bool):
            raise TypeError(f"line must be an int offset or a str name, not {line!r}")
        if not 0 <= line < self.num_lines:
            raise ValueError(f"offset {line} out of range (chip has {self.num_lines} lines)")
        return line


class FakeLineRequest:
    """Records the physical level of each requested line over time."""

    def __init__(self, chip: FakeChip, settings: dict[int, LineSettings],
                 consumer: str | None, names: dict[str, int],
                 on_release: Any = None) -> None:
        self.chip = chip
        self._on_release = on_release
        self.settings = settings
        self.consumer = consumer
        self._names = names
        self.release_calls = 0
        self.released = False
        self._lock = threading.Lock()
        # (monotonic time, {offset: logical Value}) after each change
        self.history: list[tuple[float, dict[int, Value]]] = []
        self.values = {off: s.output_value for off, s in settings.items()}
        self.history.append((time.monotonic(), dict(self.values)))

    def physical(self, offset: int) -> int:
        """The electrical level (active_low inverts it)."""
        active = self.values[offset] is Value.ACTIVE
        return int(active != self.settings[offset].active_low)

    def _check_released(self) -> None:
        if self.released:
            raise RequestReleasedError()

    def set_value(self, line: int | str, value: Value) -> None:
        self.set_values({line: value})

    def set_values(self, values: dict[Any, Value]) -> None:
        self._check_released()
        if not isinstance(values, dict):
            raise TypeError("values must be a dict of line -> gpiod.line.Value")
        mapped = {}
        for line, value in values.items():
            offset = self._names[line] if isinstance(line, str) else line
            if offset not in self.settings:
                raise ValueError(f"line {line!r} is not part of this request")
            if not hasattr(value, "value"):
                # The C extension reads value.value: an int or bool fails just so.
                raise AttributeError(f"{type(value).__name__!r} object has no attribute "
                                     "'value'")
            if not isinstance(value, Value):  # stricter than the real one (any .value)
                raise TypeError(f"value must be gpiod.line.Value, not {value!r}")
            if self.settings[offset].direction is not Direction.OUTPUT:
                raise PermissionError(1, "Operation not permitted: line is not an output")
            mapped[offset] = value
        with self._lock:
            self.values.update(mapped)
            self.history.append((time.monotonic(), dict(self.values)))

    def release(self) -> None:
        self.release_calls += 1
        self._check_released()
        self.released = True
        if self._on_release is not None:
            self._on_release(self)


class GpioRig:
    """The GPIO chips present (path -> chip) and every request made on them."""

    def __init__(self, chips: dict[str, FakeChip] | None = None) -> None:
        self.chips = {"/dev/gpiochip0": FakeChip()} if chips is None else chips
        self.requests: list[FakeLineRequest] = []
        self.busy: set[tuple[str, int]] = set()

    def request_lines(self, path: str, config: dict[Any, LineSettings | None],
                      consumer: str | None = None, event_buffer_size: int | None = None,
                      output_values: dict[Any, Value] | None = None) -> FakeLineRequest:
        if not isinstance(path, str):
            raise TypeError(f"path must be str, not {type(path).__name__}")
        if path not in self.chips:
            raise FileNotFoundError(2, "No such file or directory", path)
        if consumer is not None and not isinstance(consumer, str):
            raise TypeError("consumer must be str")
        if not isinstance(config, dict) or not config:
            raise TypeError("config must be a non-empty dict of lines -> LineSettings")
        chip = self.chips[path]
        settings: dict[int, LineSettings] = {}
        names: dict[str, int] = {}
        for key, value in config.items():
            lines: Iterable[Any] = [key] if isinstance(key, (int, str)) else key
            chosen = value or LineSettings()
            if not isinstance(chosen, LineSettings):
                raise TypeError(f"settings must be gpiod.LineSettings, not {chosen!r}")
            chosen.check()
            for line in lines:
                offset = chip.offset(line)
                if offset in settings:
                    raise ValueError(f"line must be configured exactly once - offset {offset} "
                                     "repeats")
                if isinstance(line, str):
                    names[line] = offset
                settings[offset] = chosen
        for offset in settings:
            if (path, offset) in self.busy:
                raise OSError(16, "Device or resource busy", path)
        req = FakeLineRequest(chip, settings, consumer, names,
                              on_release=lambda r: self.busy.difference_update(
                                  (path, off) for off in r.settings))
        self.busy.update((path, off) for off in settings)
        self.requests.append(req)
        return req

    def modules(self) -> tuple[types.ModuleType, types.ModuleType]:
        """``gpiod`` and ``gpiod.line`` modules whose ``request_lines`` use this rig."""
        line = types.ModuleType("gpiod.line")
        line.Direction = Direction  # type: ignore[attr-defined]
        line.Value = Value  # type: ignore[attr-defined]
        gpiod = types.ModuleType("gpiod")
        gpiod.line = line  # type: ignore[attr-defined]
        gpiod.LineSettings = LineSettings  # type: ignore[attr-defined]
        gpiod.RequestReleasedError = RequestReleasedError  # type: ignore[attr-defined]
        gpiod.request_lines = self.request_lines  # type: ignore[attr-defined]
        return gpiod, line
