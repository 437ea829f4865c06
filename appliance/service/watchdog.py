"""The systemd watchdog, fed by the pipeline's own progress.

A timer thread that pings regardless would keep a hung inference alive for ever.
Here a WATCHDOG=1 goes out only while the analysis keeps taking frames (analysing them,
or passing over the frames of a view already decided: MetricsSnapshot.frames_taken), or
while the source is in a state where no frame is expected: a camera that is
reconnecting (the service is fine, a restart would not bring the camera back), a replay
that has ended, a source closed on the way out. When the camera streams but that count
stands still for ``stall_after_s``, the pings stop and systemd restarts the service
after WatchdogSec=.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from appliance.service.notify import Notifier

_log = logging.getLogger(__name__)

# Source states (SourceState values) in which no analysed frame is expected.
_IDLE_STATES = {
    "fault": "the source is reconnecting",
    "ended": "the source has ended",
    "closed": "the source is closed",
}


class SnapshotLike(Protocol):
    """What the decision reads from a MetricsSnapshot."""

    @property
    def source_state(self) -> str: ...


def _check_stall(stall_after_s: float) -> None:
    if not (math.isfinite(stall_after_s) and stall_after_s > 0):
        raise ValueError(f"stall_after_s must be a positive number of seconds, "
                         f"got {stall_after_s!r}")


def pipeline_alive(snapshot_like: SnapshotLike, *, now: float, last_progress_t: float,
                   stall_after_s: float) -> tuple[bool, str]:
    """Whether the pipeline is working as it should, and why (for the log and STATUS=).

    ``last_progress_t`` is when the count of frames taken last moved (or when progress
    became expected again), on the same monotonic clock as ``now``.
    """
    _check_stall(stall_after_s)
    state = snapshot_like.source_state
    if state in _IDLE_STATES:
        return True, f"no progress expected: {_IDLE_STATES[state]}"
    idle_s = now - last_progress_t
    if idle_s <= stall_after_s:
        return True, f"progress {max(idle_s, 0.0):.1f} s ago"
    return False, (f"stalled: no frame taken by the analysis for {idle_s:.1f} s "
                   f"(limit {stall_after_s:g} s) while the source is {state}")


class _State:
    """The source state as a SnapshotLike."""

    def __init__(self, source_state: str) -> None:
        self.source_state = source_state


class WatchdogFeeder:
    """Sends WATCHDOG=1 from the runner's loop while :func:`pipeline_alive` says so.

    Pings are at most one per half watchdog interval (the notifier's, or
    ``ping_every_s``); without a watchdog interval nothing is pinged. The stall clock
    starts at construction, so start-up gets ``stall_after_s`` of grace, and starts
    again whenever the source leaves an idle state (a camera back after a long fault).
    """

    def __init__(self, notifier: Notifier, stall_after_s: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 ping_every_s: float | None = None) -> None:
        _check_stall(stall_after_s)
        if ping_every_s is None:
            interval = notifier.watchdog_interval_s()
            ping_every_s = interval / 2 if interval is not None else None
        elif not (math.isfinite(ping_every_s) and ping_every_s > 0):
            raise ValueError(f"ping_every_s must be a positive number of seconds, "
                             f"got {ping_every_s!r}")
        self._notifier = notifier
        self._stall_after_s = stall_after_s
        self._clock = clock
        self._ping_every_s = ping_every_s
        self._last_count: int | None = None
        self._last_progress_t = clock()
        self._last_ping_t: float | None = None
        self._alive = True
        self.pings = 0

    @property
    def alive(self) -> bool:
        """The latest decision."""
        return self._alive

    def tick(self, frames_taken: int, source_state: str,
             now: float | None = None) -> tuple[bool, str]:
        """Take the pipeline's figures now; ping if it is alive and a ping is due.

        Any change of ``frames_taken`` (MetricsSnapshot.frames_taken) counts as progress:
        a smaller count is a new pipeline (after a reload) that has started counting again.
        """
        now = self._clock() if now is None else now
        if frames_taken != self._last_count or source_state in _IDLE_STATES:
            self._last_count = frames_taken
            self._last_progress_t = now
        alive, reason = pipeline_alive(_State(source_state), now=now,
                                       last_progress_t=self._last_progress_t,
                                       stall_after_s=self._stall_after_s)
        self._log_change(alive, reason)
        if alive and self._ping_due(now):
            self._notifier.watchdog()
            self._last_ping_t = now
            self.pings += 1
        return alive, reason

    def _ping_due(self, now: float) -> bool:
        if self._ping_every_s is None:
            return False
        return self._last_ping_t is None or now - self._last_ping_t >= self._ping_every_s

    def _log_change(self, alive: bool, reason: str) -> None:
        """Log (and show in STATUS=) each change between alive and stalled, once."""
        if alive == self._alive:
            return
        self._alive = alive
        if alive:
            _log.warning("watchdog: the pipeline makes progress again (%s)", reason)
        else:
            _log.error("watchdog: %s; no more pings, systemd will restart the service", reason)
            self._notifier.status(reason)
