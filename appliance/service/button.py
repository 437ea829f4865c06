"""The optional case button: one push button on a GPIO line, decoded into two actions.

A short press (released before ``long_press_s``) is :attr:`ButtonAction.CASE`: the service
opens a case when none is open, else closes the open one. A long press is
:attr:`ButtonAction.CONTROL`: start a control check, or finish the one in progress. The long
press acts when the threshold is reached while the button is still held, not at release, so
the user sees the box react and knows to let go.

:class:`PressDecoder` is the pure state machine (fed timed edges and clock ticks, no threads,
no GPIO); :class:`CaseButton` owns the reader thread over an :class:`EdgeSource` (the libgpiod
adapter in :mod:`appliance.service.button_gpiod`, or a fake in tests) and calls ``on_action``
from that thread, so the callback must be thread-safe.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from appliance.config import ButtonConfig

_log = logging.getLogger(__name__)

# The reader wakes at least this often even without edges: to notice stop() and to fire a
# long press on time. Edges wake it at once, so this only bounds the stop latency.
_POLL_S = 0.25
_JOIN_TIMEOUT_S = 2.0  # one poll plus a slow callback; longer means the thread is stuck
_RETRY_S = 1.0  # after a failed read: a line that keeps failing must not spin a core


class ButtonAction(enum.Enum):
    """What a press asks the service to do."""

    CASE = "case"  # short press: open a case, or close the open one
    CONTROL = "control"  # long press: start a control check, or finish it


class PressDecoder:
    """Debounced edges and clock ticks in, :class:`ButtonAction` s out (pure, single-threaded).

    Times are seconds on one monotonic clock (edge timestamps and ticks alike). An edge
    within ``debounce_s`` of the previous accepted edge is contact bounce and ignored; when
    the line still differs from the accepted state once that window has passed, the
    decoder takes the line's level then, so a bounce that happens to be the last edge (a
    tap shorter than the window) never leaves the button "held" for ever. A release never
    preceded by a press (the button held at start-up) does nothing.
    """

    def __init__(self, long_press_s: float, debounce_s: float) -> None:
        if not long_press_s > 0:
            raise ValueError(f"long_press_s {long_press_s!r}: must be above 0 seconds")
        if not debounce_s >= 0:
            raise ValueError(f"debounce_s {debounce_s!r}: must be 0 or more seconds")
        self.long_press_s = long_press_s
        self.debounce_s = debounce_s
        self.pressed = False  # accepted (debounced) state
        self.bounces = 0  # edges ignored as contact bounce
        self._raw = False  # the line's level as last reported, accepted or not
        self._accepted_t: float | None = None  # time of the last accepted edge
        self._pressed_t = 0.0  # when the current press was accepted
        self._long_fired = False

    def edge(self, pressed: bool, t: float) -> list[ButtonAction]:
        """The line changed to ``pressed`` at ``t``; the actions now due, in order."""
        actions = self._advance(t)
        self._raw = pressed
        if self._accepted_t is not None and t - self._accepted_t < self.debounce_s:
            self.bounces += 1
            return actions
        if pressed != self.pressed:
            actions += self._accept(pressed, t)
        return actions

    def tick(self, t: float) -> list[ButtonAction]:
        """The clock reads ``t``: the actions due by then (a long press reaching its time)."""
        return self._advance(t)

    def next_deadline(self) -> float | None:
        """When a tick may next produce or settle something; None while nothing is pending."""
        due = [d for d in (self._settle_at(), self._long_at()) if d is not None]
        return min(due) if due else None

    def _settle_at(self) -> float | None:
        if self._raw == self.pressed or self._accepted_t is None:
            return None
        return self._accepted_t + self.debounce_s

    def _long_at(self) -> float | None:
        if not self.pressed or self._long_fired:
            return None
        return self._pressed_t + self.long_press_s

    def _advance(self, t: float) -> list[ButtonAction]:
        # Pending events (a long press threshold, a settled bounce) happen in time order.
        actions: list[ButtonAction] = []
        while True:
            settle, long_at = self._settle_at(), self._long_at()
            if long_at is not None and long_at <= t and (settle is None or long_at <= settle):
                self._long_fired = True
                actions.append(ButtonAction.CONTROL)
            elif settle is not None and settle <= t:
                actions += self._accept(self._raw, settle)
            else:
                return actions

    def _accept(self, pressed: bool, t: float) -> list[ButtonAction]:
        self.pressed = pressed
        self._accepted_t = t
        if pressed:
            self._pressed_t = t
            self._long_fired = False
            return []
        # A release: a short press unless the long press already acted.
        return [] if self._long_fired else [ButtonAction.CASE]


class EdgeSource(Protocol):
    """Where the button's edges come from (the libgpiod adapter, or a fake)."""

    def wait(self, timeout_s: float) -> list[tuple[bool, float]]:
        """Edges within ``timeout_s``: (pressed, monotonic seconds) each, oldest first."""
        ...

    def close(self) -> None:
        """Release the line."""
        ...


