"""The case button's line through libgpiod v2 (``gpiod.request_lines``): edges in, nothing else.

The line is an input with edge detection on both edges, the configured bias, the kernel's
debounce, and the monotonic event clock, so edge timestamps compare with ``time.monotonic()``.
With ``active_low`` the kernel reports logical edges: pressing a button wired to ground is a
*rising* edge (Linux commit 223ecaf140b1, "gpiolib: fix incorrect IRQ requesting of an
active-low lineevent", carried into the v2 character-device API), so a rising edge is always
a press here. ``gpiod`` is imported when the button is opened: boxes without one never need
the bindings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from appliance.outputs.leds.gpiod_backend import GpiodUnavailableError, import_gpiod, line_id

CONSUMER = "eyepiece-button"
_BIASES = {"pull_up": "PULL_UP", "pull_down": "PULL_DOWN", "disabled": "DISABLED",
           "as_is": "AS_IS"}


def import_gpiod_for_button() -> tuple[Any, Any]:
    """``gpiod`` and ``gpiod.line``, or an error naming the package the button needs."""
    try:
        return import_gpiod()
    except GpiodUnavailableError as exc:
        # The shared helper's message names the LEDs; say which setting needs the package.
        reason = exc.__cause__ if exc.__cause__ is not None else exc
        raise GpiodUnavailableError(
            "button.backend = 'gpiod' needs the libgpiod v2 Python bindings: install "
            "python3-libgpiod (Debian/Raspberry Pi OS, v2 from bookworm on) or "
            f"`pip install 'gpiod>=2.0'` in the service's venv ({reason})") from exc


def line_settings(gpiod: Any, line: Any, *, active_low: bool, bias: str,
                  debounce_s: float) -> Any:
    """The ``gpiod.LineSettings`` of the button's input line."""
    if bias not in _BIASES:
        raise ValueError(f"button.bias {bias!r}: expected one of {', '.join(_BIASES)}")
    return gpiod.LineSettings(
        direction=line.Direction.INPUT, edge_detection=line.Edge.BOTH,
        bias=getattr(line.Bias, _BIASES[bias]), active_low=active_low,
        debounce_period=timedelta(seconds=debounce_s), event_clock=line.Clock.MONOTONIC)


class GpiodEdgeSource:
    """The button's line as an :class:`~appliance.service.button.EdgeSource`."""

    def __init__(self, chip_path: str, line: int | str, *, active_low: bool = True,
                 bias: str = "pull_up", debounce_s: float = 0.03,
                 gpiod: Any = None, line_module: Any = None) -> None:
        if gpiod is None or line_module is None:
            gpiod, line_module = import_gpiod_for_button()
        self._line = line_id(line) if isinstance(line, str) else line
        self._rising = gpiod.EdgeEvent.Type.RISING_EDGE
        self._falling = gpiod.EdgeEvent.Type.FALLING_EDGE
        settings = line_settings(gpiod, line_module, active_low=active_low, bias=bias,
                                 debounce_s=debounce_s)
        try:
            self._request: Any = gpiod.request_lines(chip_path, consumer=CONSUMER,
                                                     config={self._line: settings})
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot request GPIO line {self._line!r} on {chip_path} for the "
                          f"case button: {exc}") from exc
        self._released = False

    def wait(self, timeout_s: float) -> list[tuple[bool, float]]:
        """Edges within ``timeout_s``: (pressed, monotonic seconds), oldest first."""
        if not self._request.wait_edge_events(timeout_s):
            return []
        return [self._edge(event) for event in self._request.read_edge_events()]

    def close(self) -> None:
        """Release the line; later calls do nothing."""
        if self._released:
            return
        self._released = True
        self._request.release()

    def _edge(self, event: Any) -> tuple[bool, float]:
        if event.event_type == self._rising:
            pressed = True
        elif event.event_type == self._falling:
            pressed = False
        else:
            raise ValueError(f"unexpected gpiod edge event type {event.event_type!r}")
        return pressed, event.timestamp_ns / 1e9
