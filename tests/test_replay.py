"""Replay sources: folders of stills and video files, as a camera would deliver them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture.frame import Frame
from appliance.capture.replay import Pacer, ReplaySource, hold_frames
from appliance.capture.source import (
    EndOfStream,
    FrameSource,
    RejectedFrame,
    SourceError,
    SourceFault,
)
from appliance.config import InputConfig
from tests.imagefiles import write_rgb


class FakeClock:
    """A monotonic clock that only moves when slept on (or told to)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def picture(level: int) -> np.ndarray:
    img = np.full((120, 160, 3), level, np.uint8)
    img[:, :80, 0] = 255 - level  # not grey, so colour order is checked too
    return img


def drain(source: FrameSource, limit: int = 100) -> list[Frame | RejectedFrame]:
    """Open, read until EndOfStream (at most ``limit`` items), close."""
    source.open()
    items: list[Frame | RejectedFrame] = []
    try:
        while len(items) < limit:
            try:
                items.append(source.read())
            except EndOfStream:
                break
    finally:
        source.close()
    return items


def write_video(path: Path, levels: tuple[int, ...]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 5, (160, 120))
    assert writer.isOpened()
    for level in levels:
        writer.write(cv2.cvtColor(picture(level), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_folder_in_name_order_with_rejections(tmp_path: Path) -> None:
    for name, level in (("b.png", 60), ("a.png", 30), ("c.jpg", 90)):
        write_rgb(tmp_path / name, picture(level))
    (tmp_path / "d.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    source = ReplaySource(tmp_path, input_cfg=InputConfig())
    assert isinstance(source, FrameSource)
    assert source.source_id == f"replay:{tmp_path}"
    items = drain(source)
    assert [Path(i.source).name for i in items] == ["a.png", "b.png", "c.jpg", "d.png"]
    assert [i.seq for i in items] == [1, 2, 3, 4]
    first = items[0]
    assert isinstance(first, Frame) and first.pixel_format == "file"
    assert first.image[0, 0].tolist() == [225, 30, 30]
    assert isinstance(items[3], RejectedFrame) and items[3].code in {"corrupt_image",
                                                                    "not_an_image"}


def test_each_still_is_held_in_view_then_the_next_file(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", picture(30))
    write_rgb(tmp_path / "b.png", picture(200))
    clock = FakeClock()
    source = ReplaySource(tmp_path, input_cfg=InputConfig(), fps=10, hold_s=0.3,
                          clock=clock, sleep=clock.sleep)
    frames = drain(source)
    assert all(isinstance(f, Frame) for f in frames)
    assert [Path(f.source).name for f in frames] == ["a.png"] * 3 + ["b.png"] * 3
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6]
    stamps = [f.timestamp for f in frames if isinstance(f, Frame)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    held = [f.image for f in frames if isinstance(f, Frame)]
    assert np.array_equal(held[0], held[2]) and not np.array_equal(held[2], held[3])
    # The repeats share one picture, so it is read-only for everybody downstream.
    assert not held[0].flags.writeable
    # Paced at 10 fps: every wait is one frame interval when the reader is instant.
    assert clock.sleeps == pytest.approx([0.1] * 5)


def test_a_rejected_file_is_reported_once_even_with_a_hold(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"broken")
    write_rgb(tmp_path / "b.png", picture(90))
    clock = FakeClock()
    source = ReplaySource(tmp_path, input_cfg=InputConfig(), fps=10, hold_s=0.2,
                          clock=clock, sleep=clock.sleep)
    items = drain(source)
    assert [type(i).__name__ for i in items] == ["RejectedFrame", "Frame", "Frame"]


def test_fps_zero_delivers_each_still_once_ignoring_the_hold(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", picture(30))
    write_rgb(tmp_path / "b.png", picture(60))
    source = ReplaySource(tmp_path, input_cfg=InputConfig(), fps=0, hold_s=5.0)
    assert source.hold_frames == 1
    assert [Path(i.source).name for i in drain(source)] == ["a.png", "b.png"]


def test_loop_starts_again_at_the_first_file(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", picture(30))
    write_rgb(tmp_path / "b.png", picture(60))
    items = drain(ReplaySource(tmp_path, input_cfg=InputConfig(), loop=True), limit=5)
    assert [Path(i.source).name for i in items] == ["a.png", "b.png", "a.png", "b.png",
                                                    "a.png"]
    assert [i.seq for i in items] == [1, 2, 3, 4, 5]


def test_video_file_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "stage.avi", (40, 120, 200))
    frames = drain(ReplaySource(path, input_cfg=InputConfig()))
    assert len(frames) == 3
    assert all(isinstance(f, Frame) and f.image.shape == (120, 160, 3) for f in frames)
    assert [f.source for f in frames] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    greens = [int(f.image[60, 120, 1]) for f in frames if isinstance(f, Frame)]
    assert greens == sorted(greens) and greens[-1] - greens[0] > 100


def test_video_loop_rewinds(tmp_path: Path) -> None:
    path = write_video(tmp_path / "stage.avi", (40, 200))
    frames = drain(ReplaySource(path, input_cfg=InputConfig(), loop=True), limit=5)
    assert [f.source.rsplit("#", 1)[1] for f in frames] == ["1", "2", "1", "2", "1"]


def test_read_needs_open_and_close_starts_again(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", picture(30))
    write_rgb(tmp_path / "b.png", picture(60))
    source = ReplaySource(tmp_path, input_cfg=InputConfig())
    with pytest.raises(SourceFault, match="not open"):
        source.read()
    source.open()
    source.open()  # a second open is a no-op, not a restart
    assert Path(source.read().source).name == "a.png"
    source.close()
    source.close()
    source.open()
    assert Path(source.read().source).name == "a.png"


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ReplaySource(tmp_path / "missing", input_cfg=InputConfig())
    with pytest.raises(SourceError, match="no images"):
        ReplaySource(tmp_path, input_cfg=InputConfig())
    (tmp_path / "x.avi").write_bytes(b"garbage")
    source = ReplaySource(tmp_path / "x.avi", input_cfg=InputConfig())
    with pytest.raises(SourceError, match="cannot open"):
        source.open()
    source.close()  # safe after a failed open


def test_pacer_waits_at_most_one_interval_and_never_bursts() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    first = pacer.wait()
    assert clock.sleeps == []  # the first frame is not delayed
    clock.now += 0.05  # the reader took 50 ms
    assert pacer.wait() == pytest.approx(first + 0.25)
    assert clock.sleeps == pytest.approx([0.2])
    clock.now += 3.0  # a reader stalled for many intervals...
    pacer.wait()
    pacer.wait()  # ...gets the next frame one interval later, not a burst of late ones
    assert clock.sleeps == pytest.approx([0.2, 0.25])
    unpaced = Pacer(0.0, clock=clock, sleep=clock.sleep)
    unpaced.wait()
    unpaced.wait()
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(("hold_s", "fps", "frames"),
                         [(2.0, 10.0, 20), (0.0, 10.0, 1), (0.04, 10.0, 1), (5.0, 0.0, 1),
                          (0.25, 30.0, 8)])
def test_hold_frames(hold_s: float, fps: float, frames: int) -> None:
    assert hold_frames(hold_s, fps) == frames
