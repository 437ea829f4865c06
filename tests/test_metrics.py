"""Pipeline metrics: percentiles against numpy, rates from given times, snapshot, threads."""

from __future__ import annotations

import builtins
import json
import threading
from typing import Any

import numpy as np
import pytest

from appliance.pipeline import metrics
from appliance.pipeline.metrics import (
    MetricsSnapshot,
    PipelineMetrics,
    RateMeter,
    RollingStat,
    rss_mb,
)

# ------------------------------------------------------------------------ RollingStat


def test_rolling_stat_is_empty_until_a_sample() -> None:
    stat = RollingStat(8)
    assert stat.count == 0
    assert stat.p50 is None and stat.p95 is None and stat.mean is None
    assert stat.percentile(10) is None


def test_rolling_stat_matches_numpy_over_its_window() -> None:
    data = np.random.default_rng(0).lognormal(3.0, 0.8, 1000)
    stat = RollingStat(256)
    for i, v in enumerate(data, start=1):
        stat.add(float(v))
        if i in (1, 7, 256, 257, 1000):
            window = data[max(0, i - 256):i]
            assert stat.count == len(window)
            assert stat.p50 == pytest.approx(np.percentile(window, 50))
            assert stat.p95 == pytest.approx(np.percentile(window, 95))
            assert stat.mean == pytest.approx(window.mean())
            assert stat.percentile(99) == pytest.approx(np.percentile(window, 99))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_rolling_stat_refuses_impossible_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        RollingStat(4).add(bad)


def test_rolling_stat_argument_checks() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RollingStat(0)
    stat = RollingStat(4)
    stat.add(1.0)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        stat.percentile(101)


# -------------------------------------------------------------------------- RateMeter


def test_rate_over_the_horizon_from_given_times() -> None:
    meter = RateMeter(2.0)
    for i in range(101):  # 10 events/s for 10 s
        meter.tick(1000.0 + i * 0.1)
    assert meter.rate(1010.0) == pytest.approx(10.0)
    assert meter.rate(1010.05) == pytest.approx(10.0)  # between two events
    assert meter.rate(1011.0) == pytest.approx(5.0)  # half the horizon without events
    assert meter.rate(1013.0) == 0.0  # stalled source


def test_rate_of_a_young_meter_is_not_too_low() -> None:
    meter = RateMeter(5.0)
    assert meter.rate(0.0) == 0.0
    meter.tick(0.0)
    assert meter.rate(0.0) == 0.0  # one event is no rate
    for i in range(1, 6):
        meter.tick(i * 0.1)
    assert meter.rate(0.5) == pytest.approx(10.0)


def test_rate_with_events_out_of_order() -> None:
    times = np.arange(0.0, 6.0, 0.25)
    shuffled = np.random.default_rng(1).permutation(times)
    a, b = RateMeter(3.0), RateMeter(3.0)
    for t in times:
        a.tick(float(t))
    for t in shuffled:
        b.tick(float(t))
    assert b.rate(5.75) == pytest.approx(a.rate(5.75)) == pytest.approx(4.0)


def test_rate_meter_argument_checks() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateMeter(0.0)
    with pytest.raises(ValueError, match="finite"):
        RateMeter(1.0).tick(float("nan"))


# ------------------------------------------------------------------------------ rss


def test_rss_is_a_plausible_figure() -> None:
    mb = rss_mb()
    assert mb is not None and 5.0 < mb < 64_000.0


