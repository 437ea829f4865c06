"""The capture loop: open a source, read it, and reopen it with back-off when it fails.

::

    supervisor = CaptureSupervisor(lambda: open_source(cfg.source, cfg.input), stop=stop,
                                   reconnect_min_s=0.5, reconnect_max_s=10.0)
    for item in supervisor.frames():   # Frame or RejectedFrame
        ...

``open_source`` builds a source (a new one for every attempt is fine) and the
supervisor calls its ``open()``. A :class:`SourceFault` (from open or read) puts the
loop in FAULT with the reason, closes the source, waits (``reconnect_min_s``,
doubling up to ``reconnect_max_s``; back to the minimum after a good frame) and
tries again. A stop ends the wait at once. :class:`SourceError` (a configuration
problem) is not retried: it propagates. :class:`EndOfStream` ends the iterator in
ENDED; a stop ends it in CLOSED.

States: OPENING (first open) → STREAMING (first frame) → FAULT (reason) → STREAMING
(first frame after a reopen) ... Reopening attempts stay in FAULT, so a camera
unplugged for an hour gives one FAULT line, not one per attempt; a fault with a new
reason is a new line. Sequence numbers run on across reopens.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import closing

from appliance.capture.frame import Frame
from appliance.capture.source import (
    EndOfStream,
    FrameSource,
    RejectedFrame,
    SourceFault,
    SourceState,
)

_log = logging.getLogger(__name__)

StateCallback = Callable[[SourceState, str], None]


def backoff_delays(minimum: float, maximum: float) -> Iterator[float]:
    """minimum, 2·minimum, 4·minimum, ... capped at maximum, forever."""
    delay = minimum
    while True:
        yield min(delay, maximum)
        delay = min(delay * 2.0, maximum)


class CaptureSupervisor:
    """Runs a :class:`FrameSource` until it ends or ``stop`` is set; see the module docstring.

    ``sleep`` waits between attempts and returns True when the loop must stop; the
    default is ``stop.wait``. Tests pass a recorder.
    """

    def __init__(self, open_source: Callable[[], FrameSource], *, stop: threading.Event,
                 reconnect_min_s: float, reconnect_max_s: float,
                 on_state: StateCallback | None = None,
                 sleep: Callable[[float], bool] | None = None) -> None:
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(f"reconnect delays must satisfy 0 < min <= max, got "
                             f"{reconnect_min_s} and {reconnect_max_s}")
        self._open_source = open_source
        self._stop = stop
        self._min, self._max = reconnect_min_s, reconnect_max_s
        self._on_state = on_state
        self._sleep = sleep or stop.wait
        self._state = SourceState.CLOSED
        self._reason = "not started"
        self.reconnects = 0  # reopening attempts after a fault
        self.faults = 0  # SourceFaults caught, from open or read
        self._seq = 0
        self._attempts = 0  # reopening attempts since the last frame

    @property
    def state(self) -> SourceState:
        """What the loop is doing now."""
        return self._state

    @property
    def reason(self) -> str:
        """Why it is in that state, in words (the fault's message in FAULT)."""
        return self._reason

    def frames(self) -> Generator[Frame | RejectedFrame, None, None]:
        """Yield frames and rejections with running sequence numbers; see the module docstring."""
        self._set(SourceState.OPENING, "opening the source")
        try:
            yield from self._run()
        except GeneratorExit:
            self._set(SourceState.CLOSED, "the consumer stopped reading")
            raise
        except Exception as exc:  # SourceError (configuration) or a bug: never retried
            self._set(SourceState.CLOSED, f"gave up: {type(exc).__name__}: {exc}")
            raise

    def _run(self) -> Generator[Frame | RejectedFrame, None, None]:
        """Sessions one after another, with back-off between them, until stop or the end."""
        delays = backoff_delays(self._min, self._max)
        while not self._stop.is_set():
            try:
                # closing(): a consumer that stops iterating still closes the source now.
                with closing(self._session()) as session:
                    for item in session:
                        delays = backoff_delays(self._min, self._max)  # a good frame resets it
                        yield item
            except SourceFault as exc:
                self.faults += 1
                self._set(SourceState.FAULT, str(exc) or type(exc).__name__)
            except EndOfStream as exc:
                self._set(SourceState.ENDED, str(exc) or "the source has no more frames")
                return
            if self._stop.is_set() or self._sleep(next(delays)) or self._stop.is_set():
                break
            self.reconnects += 1
            self._attempts += 1
            _log.debug("reopening (attempt %d): %s", self._attempts, self._reason)
        self._set(SourceState.CLOSED, "stopped")

    def _session(self) -> Generator[Frame | RejectedFrame, None, None]:
        """One opened source, read until it raises or stop is set; always closed after."""
        source = self._open_source()
        try:
            source.open()
            while not self._stop.is_set():
                item = source.read()
                if self._state is not SourceState.STREAMING:
                    self._set(SourceState.STREAMING, self._streaming_reason(source))
                self._seq += 1
                yield dataclasses.replace(item, seq=self._seq)
        finally:
            source.close()

    def _streaming_reason(self, source: FrameSource) -> str:
        attempts, self._attempts = self._attempts, 0
        if self._state is SourceState.FAULT:
            return f"{source.source_id} is delivering again after {attempts} reopening(s)"
        return f"{source.source_id} is delivering frames"

    def _set(self, state: SourceState, reason: str) -> None:
        """Record, log and report a state change; the same state and reason is no change."""
        if state is self._state and reason == self._reason:
            return
        self._state, self._reason = state, reason
        level = logging.WARNING if state is SourceState.FAULT else logging.INFO
        _log.log(level, "capture %s: %s", state.value, reason)
        if self._on_state is not None:
            self._on_state(state, reason)
