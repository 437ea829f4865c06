"""Which light the box shows: a pure state machine from the health state, and its patterns.

The box has one RGB status light. Every state has both a colour and a blink rhythm of its
own, so a technician with a colour-vision deficiency (about 1 in 12 men, mostly red-green)
can still tell the states apart by the rhythm alone:

* READY is the only steady light; SCORING is the only one that is mostly on with a short
  dip; BOOTING blinks slowly and evenly; ATTENTION blinks evenly three times as fast;
  BROKER_OFFLINE is mostly off with a short flash; FAULT flickers fast.
* Colours follow the blue-yellow axis that red-green deficiencies keep where a choice
  exists: ATTENTION is amber and SCORING is blue. Red (fault) and green (ready) are kept
  because technicians expect them, and their rhythms (fast flicker, steady) differ most.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.service.health import Health


class LedState(enum.Enum):
    """What the status light tells the technician."""

    BOOTING = "booting"  # service started, camera/model/store not up yet
    READY = "ready"  # up, nothing in view being analysed
    SCORING = "scoring"  # a field in view is being analysed
    ATTENTION = "attention"  # the last field needs the user: out of focus, no tissue...
    BROKER_OFFLINE = "broker_offline"  # scoring works, results wait on disk for the broker
    FAULT = "fault"  # camera lost, model refused, disk full, too hot


class LedsClosedError(RuntimeError):
    """A status light was used after ``close()``."""


@dataclass(frozen=True)
class Pattern:
    """One RGB colour (0-255 per channel) and a blink rhythm; solid when ``off_ms == 0``."""

    colour: tuple[int, int, int]
    on_ms: int
    off_ms: int

    def __post_init__(self) -> None:
        if len(self.colour) != 3 or any(not 0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour {self.colour!r}: three channels of 0-255 expected")
        if self.on_ms < 0 or self.off_ms < 0:
            raise ValueError(f"on_ms={self.on_ms}, off_ms={self.off_ms}: must not be negative")
        if self.off_ms and not self.on_ms:
            raise ValueError("a blinking pattern needs on_ms > 0 (use OFF for a dark light)")

    @property
    def solid(self) -> bool:
        """A steady light (no blinking)."""
        return self.off_ms == 0


RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
AMBER = (255, 128, 0)  # on on/off GPIO lines this shows as yellow (red + green)
MAGENTA = (255, 0, 255)
WHITE = (255, 255, 255)

OFF = Pattern((0, 0, 0), 0, 0)

PATTERNS: dict[LedState, Pattern] = {
    LedState.BOOTING: Pattern(WHITE, 1000, 1000),  # slow even blink
    LedState.READY: Pattern(GREEN, 0, 0),  # steady
    LedState.SCORING: Pattern(BLUE, 1800, 200),  # mostly on, short dip
    LedState.ATTENTION: Pattern(AMBER, 300, 300),  # quick even blink
    LedState.BROKER_OFFLINE: Pattern(MAGENTA, 150, 1850),  # short flash every 2 s
    LedState.FAULT: Pattern(RED, 100, 100),  # fast flicker (5 Hz)
}


def led_state(health: Health, *, started: bool, scoring: bool, attention: bool) -> LedState:
    """The light for the box's state; the most urgent condition wins.

    ``started``: camera, model and store are up (systemd READY sent). ``scoring``: a
    field in view is being analysed. ``attention``: the latest result's reason code asks
    the user to act (out of focus, no tissue, control failed).
    """
    if health.state == "fault":
        return LedState.FAULT
    # Before start the broker has not had its chance to connect: "offline" would mislead.
    if not started:
        return LedState.BOOTING
    if any(r.component == "broker" for r in health.reasons):
        return LedState.BROKER_OFFLINE
    if attention:
        return LedState.ATTENTION
    return LedState.SCORING if scoring else LedState.READY
