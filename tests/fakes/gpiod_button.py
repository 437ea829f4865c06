"""A stand-in for the libgpiod v2 Python bindings' *input* side: edge events on input lines.

It follows the documented API of ``gpiod`` >= 2.0: ``gpiod.line`` holds the enums
(``Direction``, ``Value``, ``Bias``, ``Drive``, ``Edge``, ``Clock``); ``gpiod.LineSettings``
is a dataclass with the same fields and defaults (``debounce_period`` a ``timedelta``, read
through ``total_seconds()`` as the real bindings do; the enums are read through ``.value``);
``gpiod.request_lines(path, config=..., consumer=...)`` returns a request whose
``wait_edge_events(timeout)`` takes a ``timedelta``, float seconds or None and whose
``read_edge_events(max_events=None)`` returns ``gpiod.EdgeEvent`` objects (``event_type``
an ``EdgeEvent.Type``, ``timestamp_ns``, ``line_offset``, ``global_seqno``, ``line_seqno``).

A test drives a line's *electrical* level with :meth:`ButtonRig.drive`; as the kernel does,
the fake turns it into a logical edge (inverted by ``active_low``), keeps only the edges
``edge_detection`` asks for, and queues them. Kernel debounce is recorded, not simulated.
Line offsets and names resolve through :class:`tests.fakes.gpiod.FakeChip`.
"""

from __future__ import annotations

import enum
import threading
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tests.fakes.gpiod import Direction, FakeChip, RequestReleasedError, Value


class Bias(enum.Enum):
    AS_IS = 1
    UNKNOWN = 2
    DISABLED = 3
    PULL_UP = 4
    PULL_DOWN = 5


class Drive(enum.Enum):
    PUSH_PULL = 1
    OPEN_DRAIN = 2
    OPEN_SOURCE = 3


class Edge(enum.Enum):
    NONE = 1
    RISING = 2
    FALLING = 3
    BOTH = 4


class Clock(enum.Enum):
    MONOTONIC = 1
    REALTIME = 2
    HTE = 3


@dataclass(repr=False)
class LineSettings:
    """``gpiod.LineSettings``: same fields, same defaults."""

    direction: Direction = Direction.AS_IS
    edge_detection: Edge = Edge.NONE
    bias: Bias = Bias.AS_IS
    drive: Drive = Drive.PUSH_PULL
    active_low: bool = False
    debounce_period: timedelta = field(default_factory=timedelta)
    event_clock: Clock = Clock.MONOTONIC
    output_value: Value = Value.INACTIVE

    def to_ext(self) -> dict[str, Any]:
        """What the real bindings hand to the C extension: fails where theirs fails."""
        enums = {"direction": Direction, "edge_detection": Edge, "bias": Bias, "drive": Drive,
                 "event_clock": Clock, "output_value": Value}
        for name, kind in enums.items():
            if not isinstance(getattr(self, name), kind):  # stricter than `.value`
                raise TypeError(f"{name} must be gpiod.line.{kind.__name__}, not "
                                f"{getattr(self, name)!r}")
        if not isinstance(self.active_low, bool):
            raise TypeError(f"active_low must be bool, not {self.active_low!r}")
        # The real bindings call total_seconds(): a float fails with AttributeError.
        debounce_us = int(self.debounce_period.total_seconds() * 1_000_000)
        return {"direction": self.direction, "debounce_us": debounce_us}


class EdgeEvent:
    """``gpiod.EdgeEvent``: one edge on one line."""

    class Type(enum.Enum):
        RISING_EDGE = 1
        FALLING_EDGE = 2

    def __init__(self, event_type: EdgeEvent.Type, timestamp_ns: int, line_offset: int,
                 global_seqno: int, line_seqno: int) -> None:
        self.event_type = event_type
        self.timestamp_ns = timestamp_ns
        self.line_offset = line_offset
        self.global_seqno = global_seqno
        self.line_seqno = line_seqno


def _seconds(timeout: timedelta | float | None) -> float | None:
    if timeout is None or isinstance(timeout, timedelta):
        return None if timeout is None else timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a timedelta, float seconds or None, not {timeout!r}")
    return float(timeout)


