"""Replay sources: folders of stills and video files, as a camera would deliver them."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture.frame import Frame
from appliance.capture.replay import RejectedFrame, ReplaySource, SourceError, parse_source
from appliance.config import InputConfig
from tests.imagefiles import write_rgb


def picture(level: int) -> np.ndarray:
    img = np.full((120, 160, 3), level, np.uint8)
    img[:, :80, 0] = 255 - level  # not grey, so colour order is checked too
    return img


def test_folder_in_name_order_with_rejections(tmp_path: Path) -> None:
    for name, level in (("b.png", 60), ("a.png", 30), ("c.jpg", 90)):
        write_rgb(tmp_path / name, picture(level))
    (tmp_path / "d.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    items = list(ReplaySource(tmp_path, input_cfg=InputConfig()).frames())
    assert [Path(i.source).name for i in items] == ["a.png", "b.png", "c.jpg", "d.png"]
    assert [i.seq for i in items] == [1, 2, 3, 4]
    first = items[0]
    assert isinstance(first, Frame)
    assert first.image[0, 0].tolist() == [225, 30, 30]
    assert isinstance(items[3], RejectedFrame) and items[3].code in {"corrupt_image",
                                                                    "not_an_image"}


def test_video_file_frames(tmp_path: Path) -> None:
    path = tmp_path / "stage.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    assert writer.isOpened()
    for level in (40, 120, 200):
        writer.write(cv2.cvtColor(picture(level), cv2.COLOR_RGB2BGR))
    writer.release()
    frames = list(ReplaySource(path, input_cfg=InputConfig()).frames())
    assert len(frames) == 3
    assert all(isinstance(f, Frame) and f.image.shape == (120, 160, 3) for f in frames)
    greens = [int(f.image[60, 120, 1]) for f in frames if isinstance(f, Frame)]
    assert greens == sorted(greens) and greens[-1] - greens[0] > 100


def test_loop_stops_on_the_stop_event(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a.png", picture(50))
    stop = threading.Event()
    source = ReplaySource(tmp_path, input_cfg=InputConfig(), loop=True, stop=stop)
    seen = 0
    for _ in source.frames():
        seen += 1
        if seen == 5:
            stop.set()
    assert seen == 5


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ReplaySource(tmp_path / "missing", input_cfg=InputConfig())
    with pytest.raises(SourceError, match="no images"):
        ReplaySource(tmp_path, input_cfg=InputConfig())
    (tmp_path / "x.avi").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="cannot open"):
        list(ReplaySource(tmp_path / "x.avi", input_cfg=InputConfig()).frames())
    with pytest.raises(SourceError, match="replay:"):
        parse_source("camera:0")
    assert parse_source("replay:/data/fields") == Path("/data/fields")
