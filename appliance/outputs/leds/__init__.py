"""The box's status light: one state machine (:mod:`.patterns`) and three backends.

``open_leds(cfg.leds)`` gives a :class:`LedSink`: ``none`` (no light), ``sysfs`` (Linux
LED class, blinking by the kernel) or ``gpiod`` (libgpiod v2 lines, blinking by a
thread). See docs/leds.md for what each colour and rhythm means to a technician.
"""

from __future__ import annotations

from typing import Protocol

from appliance.config import LedsConfig
from appliance.outputs.leds.patterns import (
    OFF,
    PATTERNS,
    LedsClosedError,
    LedState,
    Pattern,
    led_state,
)

__all__ = ["OFF", "PATTERNS", "LedSink", "LedState", "LedsClosedError", "NoLeds", "Pattern",
           "led_state", "open_leds"]


class LedSink(Protocol):
    """Something that shows a :class:`LedState`."""

    def show(self, state: LedState) -> None:
        """Show ``state`` (cheap when it is already shown)."""

    def close(self) -> None:
        """Turn the light off and free it; idempotent."""


class NoLeds:
    """``leds.backend = "none"``: a box without a status light."""

    def show(self, state: LedState) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def open_leds(cfg: LedsConfig) -> LedSink:
    """The status light the config asks for.

    Raises GpiodUnavailableError (an ImportError naming the package to install) when
    ``gpiod`` is chosen and its bindings are missing, and OSError when its lines cannot
    be requested. A sysfs light never raises: its errors are logged and counted.
    """
    names = (cfg.red, cfg.green, cfg.blue)
    if cfg.backend == "none":
        return NoLeds()
    if cfg.backend == "sysfs":
        from appliance.outputs.leds.sysfs import SysfsLeds

        return SysfsLeds(cfg.sysfs_root, names)
    if cfg.backend == "gpiod":
        from appliance.outputs.leds.gpiod_backend import GpiodLeds, line_id

        lines = (line_id(cfg.red), line_id(cfg.green), line_id(cfg.blue))
        return GpiodLeds(cfg.gpiochip, lines, active_low=cfg.active_low)
    raise ValueError(f"leds.backend {cfg.backend!r}: expected none, sysfs or gpiod")
