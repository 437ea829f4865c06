"""The composition root of `appliance run`: config → store → model → pipeline → wait.

One stop event (set by SIGINT/SIGTERM, by the window being closed, or by a
fatal source error) ends the run; the pipeline then lets every result in flight
reach the store before everything opened here is closed, in reverse order.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from appliance.assays.results import open_assay
from appliance.capture.factory import open_source
from appliance.capture.source import FrameSource
from appliance.config import Config, ConfigError, with_overrides
from appliance.outputs.display.sinks import DisplaySink, open_display
from appliance.outputs.leds import open_leds
from appliance.outputs.mqtt_contract import read_case_salt
from appliance.outputs.store import ResultStore
from appliance.pipeline.engine import Pipeline
from appliance.pipeline.metrics import PipelineMetrics
from appliance.service.button import open_button
from appliance.service.cases import (
    CaseWorkflow,
    button_handler,
    case_needs_attention,
    mqtt_case_messages,
)
from appliance.service.lifecycle import Lifecycle
from appliance.service.notify import Notifier
from appliance.service.recorder import Recorder
from appliance.service.telemetry import Telemetry

_log = logging.getLogger(__name__)
_POLL_S = 0.2  # how quickly the main thread notices the stop event


def run(cfg: Config, *, stop: threading.Event, out: TextIO,
        config_path: Path | None = None,
        reload: threading.Event | None = None) -> dict[str, int]:
    """Run the pipeline until the source ends or ``stop`` is set; the recorder's counts.

    Raises what stopped the pipeline when it was not a stop request (a source that
    cannot work as configured, a display that cannot open, a bug).
    """
    with ExitStack() as stack:
        store = stack.enter_context(ResultStore(cfg.store.path))
        assay = open_assay(cfg)
        stack.callback(assay.close)
        pipeline: Pipeline | None = None
        cases = CaseWorkflow(
            cfg, store, case_message=mqtt_case_messages(cfg, socket.gethostname()),
            salt=read_case_salt(cfg.mqtt.case_salt_file),
            settings=lambda: pipeline.assay.cfg if pipeline is not None else assay.cfg)
        cases.refresh_live()  # a case left open before a restart goes on
        assay.field_context = cases.context
        telemetry = None
        life: Lifecycle | None = None

        def switch_assay(name: str) -> None:
            """`set_assay`: load the other assay's model, then swap it in between frames."""
            assert pipeline is not None and life is not None
            new = open_assay(with_overrides(pipeline.assay.cfg, {"assay": name}))
            stack.callback(new.close)  # frames in flight may still use the old one
            if name == "her2":
                new.field_context = cases.context
            pipeline.set_assay(new)
            life.assay = new
            if telemetry is not None:
                telemetry.assay = new
            _log.info("assay switched to %s (%s)", name, new.model.name)

        if cfg.mqtt.url:
            telemetry = Telemetry(
                cfg, store=store, assay=assay, cases=cases, config_path=config_path,
                switch_assay=switch_assay,
                snapshot=lambda: pipeline.snapshot() if pipeline else PipelineMetrics(
                    16).snapshot(time.monotonic()),
                fatal=lambda: repr(pipeline.fatal) if pipeline and pipeline.fatal else "",
            )
        recorder = Recorder(
            store=store, config_sha256=cfg.sha256(),
            overlay_dir=Path(cfg.overlay.dir) if cfg.overlay.enabled else None, out=out,
            message_for=telemetry.message_for if telemetry else None,
            companion_for=lambda result, image: cases.companion(result, image,
                                                                 source="pipeline"),
            after_store=[cases.after_field, *([telemetry.link.wake] if telemetry else [])],
        )
        sources = _SourceKeeper(cfg)
        pipeline = Pipeline(cfg, assay=assay, open_source=sources.new, recorder=recorder,
                            display=_display_factory(cfg, sources), stop=stop,
                            case_line=cases.live)
        _log.info("scoring %s from %s with %s (%s), display %s%s", cfg.assay, cfg.source.uri,
                  assay.model.name, assay.model.precision, cfg.display.sink,
                  f", results to {cfg.mqtt.url} as {telemetry.device_id}" if telemetry else "")
        if telemetry is not None:
            telemetry.start()
            stack.callback(telemetry.close)  # after the pipeline has drained into the store
        notifier = Notifier.from_environment()
        stack.callback(notifier.close)
        leds = open_leds(cfg.leds)
        stack.callback(leds.close)
        try:
            button = open_button(cfg.button, button_handler(cases))
        except (ImportError, OSError) as exc:  # no gpiod bindings, or the line is busy
            raise ConfigError("button.backend", str(exc)) from exc
        if button is not None:
            stack.callback(button.close)
        left_open = cases.live()
        if left_open is not None:
            _log.warning("case %s was left open (mode %s): it goes on; close it when done",
                         left_open.case_id, left_open.mode)
        life = Lifecycle(
            assay=assay, notifier=notifier, leds=leds,
            stall_after_s=cfg.service.watchdog_stall_s, config_path=config_path,
            reload_requested=reload,
            health=telemetry.current_health if telemetry else None,
            latest_reason=pipeline.latest_reason_code,
            case_attention=lambda: case_needs_attention(cases.live()),
        )
        pipeline.start()
        _wait(pipeline, stop, life, cfg.pipeline.metrics_interval_s)
        life.stopping()
        pipeline.stop()
        _log.info("stopped: %s; %s", recorder.counts, pipeline.snapshot().log_line())
        if pipeline.fatal is not None:
            raise pipeline.fatal
        return recorder.counts


class _SourceKeeper:
    """Builds the configured source (again after each fault) and remembers the newest.

    The picamera2 display sink draws on the camera the source has open, which is a
    new object after every reconnect.
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self.current: FrameSource | None = None

    def new(self) -> FrameSource:
        self.current = open_source(self._cfg.source, self._cfg.input,
                                   camera_preview=self._cfg.display.sink == "picamera2")
        return self.current

    def set_overlay(self, overlay: object) -> None:
        """Forward to the open picamera2 camera (the display sink calls this)."""
        camera = getattr(self.current, "camera", None)
        if camera is None:
            raise RuntimeError("the camera is not open (reconnecting)")
        camera.set_overlay(overlay)


def _display_factory(cfg: Config, sources: _SourceKeeper) -> Callable[[], DisplaySink] | None:
    if cfg.display.sink == "none":
        return None
    picam2 = sources if cfg.display.sink == "picamera2" else None
    return lambda: open_display(cfg.display, picam2=picam2)


def _wait(pipeline: Pipeline, stop: threading.Event, life: Lifecycle,
          metrics_interval_s: float) -> None:
    """Until the pipeline ends by itself or a stop is asked: tick the lifecycle, log metrics."""
    next_log = time.monotonic() + metrics_interval_s
    while not pipeline.wait(timeout=_POLL_S):
        if stop.is_set():
            return
        now = time.monotonic()
        snap = pipeline.snapshot()
        life.tick(snap, now)
        if now >= next_log:
            _log.info("metrics: %s", snap.log_line())
            next_log += metrics_interval_s
