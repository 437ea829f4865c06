"""What the main thread does while the pipeline runs: systemd, watchdog, status light, reload.

Called every ``tick`` (about 5 times a second) by the runner:

- READY=1 once the camera streams (the model and the store are up before the
  pipeline starts), with a one-line STATUS= kept current;
- WATCHDOG=1 only while the pipeline makes progress (:mod:`.watchdog`), so a stalled
  inference gets the service restarted by systemd;
- the status light follows the health state;
- SIGHUP re-reads the config (:mod:`.reload`); an invalid file keeps the old one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from appliance.assays.results import FieldAssay
from appliance.config import ConfigError
from appliance.outputs.leds import LedSink
from appliance.outputs.leds.patterns import LedState, led_state
from appliance.pipeline.metrics import MetricsSnapshot
from appliance.service.health import Health, HealthReadings, assess
from appliance.service.notify import Notifier
from appliance.service.reload import reload_config
from appliance.service.watchdog import WatchdogFeeder

_log = logging.getLogger(__name__)
_STATUS_EVERY_S = 5.0
# Reason codes of the latest result that ask the pathologist to act (the light says so).
ATTENTION_CODES = frozenset({"out_of_focus", "no_tissue", "control_failed", "wrong_stain",
                             "over_exposed", "under_exposed", "nothing_in_view",
                             "unstained_light"})


class Lifecycle:
    """systemd notifications, the watchdog, the status light and SIGHUP reloads."""

    def __init__(self, *, assay: FieldAssay, notifier: Notifier, leds: LedSink,
                 stall_after_s: float, config_path: Path | None,
                 reload_requested: threading.Event | None = None,
                 health: Callable[[MetricsSnapshot], Health] | None = None,
                 latest_reason: Callable[[], str | None] = lambda: None,
                 case_attention: Callable[[], bool] = lambda: False) -> None:
        self.assay = assay
        self.notifier = notifier
        self.leds = leds
        self.feeder = WatchdogFeeder(notifier, stall_after_s)
        self.config_path = config_path
        self.reload_requested = reload_requested or threading.Event()
        self._health = health or local_health
        self._latest_reason = latest_reason
        self._case_attention = case_attention  # the open case's control is not valid
        self._ready = False
        self._next_status = 0.0
        self.leds.show(LedState.BOOTING)

    def tick(self, snap: MetricsSnapshot, now: float) -> None:
        """One look at the pipeline: notify, feed the watchdog, set the light, reload."""
        if not self._ready and snap.source_state in ("streaming", "ended"):
            self._ready = True
            self.notifier.ready(status_line(self.assay, snap))
        self.feeder.tick(snap.frames_taken, snap.source_state, now)
        health = self._health(snap)
        scoring = snap.source_state == "streaming" and snap.processed_fps > 0
        self.leds.show(led_state(health, started=self._ready, scoring=scoring,
                                 attention=self._latest_reason() in ATTENTION_CODES
                                 or self._case_attention()))
        if now >= self._next_status:
            self._next_status = now + _STATUS_EVERY_S
            self.notifier.status(status_line(self.assay, snap, health))
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad file keeps the running one, and says why."""
        if self.config_path is None:
            _log.warning("SIGHUP: running on the defaults, no config file to reload")
            return
        self.notifier.reloading()
        try:
            reload_config(self.assay, self.config_path)
        except ConfigError as exc:
            _log.error("SIGHUP: %s; the running configuration is kept", exc)
        self.notifier.ready(status_line(self.assay, None))

    def stopping(self) -> None:
        """SIGTERM (or the end of a replay): tell systemd we are draining."""
        self.notifier.stopping()
        self.leds.show(LedState.BOOTING)


def status_line(assay: FieldAssay, snap: MetricsSnapshot | None,
                health: Health | None = None) -> str:
    """One line for `systemctl status`, e.g. 'scoring HER2 · 14.8 fps · ok'."""
    parts = [f"scoring {assay.cfg.assay.upper()}"]
    if snap is not None:
        parts.append(f"camera {snap.source_state}")
        parts.append(f"{snap.processed_fps:.1f} fields/s")
    if health is not None:
        parts.append(health.state + "".join(f" ({r.component})" for r in health.reasons[:2]))
    return " · ".join(parts)


def local_health(snap: MetricsSnapshot) -> Health:
    """Health from the pipeline alone (no broker configured)."""
    return assess(HealthReadings(source_state=snap.source_state,
                                 source_reason=snap.source_reason))
