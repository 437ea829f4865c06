"""Status light on three GPIO lines through libgpiod v2 (``gpiod.request_lines``).

GPIO lines are on or off, so a colour channel is lit when its 0-255 level is above zero
(amber shows as yellow). Blinking needs a small thread here: it waits on a stop Event
for each half period, so a change of state or ``close()`` ends it at once. ``gpiod`` is
imported when the backend is opened, so boxes without it (none/sysfs) never need it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import Any

from appliance.outputs.leds.patterns import OFF, PATTERNS, LedsClosedError, LedState, Pattern

_log = logging.getLogger(__name__)
CONSUMER = "eyepiece"
_JOIN_TIMEOUT_S = 2.0  # a blink half-period is at most a few seconds and ends on the Event


class GpiodUnavailableError(ImportError):
    """The libgpiod v2 Python bindings are missing (or are the old v1 ones)."""


def import_gpiod() -> tuple[ModuleType, ModuleType]:
    """The ``gpiod`` module and its ``gpiod.line`` (Direction, Value), or a clear error."""
    try:
        gpiod = importlib.import_module("gpiod")
        line = importlib.import_module("gpiod.line")
    except ImportError as exc:
        raise GpiodUnavailableError(
            "leds.backend = 'gpiod' needs the libgpiod v2 Python bindings: install "
            "python3-libgpiod (Debian/Raspberry Pi OS, v2 from bookworm on) or "
            f"`pip install gpiod` (>= 2.0) in the service's venv ({exc})") from exc
    if not hasattr(gpiod, "request_lines"):
        raise GpiodUnavailableError(
            "the installed gpiod module is the libgpiod v1 API (no gpiod.request_lines): "
            "install the v2 bindings, `pip install 'gpiod>=2.0'`")
    return gpiod, line


def line_id(text: str) -> int | str:
    """A config line: an offset when all digits, else a line name (gpiod looks names up)."""
    return int(text) if text.isdigit() else text


class GpiodLeds:
    """Three output lines (red, green, blue) of one GPIO chip showing a :class:`Pattern`."""

    def __init__(self, chip_path: str, lines: tuple[int | str, int | str, int | str], *,
                 active_low: bool = False, patterns: dict[LedState, Pattern] | None = None,
                 gpiod: ModuleType | None = None, line: ModuleType | None = None) -> None:
        if len(lines) != 3:
            raise ValueError(f"lines {lines!r}: three lines (red, green, blue) expected")
        if gpiod is None or line is None:
            gpiod, line = import_gpiod()
        self._lines = tuple(lines)
        self._active = line.Value.ACTIVE
        self._inactive = line.Value.INACTIVE
        self._patterns = PATTERNS if patterns is None else patterns
        settings = gpiod.LineSettings(direction=line.Direction.OUTPUT,
                                      output_value=line.Value.INACTIVE, active_low=active_low)
        try:
            self._request: Any = gpiod.request_lines(chip_path, consumer=CONSUMER,
                                                     config={self._lines: settings})
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot request GPIO lines {list(self._lines)} on {chip_path} "
                          f"for the status LEDs: {exc}") from exc
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Pattern | None = None
        self._closed = False
        self._logged = False
        self.errors = 0

    def show(self, state: LedState) -> None:
        """Show ``state``'s pattern (nothing changes when it is already shown)."""
        self.apply(self._patterns[state])

    def apply(self, pattern: Pattern) -> None:
        """Show ``pattern``: set the lines, and start a blink thread when it blinks."""
        with self._lock:
            if self._closed:
                raise LedsClosedError("status LEDs used after close()")
            if pattern == self._current:
                return
            self._stop_blinking()
            self._current = pattern
            self._set(pattern.colour)
            if not pattern.solid and any(pattern.colour):
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._blink, args=(pattern, self._stop),
                                                name="leds-blink", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop blinking, turn the lines off and release them; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_blinking()
            self._set(OFF.colour)
            try:
                self._request.release()
            except Exception as exc:  # closing must finish; the reason is logged
                self._failed(exc)

    @property
    def blinking(self) -> bool:
        """A blink thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _blink(self, pattern: Pattern, stop: threading.Event) -> None:
        # Starts lit (set by apply): first the dark half, then alternate until told to stop.
        while not stop.wait(pattern.on_ms / 1000):
            self._set(OFF.colour)
            if stop.wait(pattern.off_ms / 1000):
                return
            self._set(pattern.colour)

    def _stop_blinking(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            _log.error("status LED blink thread did not stop within %.0f s", _JOIN_TIMEOUT_S)
        self._thread = None

    def _set(self, colour: tuple[int, int, int]) -> None:
        values = {ln: self._active if level else self._inactive
                  for ln, level in zip(self._lines, colour, strict=True)}
        try:
            self._request.set_values(values)
        except Exception as exc:  # OSError, or gpiod's own RequestReleasedError
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self._logged:
            self._logged = True
            _log.error("status LEDs on GPIO lines %s failed (further errors counted, not "
                       "logged): %s: %s", list(self._lines), type(exc).__name__, exc)
