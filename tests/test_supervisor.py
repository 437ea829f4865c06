"""The capture supervisor: faults, back-off, recovery, the end of a replay, stopping."""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture.frame import Frame
from appliance.capture.replay import ReplaySource
from appliance.capture.source import FrameSource, SourceError, SourceState
from appliance.capture.supervisor import CaptureSupervisor, backoff_delays
from appliance.capture.v4l2 import V4l2Source
from appliance.config import InputConfig
from tests.fakes.cv2_capture import FakeCamera
from tests.imagefiles import write_rgb


class Recorder:
    """Collects state changes and the waits between attempts (never really sleeps)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.states: list[tuple[SourceState, str]] = []
        self.waits: list[float] = []

    def on_state(self, state: SourceState, reason: str) -> None:
        self.states.append((state, reason))

    def sleep(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.stop.is_set()

    @property
    def kinds(self) -> list[SourceState]:
        return [state for state, _ in self.states]


def supervise(camera: FakeCamera, stop: threading.Event, rec: Recorder, *,
              lo: float = 0.1, hi: float = 0.3) -> CaptureSupervisor:
    """A supervisor that builds a fresh V4l2Source on the fake camera at every attempt."""
    def build() -> FrameSource:
        return V4l2Source("/dev/video0", capture_factory=camera.capture)

    return CaptureSupervisor(build, stop=stop, reconnect_min_s=lo, reconnect_max_s=hi,
                             on_state=rec.on_state, sleep=rec.sleep)


def frame_bgr(level: int) -> np.ndarray:
    return np.full((48, 64, 3), level, np.uint8)


def test_a_camera_failing_mid_stream_is_reported_and_recovers() -> None:
    camera = FakeCamera()
    camera.script(frame_bgr(10), frame_bgr(20),
                  cv2.error("OpenCV(4.8.0) error: (-2:Unspecified error) select() timeout"))
    stop = threading.Event()
    rec = Recorder(stop)
    sup = supervise(camera, stop, rec)
    frames: list[Frame] = []
    for item in sup.frames():
        assert isinstance(item, Frame)
        frames.append(item)
        if len(frames) == 2:
            camera.fail_opens(3)  # unplugged after the next read: three reopens fail
        if len(frames) == 5:
            stop.set()
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]  # no restart at 1 after reopening
    assert frames[1].image[0, 0, 0] == 20
    # After the reopen: the camera's live frames 1, 2, 3 (numbered in the blue corner).
    assert [int(f.image[0, 0, 2]) for f in frames[2:]] == [1, 2, 3]
    # Back-off doubles from the minimum and is capped at the maximum.
    assert rec.waits == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert (sup.faults, sup.reconnects) == (4, 4)
    assert rec.kinds == [SourceState.OPENING, SourceState.STREAMING, SourceState.FAULT,
                         SourceState.FAULT, SourceState.STREAMING, SourceState.CLOSED]
    assert "select() timeout" in rec.states[2][1]
    assert "cannot open /dev/video0" in rec.states[3][1]  # a new reason: reported once
    assert "after 4 reopening(s)" in rec.states[4][1]
    assert sup.state is SourceState.CLOSED
    assert all(cap.released == 1 for cap in camera.captures if cap.set_calls)


def test_back_off_starts_again_from_the_minimum_after_a_good_frame() -> None:
    camera = FakeCamera()
    camera.script(frame_bgr(1), None, None, frame_bgr(2), None)
    stop = threading.Event()
    rec = Recorder(stop)
    frames = list(itertools.islice(supervise(camera, stop, rec).frames(), 3))
    assert [f.seq for f in frames] == [1, 2, 3]
    # no frame -> 0.1; reopened, no frame again -> 0.2; a frame; no frame -> 0.1 again
    assert rec.waits == pytest.approx([0.1, 0.2, 0.1])


def test_a_lasting_fault_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera()
    camera.fail_opens(6)
    stop = threading.Event()
    rec = Recorder(stop)
    sup = supervise(camera, stop, rec)
    frames = sup.frames()
    with caplog.at_level(logging.INFO, logger="appliance.capture.supervisor"):
        frame = next(frames)
    assert frame.seq == 1 and sup.faults == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot open" in warnings[0].getMessage()
    assert rec.kinds == [SourceState.OPENING, SourceState.FAULT, SourceState.STREAMING]
    frames.close()
    assert rec.states[-1] == (SourceState.CLOSED, "the consumer stopped reading")


def test_the_end_of_a_replay_ends_the_iterator(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", np.full((80, 80, 3), (200, 40, 40), np.uint8))
    write_rgb(tmp_path / "b.png", np.full((80, 80, 3), (40, 200, 40), np.uint8))
    stop = threading.Event()
    rec = Recorder(stop)
    sup = CaptureSupervisor(lambda: ReplaySource(tmp_path, input_cfg=InputConfig()),
                            stop=stop, reconnect_min_s=0.1, reconnect_max_s=1.0,
                            on_state=rec.on_state, sleep=rec.sleep)
    items = list(sup.frames())
    assert [Path(i.source).name for i in items] == ["a.png", "b.png"]
    assert sup.state is SourceState.ENDED and rec.waits == []
    assert rec.kinds == [SourceState.OPENING, SourceState.STREAMING, SourceState.ENDED]


def test_a_configuration_error_is_not_retried(tmp_path: Path) -> None:
    stop = threading.Event()
    rec = Recorder(stop)
    sup = CaptureSupervisor(lambda: ReplaySource(tmp_path / "nowhere", input_cfg=InputConfig()),
                            stop=stop, reconnect_min_s=0.1, reconnect_max_s=1.0,
                            sleep=rec.sleep)
    with pytest.raises(SourceError, match="does not exist"):
        next(sup.frames())
    assert rec.waits == []
    assert sup.state is SourceState.CLOSED and sup.reason.startswith("gave up: SourceError")


def test_a_consumer_that_stops_iterating_closes_the_source() -> None:
    camera = FakeCamera()
    stop = threading.Event()
    frames = supervise(camera, stop, Recorder(stop)).frames()
    next(frames)
    next(frames)
    frames.close()
    assert len(camera.captures) == 1 and camera.captures[0].released == 1


def test_stop_ends_the_back_off_wait_at_once() -> None:
    camera = FakeCamera()
    camera.fail_opens(1000)
    stop = threading.Event()
    # The real wait (stop.wait) with a 60 s back-off: only the stop event can end it.
    sup = CaptureSupervisor(lambda: V4l2Source("/dev/video0", capture_factory=camera.capture),
                            stop=stop, reconnect_min_s=60.0, reconnect_max_s=60.0)
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.extend(sup.frames()), daemon=True)
    worker.start()
    while sup.state is not SourceState.FAULT and worker.is_alive():
        stop.wait(0.005)
    stop.set()
    worker.join(timeout=5.0)
    assert not worker.is_alive() and got == []
    assert sup.state is SourceState.CLOSED and sup.reconnects == 0


def test_backoff_delays_double_up_to_the_cap() -> None:
    assert list(itertools.islice(backoff_delays(0.5, 10.0), 7)) == [0.5, 1, 2, 4, 8, 10, 10]
    with pytest.raises(ValueError, match="min <= max"):
        CaptureSupervisor(lambda: V4l2Source("0"), stop=threading.Event(),
                          reconnect_min_s=2.0, reconnect_max_s=1.0)
