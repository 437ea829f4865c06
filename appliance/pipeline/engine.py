"""The real-time pipeline: threads joined by one-item slots.

    capture ──▶ prepare ──▶ model ──▶ finish ──▶ recorder (store, overlay PNG, stdout)
       │                                  │
       └──────────▶ display ◀── latest result

- **capture** reads the camera through the supervisor (reconnects with back-off),
  runs the cheap stillness tracker on every frame and keeps only the newest frame
  for analysis (drop-oldest, counted): the camera never waits.
- **prepare / model / finish** are the assay's three steps. With four cores or
  more each has its own thread, so while the model runs on one frame the next is
  being prepared and the previous one measured; on two cores prepare and model
  share one thread (``pipeline.model_thread``). Between them a slot waits for
  room: work already done is not thrown away, and a stage takes the newest frame
  only when the next one can take its result.
- **finish** also applies the report-once policy: only still, sharp fields go to
  the **recorder**, which stores them (first), writes their overlay PNG and prints them.
- **display** composes the newest frame with the latest result at up to
  ``display.max_fps`` and shows it; a slow screen never holds up the analysis.

One stop event ends everything: capture stops reading and closes its slots; each
stage finishes what it holds and closes the next; the recorder stores every
result already decided before it exits. No result in flight is lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from appliance.assays.her2.assay import ScaleInfo
from appliance.assays.results import RESULT_TYPES, AnyResult, FieldAssay
from appliance.capture.source import FrameSource, RejectedFrame, SourceError, SourceState
from appliance.capture.supervisor import CaptureSupervisor
from appliance.config import Config
from appliance.outputs.display import DisplayError, LiveComposer, LiveStatus, show_live
from appliance.outputs.display.live import LiveCase
from appliance.outputs.display.sinks import DisplaySink
from appliance.pipeline.field_memory import FieldMemory
from appliance.pipeline.metrics import MetricsSnapshot, PipelineMetrics
from appliance.pipeline.reporting import (
    Outcome,
    ReportPolicy,
    Tracked,
    reading_settings,
    sharper_before_warning,
    with_supersedes,
    with_warning,
)
from appliance.pipeline.slots import END, Slot
from appliance.pipeline.stability import StillnessTracker
from appliance.service.logs import field_fields
from appliance.service.recorder import Recorder

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
# How often the display refreshes its "no picture" screen while the camera is silent.
_NO_PICTURE_REFRESH_S = 0.25


@dataclass
class _Job:
    """A frame on its way through prepare → model → finish."""

    tracked: Tracked
    assay: FieldAssay | None = None  # the assay that prepared it finishes it (set_assay)
    cfg: Config | None = None  # that assay's config when it prepared it (set_objective)
    inputs: tuple[str, ...] = ()  # and the digests of the files it read (a reload)
    prepared: Any = None  # the assay's prepared field
    logits: Any = None
    result: AnyResult | None = None  # set early when a step refused or failed


@dataclass(frozen=True)
class _Record:
    result: AnyResult
    image: np.ndarray | None
    config_sha256: str  # of the config the result was read under (stored beside it)


class Pipeline:
    """Runs the capture, analysis, recording and display threads until stopped."""

    def __init__(self, cfg: Config, *, assay: FieldAssay, open_source: Callable[[], FrameSource],
                 recorder: Recorder, display: Callable[[], DisplaySink] | None,
                 stop: threading.Event,
                 case_line: Callable[[], LiveCase | None] = lambda: None) -> None:
        self.cfg = cfg
        self.assay = assay
        self.recorder = recorder
        self.stop_event = stop
        self.metrics = PipelineMetrics(cfg.pipeline.latency_window)
        self.model_thread = _wants_model_thread(cfg.pipeline.model_thread)
        self._open_source = open_source
        self._case_line = case_line  # the open case for the display panel
        self._display_factory = display
        self._tracker = StillnessTracker(cfg.stability)
        self._policy = ReportPolicy(FieldMemory(cfg.stability))
        self._slots: dict[str, Slot[Any]] = {
            name: Slot(name) for name in ("analysis", "model", "finish", "display")
        }
        self._records: queue.Queue[_Record | object] = queue.Queue(maxsize=256)
        self._threads: list[threading.Thread] = []
        self._latest: Outcome | None = None
        self._source_state = (SourceState.OPENING, "")
        self._supervisor: CaptureSupervisor | None = None
        # The scale found in a still view, with the config it was found under (a
        # set_objective or a reload replaces the config): (still id, config, scale).
        self._scale_memo: tuple[int | None, Config, ScaleInfo] | None = None  # prepare only
        self._assay_changed = False
        # The still view last decided with a scored result: (still id, assay, its config).
        # Its later frames are not analysed again (``_is_settled``). Under _lock.
        self._settled: tuple[int, FieldAssay, Config, tuple[str, ...]] | None = None
        self._display_errors: set[str] = set()  # display thread only
        self.fatal: BaseException | None = None  # what ended the pipeline, if not a stop
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the threads: the consumers first, so no early frame waits for them."""
        self._spawn("recorder", self._record_loop)
        self._spawn("finish", lambda: self._stage("finish", self._finish, None))
        if self.model_thread:
            self._spawn("model", lambda: self._stage("model", self._model, "finish"))
            self._spawn("prepare", lambda: self._stage("prepare", self._prepare, "model",
                                                       inbox="analysis",
                                                       skip=self._is_settled))
        else:
            self._spawn("prepare", lambda: self._stage("prepare+model", self._prepare_and_model,
                                                       "finish", inbox="analysis",
                                                       skip=self._is_settled))
        if self._display_factory is not None:
            self._spawn("display", self._display_loop)
        self._spawn("capture", self._capture_loop)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every thread has ended (source ended or stopped); True if they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
            if t.is_alive():
                return False
        return True

    def stop(self) -> bool:
        """Stop capture, let the frames in flight reach the store, join; True if clean."""
        self.stop_event.set()
        clean = self.wait(self.cfg.pipeline.drain_timeout_s)
        if not clean:
            alive = [t.name for t in self._threads if t.is_alive()]
            _log.error("pipeline threads still running after %.0f s: %s",
                       self.cfg.pipeline.drain_timeout_s, ", ".join(alive))
        return clean

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guard(name, target), name=f"eyepiece-{name}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except (SourceError, DisplayError) as exc:  # set-up: retrying cannot help
                _log.error("%s: %s", name, exc)
                self.fatal = exc
                self.stop_event.set()
            except Exception as exc:  # a bug: stop cleanly so systemd restarts us
                _log.exception("pipeline thread %s failed", name)
                self.fatal = exc
                self.stop_event.set()
        return run

    # ------------------------------------------------------------ capture

    def _capture_loop(self) -> None:
        analysis = self._slots["analysis"]
        display = self._slots["display"] if self._display_factory is not None else None
        # A replay "as fast as the pipeline goes" waits for the analysis instead of
        # dropping frames: every replayed frame is analysed. A camera never waits.
        lossless = self.cfg.source.kind in ("replay", "synthetic") and self.cfg.source.fps == 0
        sup = CaptureSupervisor(
            self._open_source, stop=self.stop_event,
            reconnect_min_s=self.cfg.source.reconnect_min_s,
            reconnect_max_s=self.cfg.source.reconnect_max_s, on_state=self._on_source_state,
        )
        self._supervisor = sup
        try:
            for item in sup.frames():
                if isinstance(item, RejectedFrame):
                    self._reject(item)
                    continue
                self.metrics.frame_captured(item.timestamp)
                tracked = Tracked(item, self._tracker.update(item.image, item.timestamp))
                self._hand_over(analysis, tracked, replace=not lossless)
                if display is not None:
                    self._hand_over(display, tracked, replace=True)
        finally:
            analysis.close()
            if display is not None:
                display.close()

    def _hand_over(self, slot: Slot[Any], tracked: Tracked, *, replace: bool) -> None:
        before = slot.dropped
        slot.put(tracked, replace=replace)
        if slot.dropped > before:
            self.metrics.frame_dropped(slot.name)

    def _on_source_state(self, state: SourceState, reason: str) -> None:
        self._source_state = (state, reason)
        reconnects = self._supervisor.reconnects if self._supervisor is not None else 0
        self.metrics.set_source(state.value, reconnects, reason)

    def _reject(self, item: RejectedFrame) -> None:
        """An undecodable replayed file: reported as such, never skipped silently."""
        self.metrics.frame_rejected()
        assay = self.assay
        result = assay.refuse_input(item.source, item.seq, item.code, item.reason)
        self._records.put(_Record(result, None, assay.cfg.sha256()))

    # ------------------------------------------------------------ analysis

    def _stage(self, name: str, work: Callable[[_Job], None], outbox: str | None, *,
               inbox: str | None = None, skip: Callable[[_Job], bool] | None = None) -> None:
        src = self._slots[inbox or name]
        dst = self._slots[outbox] if outbox else None
        try:
            # Just in time: take the newest frame only once the next stage can take the
            # result, so no finished work waits (and ages) in front of a busy stage.
            while (dst is None or dst.wait_for_room()) and (item := src.get()) is not END:
                job = item if isinstance(item, _Job) else _Job(tracked=_tracked(item))
                if skip is not None and skip(job):
                    self.metrics.frame_dropped("settled")
                    continue
                t0 = time.perf_counter()
                work(job)
                self.metrics.stage_time(name, (time.perf_counter() - t0) * 1000.0)
                if dst is not None:
                    dst.put(job, replace=False)
        finally:
            src.close()  # if this stage died, the one before must not wait for it forever
            if dst is not None:
                dst.close()
            else:
                self._records.put(END)

    def _is_settled(self, job: _Job) -> bool:
        """A frame of the still view already decided with a scored result, by the assay
        and settings still in use: analysing it again would give the same field again
        (reported once) while the next view waits behind it: a HEp-2 field takes about 2 s
        on two cores. A view decided as not scorable is read again: the user may be
        fixing it."""
        still_id = job.tracked.view.still_id
        with self._lock:
            settled = self._settled
            return (settled is not None and still_id == settled[0]
                    and settled[1] is self.assay and settled[2] is self.assay.cfg
                    and settled[3] == self.assay.reading_inputs())

    def _prepare_and_model(self, job: _Job) -> None:
        """Both steps in one thread (two cores: see ``pipeline.model_thread``)."""
        self._prepare(job)
        t0 = time.perf_counter()
        self._model(job)
        self.metrics.stage_time("model", (time.perf_counter() - t0) * 1000.0)

    def set_assay(self, assay: FieldAssay) -> None:
        """Score the next frames with another assay (the ``set_assay`` command).

        Frames already in a stage finish with the assay that prepared them; the caller
        closes the old assay once the pipeline has stopped.
        """
        with self._lock:
            self.assay = assay
            self._assay_changed = True

    def _prepare(self, job: _Job) -> None:
        frame, still_id = job.tracked.frame, job.tracked.view.still_id
        with self._lock:
            assay = job.assay = self.assay
            if self._assay_changed:  # another assay's scale estimate means nothing here
                self._scale_memo, self._assay_changed = None, False
        cfg = job.cfg = assay.cfg
        job.inputs = assay.reading_inputs()
        hint = self._scale_hint(still_id, cfg)
        prepared = assay.guarded(frame, lambda: assay.prepare(frame, hint))
        if isinstance(prepared, RESULT_TYPES):
            job.result = prepared
            return
        # A refused field's scale is kept for nothing: it may be no scale at all (a HEp-2
        # field is refused before its scale is estimated) or one read off a bad picture.
        if hint is None and prepared.refusal is None and prepared.scale.source != "assumed":
            self._scale_memo = (still_id, cfg, prepared.scale)
        if prepared.refusal is not None:
            job.result = prepared.refusal
        else:
            job.prepared = prepared

    def _scale_hint(self, still_id: int | None, cfg: Config) -> ScaleInfo | None:
        """The scale found earlier in this still period, or the last one while moving,
        unless the assay's config has changed since (an objective set by command must win
        over a scale estimated before it).

        The objective cannot change without the view changing, so a still period is
        measured once, on its first analysed frame; frames of a moving stage (shown,
        never reported) reuse the latest scale.
        """
        if self._scale_memo is None:
            return None
        memo_id, memo_cfg, scale = self._scale_memo
        if memo_cfg is not cfg:
            return None
        return scale if still_id is None or still_id == memo_id else None

    def _model(self, job: _Job) -> None:
        if job.result is not None or job.prepared is None:
            return
        prepared, assay = job.prepared, job.assay
        assert assay is not None
        logits = assay.guarded(job.tracked.frame, lambda: assay.infer(prepared))
        if isinstance(logits, RESULT_TYPES):
            job.result = logits
        else:
            job.logits = logits

    def _finish(self, job: _Job) -> None:
        frame = job.tracked.frame
        if job.result is None and job.prepared is not None and job.logits is not None:
            prepared, logits, assay = job.prepared, job.logits, job.assay
            assert assay is not None
            job.result = assay.guarded(frame, lambda: assay.finish(prepared, logits))
        assert job.result is not None  # every path above sets it
        now = time.monotonic()
        settings = None if job.cfg is None else reading_settings(job.cfg, job.inputs)
        decision = self._policy.consider(job.tracked, job.result, settings)
        result = job.result = with_warning(
            with_supersedes(job.result, decision),
            sharper_before_warning(job.tracked.view, self.cfg.stability.sharper_factor))
        outcome = Outcome(job.tracked, result, now, decision)
        self.metrics.result_done(frame.timestamp, now)
        with self._lock:
            self._latest = outcome
            view = job.tracked.view
            # Decided under the config it was prepared with: a settings change while it was
            # in analysis must still send the view to be read again.
            if outcome.decision is not None and result.scored and job.assay is not None \
                    and job.cfg is not None and view.still_id is not None:
                self._settled = (view.still_id, job.assay, job.cfg, job.inputs)
        if outcome.reported:
            since = job.tracked.view.still_since
            self.metrics.field_reported(
                None if since is None else max(0.0, now - since) * 1000.0)
            _log.info("field reported: %s (%s)", frame.source,
                      outcome.decision.reason if outcome.decision else "",
                      extra=field_fields(result.assay, frame.source, frame.seq,
                                         result.status))
            cfg = job.cfg if job.cfg is not None else self.assay.cfg
            self._records.put(_Record(result, frame.image, cfg.sha256()))

    # ------------------------------------------------------------ outputs

    def _record_loop(self) -> None:
        """Store, draw and print reported results until the analysis has ended."""
        while (item := self._records.get()) is not END:
            assert isinstance(item, _Record)
            t0 = time.perf_counter()
            self.recorder.record(item.result, item.image, config_sha256=item.config_sha256)
            self.metrics.stage_time("record", (time.perf_counter() - t0) * 1000.0)

    def _display_loop(self) -> None:
        assert self._display_factory is not None
        sink = self._display_factory()  # SDL wants every call from the thread that opened it
        composer = LiveComposer()
        slot, interval = self._slots["display"], 1.0 / self.cfg.display.max_fps
        last_shown, tracked = 0.0, None
        try:
            while True:
                item = slot.get(timeout=_NO_PICTURE_REFRESH_S)
                if item is END:
                    break
                now = time.monotonic()
                if item is None and self._source_state[0] is SourceState.STREAMING:
                    continue  # between frames of a slow camera: nothing new to show
                if item is not None:
                    tracked = _tracked(item)
                if now - last_shown < interval:
                    self.metrics.frame_dropped("display")
                    continue
                last_shown = now
                t0 = time.perf_counter()
                try:
                    self._show(sink, composer, tracked)
                except Exception as exc:  # a screen problem must never stop the scoring
                    self._display_failed(exc)
                    continue
                self.metrics.stage_time("display", (time.perf_counter() - t0) * 1000.0)
                if sink.wants_quit:
                    _log.info("display closed by the user: stopping")
                    self.stop_event.set()
        finally:
            sink.close()

    def _display_failed(self, exc: Exception) -> None:
        """Count a failed picture; log each kind of failure once, in full."""
        self.metrics.frame_dropped("display_error")
        kind = type(exc).__name__
        if kind not in self._display_errors:
            self._display_errors.add(kind)
            _log.error("display: a picture could not be shown (%s); scoring goes on, "
                       "further %s errors are only counted", exc, kind, exc_info=exc)

    def _show(self, sink: DisplaySink, composer: LiveComposer, tracked: Tracked | None) -> None:
        with self._lock:
            latest = self._latest
        state, reason = self._source_state
        snap = self.metrics.snapshot(time.monotonic())
        view = tracked.view if tracked is not None else None
        in_view = (latest is not None and view is not None and view.still_id is not None
                   and latest.tracked.view.still_id == view.still_id)
        status = LiveStatus(
            source_state=state.value, source_reason=reason,
            stage=view.stage.value if view is not None else "moving",
            reported=in_view and latest is not None and latest.decision is not None,
            result_in_view=in_view, capture_fps=snap.capture_fps,
            processed_fps=snap.processed_fps, latency_ms=snap.latency_ms.get("p50"),
            case=self._case_line(),
        )
        streaming = tracked is not None and state is SourceState.STREAMING
        show_live(sink, composer, tracked.frame.image if streaming and tracked else None,
                  latest.result if latest is not None else None, status,
                  show_cells=self.cfg.display.show_cells)

    def latest_reason_code(self) -> str | None:
        """Why the latest analysed field could not be scored (None when it was, or none yet)."""
        with self._lock:
            latest = self._latest
        return latest.result.reason_code if latest is not None else None

    # ------------------------------------------------------------ metrics

    def snapshot(self) -> MetricsSnapshot:
        """The metrics now, with the slots' depths."""
        for name, slot in self._slots.items():
            self.metrics.set_queue_depth(name, slot.depth)
        self.metrics.set_queue_depth("record", self._records.qsize())
        return self.metrics.snapshot(time.monotonic())


def _tracked(item: object) -> Tracked:
    """A slot item known to be a tracked frame (the slots carry Any between stages)."""
    assert isinstance(item, Tracked), f"expected a tracked frame, got {item!r}"
    return item


def _wants_model_thread(setting: str) -> bool:
    """Whether the model gets a thread of its own.

    On two cores, three busy analysis threads (prepare, model, finish) only queue
    frames in front of each other: measured, throughput is no better and latency a
    third of the frames longer than with prepare and model sharing one thread. With
    four cores or more (or an accelerator doing the model), the model thread pays.
    """
    if setting == "auto":
        return (os.cpu_count() or 1) >= 4
    return setting == "yes"
