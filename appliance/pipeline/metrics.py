"""Pipeline metrics: rolling percentiles, event rates, memory use and one snapshot of it all.

Everything takes the times it is given (the frames' monotonic capture times, the
caller's ``now``), so the figures are reproducible in tests and no clock is read behind
the caller's back; :class:`PipelineMetrics` only reads one, once, when it is not told
when the pipeline started.
"""

from __future__ import annotations

import bisect
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

_FPS_DIGITS = 2
_MS_DIGITS = 1
_MB_DIGITS = 1
_UPTIME_DIGITS = 1


def _check_finite(name: str, value: float, *, allow_negative: bool = False) -> None:
    """Refuse NaN, infinities and (unless allowed) negative values, naming the quantity."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not allow_negative and value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


class RollingStat:
    """The last ``window`` samples of a duration (ms): count, mean and percentiles.

    Percentiles interpolate linearly between samples, as numpy.percentile does. Every
    figure is None while no sample has been added.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"a rolling window needs at least 1 sample, got {window}")
        self._values: deque[float] = deque(maxlen=window)

    def add(self, ms: float) -> None:
        """Add one sample (the oldest one leaves a full window)."""
        _check_finite("a duration", ms)
        self._values.append(float(ms))

    @property
    def count(self) -> int:
        """Samples in the window now."""
        return len(self._values)

    @property
    def mean(self) -> float | None:
        """Mean of the window, None when empty."""
        return float(np.mean(self._values)) if self._values else None

    @property
    def p50(self) -> float | None:
        """Median of the window, None when empty."""
        return self.percentile(50.0)

    @property
    def p95(self) -> float | None:
        """95th percentile of the window, None when empty."""
        return self.percentile(95.0)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the window, None when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"a percentile must be within 0..100, got {q}")
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, float, len(self._values)), q))


class RateMeter:
    """Events per second over the last ``horizon_s`` seconds, from the events' own times.

    Until the meter has seen ``horizon_s`` seconds, the rate is taken over the time since
    its first event (n - 1 intervals), so the first figures are not too low.
    """

    def __init__(self, horizon_s: float) -> None:
        _check_finite("a rate horizon", horizon_s)
        if horizon_s <= 0:
            raise ValueError(f"a rate horizon must be positive, got {horizon_s}")
        self._horizon = float(horizon_s)
        self._times: list[float] = []  # sorted; events from several threads may interleave
        self._first: float | None = None

    @property
    def horizon_s(self) -> float:
        return self._horizon

    def tick(self, t: float) -> None:
        """Count one event at time ``t`` (seconds, any monotonic origin)."""
        _check_finite("an event time", t, allow_negative=True)
        bisect.insort(self._times, t)
        if self._first is None or t < self._first:
            self._first = t
        # Events older than the horizon before the newest can never count again.
        cut = bisect.bisect_right(self._times, self._times[-1] - self._horizon)
        if cut:
            del self._times[:cut]

    def rate(self, now: float) -> float:
        """Events per second in (now - horizon_s, now]; 0.0 before two events."""
        _check_finite("the time now", now, allow_negative=True)
        lo = bisect.bisect_right(self._times, now - self._horizon)
        hi = bisect.bisect_right(self._times, now)
        n = hi - lo
        if self._first is None or n == 0:
            return 0.0
        if self._first > now - self._horizon:  # younger than the horizon
            span = now - self._first
            return (n - 1) / span if n > 1 and span > 0 else 0.0
        return n / self._horizon


