"""Status light through the Linux LED class (``/sys/class/leds/NAME``).

Each colour is one LED class device. A steady colour is ``trigger`` = ``none`` and a
``brightness``; a blinking one is ``trigger`` = ``timer`` with ``delay_on``/``delay_off``
in ms, so the kernel blinks the light and no thread of ours wakes up for it. The kernel
only creates ``delay_on``/``delay_off`` once the timer trigger is set, and a brightness
written while blinking sets the blink's brightness, hence the order of the writes.

A light is a convenience, never a reason to stop scoring: a missing LED or a permission
problem is logged once per LED (naming the file and the reason), counted in ``errors``
and otherwise ignored.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from appliance.outputs.leds.patterns import OFF, PATTERNS, LedsClosedError, LedState, Pattern

_log = logging.getLogger(__name__)


class SysfsLeds:
    """Three LED class devices (red, green, blue) showing one :class:`Pattern` at a time."""

    def __init__(self, root: str | Path, names: tuple[str, str, str], *,
                 patterns: dict[LedState, Pattern] | None = None) -> None:
        if len(names) != 3:
            raise ValueError(f"names {names!r}: three LEDs (red, green, blue) expected")
        self._dirs = tuple(Path(root) / name for name in names)
        self._patterns = PATTERNS if patterns is None else patterns
        self._max: dict[Path, int] = {}  # max_brightness per LED, read once
        self._logged: set[Path] = set()  # LEDs whose failure was already logged
        self._current: Pattern | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.errors = 0

    def show(self, state: LedState) -> None:
        """Show ``state``'s pattern (nothing is written when it is already shown)."""
        self.apply(self._patterns[state])

    def apply(self, pattern: Pattern) -> None:
        """Show ``pattern``; a repeat of the current one writes nothing."""
        with self._lock:
            if self._closed:
                raise LedsClosedError("status LEDs used after close()")
            self._apply(pattern)

    def close(self) -> None:
        """Turn the light off; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._apply(OFF)
            self._closed = True

    def _apply(self, pattern: Pattern) -> None:
        if pattern == self._current:
            return
        # Remembered even when a write fails: retrying every frame would only repeat the
        # error; the next change of state tries again.
        self._current = pattern
        for led, level in zip(self._dirs, pattern.colour, strict=True):
            self._set_led(led, level, pattern)

    def _set_led(self, led: Path, level: int, pattern: Pattern) -> None:
        try:
            brightness = _scaled(level, self._max_brightness(led))
            for name, value in _writes(brightness, pattern):
                _write(led / name, value)
        except (OSError, ValueError) as exc:
            self.errors += 1
            if led not in self._logged:
                self._logged.add(led)
                _log.error("status LED %s unusable (further errors counted, not logged): %s",
                           led, _why(exc))

    def _max_brightness(self, led: Path) -> int:
        if led not in self._max:
            text = (led / "max_brightness").read_text(encoding="ascii").strip()
            value = int(text) if text.isdigit() else 0
            if value < 1:
                raise ValueError(f"{led / 'max_brightness'} reads {text!r}, not a positive "
                                 "integer")
            if "timer" not in _triggers(led):
                raise ValueError(f"{led / 'trigger'} offers no 'timer' trigger (kernel built "
                                 "without CONFIG_LEDS_TRIGGER_TIMER): cannot blink")
            self._max[led] = value
        return self._max[led]


def _writes(brightness: int, pattern: Pattern) -> list[tuple[str, str]]:
    """The sysfs files to write, in order, for one LED of ``pattern``."""
    if brightness == 0 or pattern.solid:
        # Leaving the timer trigger first: a brightness written while blinking would only
        # change the blink's brightness.
        return [("trigger", "none"), ("brightness", str(brightness))]
    return [("trigger", "timer"), ("delay_on", str(pattern.on_ms)),
            ("delay_off", str(pattern.off_ms)), ("brightness", str(brightness))]


def _scaled(level: int, max_brightness: int) -> int:
    """A 0-255 channel level on the LED's own 0..max_brightness scale (lit stays lit)."""
    if level == 0:
        return 0
    return max(1, round(level * max_brightness / 255))


def _triggers(led: Path) -> list[str]:
    """The trigger names offered, e.g. ``[none] timer heartbeat`` -> none, timer, heartbeat."""
    text = (led / "trigger").read_text(encoding="ascii")
    return [word.strip("[]") for word in text.split()]


def _write(path: Path, value: str) -> None:
    # One write() per value: sysfs attributes take the whole value in a single write.
    with path.open("w", encoding="ascii") as f:
        f.write(value)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename} does not exist (no such LED, or wrong leds.sysfs_root/name)"
    if isinstance(exc, PermissionError):
        return (f"{exc.filename}: permission denied (the service user needs write access; "
                "see docs/leds.md)")
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