class ButtonClosedError(RuntimeError):
    """The case button was started after close()."""


class CaseButton:
    """A reader thread turning an :class:`EdgeSource`'s edges into ``on_action`` calls.

    ``on_action`` runs on the reader thread; an exception from it is logged with its
    traceback and the button keeps working. ``close()`` stops the thread, joins it with a
    timeout and closes the source; it may be called any number of times.
    """

    def __init__(self, source: EdgeSource, decoder: PressDecoder,
                 on_action: Callable[[ButtonAction], None], *,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = _POLL_S) -> None:
        self._source = source
        self._decoder = decoder
        self._on_action = on_action
        self._clock = clock
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.callback_errors = 0
        self.read_errors = 0

    def start(self) -> CaseButton:
        """Start the reader thread (once); returns self."""
        with self._lock:
            if self._closed:
                raise ButtonClosedError("case button started after close()")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="case-button",
                                                daemon=True)
                self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """The reader thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop and join the reader thread, then release the source; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if self._thread is not None:
                self._thread.join(_JOIN_TIMEOUT_S)
                if self._thread.is_alive():
                    _log.error("case button thread did not stop within %.0f s (a callback "
                               "still running?)", _JOIN_TIMEOUT_S)
            try:
                self._source.close()
            except Exception:  # closing must finish; the reason is logged
                _log.exception("case button: releasing the GPIO line failed")

    def __enter__(self) -> CaseButton:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                edges = self._source.wait(self._timeout())
            except Exception:
                self._read_failed()
                continue
            for pressed, t in edges:
                self._deliver(self._decoder.edge(pressed, t))
            self._deliver(self._decoder.tick(self._clock()))

    def _timeout(self) -> float:
        # Wake in time for the next long-press threshold, else poll for stop.
        deadline = self._decoder.next_deadline()
        if deadline is None:
            return self._poll_s
        return min(self._poll_s, max(0.0, deadline - self._clock()))

    def _read_failed(self) -> None:
        self.read_errors += 1
        if self.read_errors == 1:  # the first with its traceback; later ones counted
            _log.exception("case button: reading the GPIO line failed (retrying every "
                           "%.0f s; further errors counted, not logged)", _RETRY_S)
        self._stop.wait(_RETRY_S)

    def _deliver(self, actions: list[ButtonAction]) -> None:
        for action in actions:
            _log.info("case button: %s", action.value)
            try:
                self._on_action(action)
            except Exception:
                self.callback_errors += 1
                _log.exception("case button: handling the %s action failed", action.value)


def open_button(cfg: ButtonConfig,
                on_action: Callable[[ButtonAction], None]) -> CaseButton | None:
    """The started case button the config asks for, or None when ``backend = "none"``.

    Raises GpiodUnavailableError (an ImportError naming python3-libgpiod) when the gpiod
    bindings are missing, and OSError when the line cannot be requested.
    """
    if cfg.backend == "none":
        return None
    if cfg.backend != "gpiod":
        raise ValueError(f"button.backend {cfg.backend!r}: expected none or gpiod")
    if not cfg.line:
        raise ValueError("button.backend = 'gpiod' needs button.line (an offset or a name)")
    from appliance.service.button_gpiod import GpiodEdgeSource

    debounce_s = cfg.debounce_ms / 1000
    source = GpiodEdgeSource(cfg.gpiochip, cfg.line, active_low=cfg.active_low, bias=cfg.bias,
                             debounce_s=debounce_s)
    return CaseButton(source, PressDecoder(cfg.long_press_s, debounce_s), on_action).start()