class FakeInputRequest:
    """A request of input lines with an edge-event queue."""

    def __init__(self, chip: FakeChip, settings: dict[int, LineSettings],
                 consumer: str | None, names: dict[str, int], levels: dict[int, int]) -> None:
        self.chip = chip
        self.settings = settings
        self.consumer = consumer
        self.names = names
        self.levels = levels  # electrical level of each line, shared with the rig
        self.released = False
        self.release_calls = 0
        self.waits: list[float | None] = []
        self._events: list[EdgeEvent] = []
        self._cond = threading.Condition()
        self._seqno = 0
        self._line_seqno: dict[int, int] = {}

    def _check_released(self) -> None:
        if self.released:
            raise RequestReleasedError()

    def logical(self, offset: int) -> bool:
        """The line's logical value: its level, inverted when active-low."""
        return bool(self.levels[offset]) != self.settings[offset].active_low

    def edge(self, offset: int, rising: bool, timestamp_ns: int) -> None:
        """Queue a logical edge if the line's edge detection asks for it (as the kernel)."""
        wanted = {Edge.BOTH: (True, False), Edge.RISING: (True,),
                  Edge.FALLING: (False,)}.get(self.settings[offset].edge_detection, ())
        if rising not in wanted:
            return
        with self._cond:
            self._seqno += 1
            self._line_seqno[offset] = self._line_seqno.get(offset, 0) + 1
            kind = EdgeEvent.Type.RISING_EDGE if rising else EdgeEvent.Type.FALLING_EDGE
            self._events.append(EdgeEvent(kind, timestamp_ns, offset, self._seqno,
                                          self._line_seqno[offset]))
            self._cond.notify_all()

    def get_value(self, line: int | str) -> Value:
        self._check_released()
        offset = self.names[line] if isinstance(line, str) else line
        return Value.ACTIVE if self.logical(offset) else Value.INACTIVE

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        self._check_released()
        seconds = _seconds(timeout)
        self.waits.append(seconds)
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._events) or self.released, seconds) \
                and bool(self._events)

    def read_edge_events(self, max_events: int | None = None) -> list[EdgeEvent]:
        self._check_released()
        with self._cond:
            count = len(self._events) if max_events is None else max_events
            taken, self._events = self._events[:count], self._events[count:]
        return taken

    def release(self) -> None:
        self.release_calls += 1
        self._check_released()
        with self._cond:
            self.released = True
            self._cond.notify_all()


class ButtonRig:
    """The GPIO chips present, the electrical level of their lines, and every request."""

    def __init__(self, chips: dict[str, FakeChip] | None = None) -> None:
        self.chips = {"/dev/gpiochip0": FakeChip()} if chips is None else chips
        self.requests: list[FakeInputRequest] = []
        self.levels: dict[str, dict[int, int]] = {path: {} for path in self.chips}

    def request_lines(self, path: str, config: dict[Any, LineSettings | None],
                      consumer: str | None = None, event_buffer_size: int | None = None,
                      output_values: dict[Any, Value] | None = None) -> FakeInputRequest:
        if not isinstance(path, str):
            raise TypeError(f"path must be str, not {type(path).__name__}")
        if path not in self.chips:
            raise FileNotFoundError(2, "No such file or directory", path)
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
            chosen.to_ext()
            for line in lines:
                offset = chip.offset(line)
                if offset in settings:
                    raise ValueError(f"line must be configured exactly once - offset {offset} "
                                     "repeats")
                if isinstance(line, str):
                    names[line] = offset
                settings[offset] = chosen
        levels = self.levels[path]
        for offset, chosen in settings.items():  # an open line floats to its pull
            levels.setdefault(offset, 0 if chosen.bias is Bias.PULL_DOWN else 1)
        req = FakeInputRequest(chip, settings, consumer, names, levels)
        self.requests.append(req)
        return req

    def drive(self, line: int | str, level: int, *, path: str = "/dev/gpiochip0",
              timestamp_ns: int | None = None) -> None:
        """Set a line's electrical level (0/1); a change is an edge for its requests."""
        offset = self.chips[path].offset(line)
        levels = self.levels[path]
        if levels.get(offset) == level:
            return
        levels[offset] = level
        stamp = time.monotonic_ns() if timestamp_ns is None else timestamp_ns
        for req in self.requests:
            if not req.released and offset in req.settings and req.levels is levels:
                req.edge(offset, rising=bool(level) != req.settings[offset].active_low,
                         timestamp_ns=stamp)

    def modules(self) -> tuple[types.ModuleType, types.ModuleType]:
        """``gpiod`` and ``gpiod.line`` modules whose ``request_lines`` use this rig."""
        line = types.ModuleType("gpiod.line")
        for enum_type in (Direction, Value, Bias, Drive, Edge, Clock):
            setattr(line, enum_type.__name__, enum_type)
        gpiod = types.ModuleType("gpiod")
        gpiod.line = line  # type: ignore[attr-defined]
        gpiod.LineSettings = LineSettings  # type: ignore[attr-defined]
        gpiod.EdgeEvent = EdgeEvent  # type: ignore[attr-defined]
        gpiod.RequestReleasedError = RequestReleasedError  # type: ignore[attr-defined]
        gpiod.request_lines = self.request_lines  # type: ignore[attr-defined]
        return gpiod, line