def test_rss_falls_back_to_getrusage(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    mb = rss_mb()
    assert mb is not None and 5.0 < mb < 64_000.0  # the peak: at least what we use now


# ------------------------------------------------------------------- PipelineMetrics


def filled() -> tuple[PipelineMetrics, np.ndarray, np.ndarray]:
    """A recorder fed 10 s of a 20 fps camera, every other frame analysed."""
    m = PipelineMetrics(64, rate_horizon_s=2.0, started_at=500.0)
    rng = np.random.default_rng(2)
    latencies = rng.uniform(50.0, 300.0, 100)
    infer = rng.uniform(20.0, 40.0, 100)
    for i in range(200):
        t = 500.0 + i * 0.05
        m.frame_captured(t)
        if i % 2:
            m.frame_dropped("analysis")
            continue
        k = i // 2
        m.stage_time("infer", float(infer[k]))
        m.result_done(t, t + latencies[k] / 1000.0)
    m.frame_dropped("display")
    m.frame_rejected()
    m.field_reported()
    m.field_reported()
    m.set_queue_depth("analysis", 1)
    m.set_source("streaming", 2)
    return m, latencies, infer


def test_snapshot_figures() -> None:
    m, latencies, infer = filled()
    snap = m.snapshot(510.0)
    assert snap.uptime_s == pytest.approx(10.0)
    assert snap.frames_captured == 200
    assert snap.capture_fps == pytest.approx(20.0, rel=0.03)
    assert snap.processed_fps == pytest.approx(10.0, rel=0.1)
    assert snap.frames_dropped == {"analysis": 100, "display": 1}
    assert snap.frames_rejected == 1 and snap.fields_reported == 2
    assert snap.latency_ms["p50"] == pytest.approx(np.percentile(latencies[-64:], 50))
    assert snap.latency_ms["p95"] == pytest.approx(np.percentile(latencies[-64:], 95))
    assert snap.stage_ms["infer"]["p95"] == pytest.approx(np.percentile(infer[-64:], 95))
    assert snap.queue_depths == {"analysis": 1}
    assert snap.source_state == "streaming" and snap.source_reconnects == 2
    assert snap.rss_mb is not None and snap.rss_mb > 0


def test_empty_snapshot() -> None:
    snap = PipelineMetrics(16, started_at=10.0).snapshot(12.5)
    assert snap.uptime_s == 2.5 and snap.capture_fps == 0.0 and snap.frames_captured == 0
    assert snap.latency_ms == {"p50": None, "p95": None} and snap.stage_ms == {}
    assert snap.source_state == "unknown"
    line = snap.log_line()
    assert "latency_ms=-/-" in line and "dropped=-" in line


def test_to_dict_is_json_ready_and_rounded() -> None:
    m, _, _ = filled()
    d = m.snapshot(510.0).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {f for f in MetricsSnapshot.__dataclass_fields__}
    p95 = d["latency_ms"]["p95"]  # type: ignore[index]
    assert isinstance(p95, float) and round(p95, 1) == p95
    assert d["frames_dropped"] == {"analysis": 100, "display": 1}


def test_log_line_is_one_compact_line() -> None:
    m, latencies, _ = filled()
    line = m.snapshot(510.0).log_line()
    assert "\n" not in line and len(line) < 300
    assert "up=10s" in line and "frames=200" in line and "source=streaming/2" in line
    assert "dropped=analysis:100,display:1" in line and "reported=2" in line
    assert f"latency_ms={np.percentile(latencies[-64:], 50):.0f}/" in line


def test_impossible_records_are_refused() -> None:
    m = PipelineMetrics(16, started_at=0.0)
    with pytest.raises(ValueError, match="before its frame"):
        m.result_done(10.0, 9.0)
    with pytest.raises(ValueError, match="negative"):
        m.set_queue_depth("analysis", -1)
    with pytest.raises(ValueError, match="infer"):
        m.stage_time("infer", float("nan"))


def test_started_at_defaults_to_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.time, "monotonic", lambda: 42.0)
    assert PipelineMetrics(16).snapshot(45.0).uptime_s == 3.0


def test_recording_from_several_threads() -> None:
    m = PipelineMetrics(100_000, rate_horizon_s=1000.0, started_at=0.0)
    per_thread, threads = 2000, 8
    errors: list[BaseException] = []
    snaps: list[MetricsSnapshot] = []

    def work(k: int) -> None:
        try:
            for i in range(per_thread):
                t = k * 0.001 + i * 0.01
                m.frame_captured(t)
                m.stage_time(f"s{k % 2}", float(i % 50))
                m.frame_dropped("analysis")
                m.result_done(t, t + 0.1)
                if i % 500 == 0:
                    snaps.append(m.snapshot(t))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    snap = m.snapshot(per_thread * 0.01)
    assert snap.frames_captured == per_thread * threads
    assert snap.frames_dropped == {"analysis": per_thread * threads}
    assert snap.latency_ms["p50"] == pytest.approx(100.0)
    assert snap.stage_ms["s0"]["p50"] == pytest.approx(24.5)
    assert snap.capture_fps == pytest.approx(threads * 100.0, rel=0.01)
    assert snaps  # snapshots taken while the others wrote did not fail


def test_the_source_fault_reason_reaches_the_snapshot() -> None:
    m = PipelineMetrics(16, started_at=0.0)
    m.set_source("fault", 3, "cannot open /dev/video0")
    snap = m.snapshot(1.0)
    assert (snap.source_state, snap.source_reconnects) == ("fault", 3)
    assert snap.source_reason == "cannot open /dev/video0"
    assert snap.to_dict()["source_reason"] == "cannot open /dev/video0"


def test_the_time_from_a_still_view_to_its_report_is_kept_where_known() -> None:
    m = PipelineMetrics(8, started_at=0.0)
    assert m.snapshot(1.0).view_to_report_ms == {"p50": None, "p95": None}
    for age in (1200.0, 1800.0, 2400.0):
        m.field_reported(age)
    m.field_reported(None)  # a replayed still has no view: counted, no age
    snap = m.snapshot(5.0)
    assert snap.fields_reported == 4
    assert snap.view_to_report_ms["p50"] == pytest.approx(1800.0)
    assert snap.to_dict()["view_to_report_ms"] == {"p50": 1800.0, "p95": 2340.0}
    assert "view_to_report_ms=1800/2340" in snap.log_line()
    with pytest.raises(ValueError, match="age"):
        m.field_reported(float("nan"))
    with pytest.raises(ValueError, match="negative"):
        m.field_reported(-1.0)