def rss_mb() -> float | None:
    """Resident memory of this process in MiB.

    From /proc/self/statm (Linux, current); elsewhere the peak from getrusage; None
    where neither exists.
    """
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS, in KiB on Linux and the BSDs.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pairs(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


@dataclass(frozen=True)
class MetricsSnapshot:
    """The pipeline's figures at one moment (times in ms, rates per second)."""

    uptime_s: float
    capture_fps: float
    processed_fps: float
    frames_captured: int
    frames_dropped: dict[str, int]  # by the stage that dropped them
    frames_rejected: int  # undecodable or refused inputs
    fields_reported: int
    stage_ms: dict[str, dict[str, float | None]]  # stage -> {"p50", "p95"}
    latency_ms: dict[str, float | None]  # capture to result: {"p50", "p95"}
    queue_depths: dict[str, int]
    rss_mb: float | None
    source_state: str
    source_reconnects: int
    frames_analysed: int = 0  # results made
    source_reason: str = ""  # why the source is in its state (a fault's cause)
    # From a still view's first frame to its report: how long a user holds a view still
    # before it is reported (the stability wait, the analysis and any frame ahead of it).
    view_to_report_ms: dict[str, float | None] = field(
        default_factory=lambda: {"p50": None, "p95": None})

    @property
    def frames_taken(self) -> int:
        """Frames the analysis took up: analysed, or passed over as already decided
        (``settled``). The watchdog's sign of progress: both need a working analysis
        thread, and a view held still after its report has only the second."""
        return self.frames_analysed + self.frames_dropped.get("settled", 0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready copy, rounded for people and logs."""
        return {
            "uptime_s": round(self.uptime_s, _UPTIME_DIGITS),
            "capture_fps": round(self.capture_fps, _FPS_DIGITS),
            "processed_fps": round(self.processed_fps, _FPS_DIGITS),
            "frames_captured": self.frames_captured,
            "frames_dropped": dict(sorted(self.frames_dropped.items())),
            "frames_rejected": self.frames_rejected,
            "fields_reported": self.fields_reported,
            "stage_ms": {stage: {k: _round(v, _MS_DIGITS) for k, v in figures.items()}
                         for stage, figures in sorted(self.stage_ms.items())},
            "latency_ms": {k: _round(v, _MS_DIGITS) for k, v in self.latency_ms.items()},
            "view_to_report_ms": {k: _round(v, _MS_DIGITS)
                                  for k, v in self.view_to_report_ms.items()},
            "queue_depths": dict(sorted(self.queue_depths.items())),
            "rss_mb": _round(self.rss_mb, _MB_DIGITS),
            "source_state": self.source_state,
            "source_reconnects": self.source_reconnects,
            "frames_analysed": self.frames_analysed,
            "source_reason": self.source_reason,
        }

    def log_line(self) -> str:
        """One compact key=value line for the log ('-' where there is no figure yet)."""
        stages = ",".join(f"{s}:{_fmt(f.get('p50'))}/{_fmt(f.get('p95'))}"
                          for s, f in sorted(self.stage_ms.items())) or "-"
        return (
            f"up={self.uptime_s:.0f}s fps={self.capture_fps:.1f}/{self.processed_fps:.1f} "
            f"frames={self.frames_captured} dropped={_pairs(self.frames_dropped)} "
            f"rejected={self.frames_rejected} reported={self.fields_reported} "
            f"latency_ms={_fmt(self.latency_ms.get('p50'))}/{_fmt(self.latency_ms.get('p95'))} "
            f"view_to_report_ms={_fmt(self.view_to_report_ms.get('p50'))}/"
            f"{_fmt(self.view_to_report_ms.get('p95'))} "
            f"stage_ms={stages} queues={_pairs(self.queue_depths)} "
            f"rss_mb={_fmt(self.rss_mb)} source={self.source_state}/{self.source_reconnects}"
        )


def _p50_p95(stat: RollingStat) -> dict[str, float | None]:
    return {"p50": stat.p50, "p95": stat.p95}


class PipelineMetrics:
    """Thread-safe recorder of what the pipeline's stages do, and its snapshot.

    ``window`` samples are kept per duration (PipelineConfig.latency_window); rates are
    over the last ``rate_horizon_s`` seconds. ``started_at`` (monotonic seconds, like the
    frames' times) defaults to now.
    """

    def __init__(self, window: int, *, rate_horizon_s: float = 5.0,
                 started_at: float | None = None) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._started = time.monotonic() if started_at is None else started_at
        self._captured = RateMeter(rate_horizon_s)
        self._processed = RateMeter(rate_horizon_s)
        self._latency = RollingStat(window)
        self._view_to_report = RollingStat(window)
        self._stages: dict[str, RollingStat] = {}
        self._frames_captured = 0
        self._frames_analysed = 0
        self._dropped: dict[str, int] = {}
        self._rejected = 0
        self._reported = 0
        self._queues: dict[str, int] = {}
        self._source_state = "unknown"
        self._source_reason = ""
        self._reconnects = 0

    def frame_captured(self, t: float) -> None:
        """A frame arrived from the source at capture time ``t``."""
        with self._lock:
            self._frames_captured += 1
            self._captured.tick(t)

    def frame_dropped(self, stage: str) -> None:
        """``stage`` dropped a frame (a full queue, a display that cannot keep up)."""
        with self._lock:
            self._dropped[stage] = self._dropped.get(stage, 0) + 1

    def frame_rejected(self) -> None:
        """An input was refused (undecodable file, wrong format)."""
        with self._lock:
            self._rejected += 1

    def stage_time(self, stage: str, ms: float) -> None:
        """``stage`` took ``ms`` milliseconds on one frame."""
        _check_finite(f"stage '{stage}' time", ms)
        with self._lock:
            stat = self._stages.get(stage)
            if stat is None:
                stat = self._stages[stage] = RollingStat(self._window)
            stat.add(ms)

    def result_done(self, capture_t: float, done_t: float) -> None:
        """A frame captured at ``capture_t`` has its result at ``done_t`` (same clock)."""
        if done_t < capture_t:
            raise ValueError(f"a result cannot be done ({done_t}) before its frame was "
                             f"captured ({capture_t}): are both monotonic times?")
        with self._lock:
            self._latency.add((done_t - capture_t) * 1000.0)
            self._processed.tick(done_t)
            self._frames_analysed += 1

    def field_reported(self, view_age_ms: float | None = None) -> None:
        """A field went to the store and the broker, ``view_age_ms`` after the first frame
        of its still view (None: not known, e.g. a replayed still)."""
        if view_age_ms is not None:
            _check_finite("a view's age", view_age_ms)
        with self._lock:
            self._reported += 1
            if view_age_ms is not None:
                self._view_to_report.add(view_age_ms)

    def set_queue_depth(self, name: str, n: int) -> None:
        """Items waiting in queue ``name`` now."""
        if n < 0:
            raise ValueError(f"queue '{name}' depth cannot be negative, got {n}")
        with self._lock:
            self._queues[name] = n

    def set_source(self, state: str, reconnects: int, reason: str = "") -> None:
        """The frame source's state (streaming, fault...), reopen count, and why."""
        with self._lock:
            self._source_state = state
            self._reconnects = reconnects
            self._source_reason = reason

    def snapshot(self, now: float) -> MetricsSnapshot:
        """All figures at ``now`` (monotonic seconds)."""
        memory = rss_mb()
        with self._lock:
            return MetricsSnapshot(
                uptime_s=max(0.0, now - self._started),
                capture_fps=self._captured.rate(now),
                processed_fps=self._processed.rate(now),
                frames_captured=self._frames_captured,
                frames_dropped=dict(self._dropped),
                frames_rejected=self._rejected,
                fields_reported=self._reported,
                stage_ms={name: _p50_p95(stat) for name, stat in self._stages.items()},
                latency_ms=_p50_p95(self._latency),
                view_to_report_ms=_p50_p95(self._view_to_report),
                queue_depths=dict(self._queues),
                rss_mb=memory,
                source_state=self._source_state,
                source_reconnects=self._reconnects,
                frames_analysed=self._frames_analysed,
                source_reason=self._source_reason,
            )
