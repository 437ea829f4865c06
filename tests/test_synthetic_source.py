"""The synthetic slide session: holds, stage moves, revisits, pacing, the end."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from appliance.capture.frame import Frame
from appliance.capture.source import EndOfStream, FrameSource, SourceError, SourceFault
from appliance.capture.synthetic import (
    DEFAULT_SIZE,
    Step,
    SyntheticSource,
    move_frame,
    session_plan,
    visit_order,
)

W, H = 160, 120  # small fields keep generation fast


def expand(plan: list[Step]) -> list[tuple[int, Step]]:
    """(index in step, step) for every frame of a plan, in order."""
    return [(k, step) for step in plan for k in range(step.frames)]


@pytest.fixture(scope="module")
def session() -> tuple[SyntheticSource, list[Frame]]:
    """One pass of a 3-field session at nominal 10 fps: holds of 2 frames, moves of 6."""
    source = SyntheticSource(11, width=W, height=H, fps=0, hold_s=0.2, fields=3)
    source.open()
    frames: list[Frame] = []
    with pytest.raises(EndOfStream):
        while len(frames) < 1000:
            frames.append(source.read())
    source.close()
    return source, frames


def test_frames_are_rgb_pictures_of_the_asked_size(
        session: tuple[SyntheticSource, list[Frame]]) -> None:
    source, frames = session
    assert isinstance(source, FrameSource) and source.source_id == "synthetic:11"
    assert len(frames) == source.frames_per_pass == 4 * 2 + 3 * 6
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    for f in frames:
        assert f.shape == (H, W, 3) and f.image.dtype == np.uint8
        assert f.um_per_px is None and f.pixel_format == "RGB"
    # A brightfield field: mostly light, with stain (not a flat or black picture).
    assert 120 < float(frames[0].image.mean()) < 250 and float(frames[0].image.std()) > 10


def test_holds_repeat_the_picture_and_moves_change_it(
        session: tuple[SyntheticSource, list[Frame]]) -> None:
    source, frames = session
    shown = expand(source.plan)
    for frame, (_, step) in zip(frames, shown, strict=True):
        still = source.field_image(step.field)
        if step.phase == "hold":
            assert np.array_equal(frame.image, still)
        else:
            # Neither field exactly, but something in between.
            assert not np.array_equal(frame.image, still)
            assert not np.array_equal(frame.image, source.field_image(step.origin))
    moves = [f.image.astype(np.int16) for f, (_, s) in zip(frames, shown, strict=True)
             if s.phase == "move"]
    # Every move frame differs clearly from the one before: real motion for a detector.
    assert all(float(np.abs(a - b).mean()) > 2.0 for a, b in pairwise(moves))


def test_a_revisit_shows_the_same_field_again(
        session: tuple[SyntheticSource, list[Frame]]) -> None:
    source, frames = session
    holds = [s.field for s in source.plan if s.phase == "hold"]
    assert holds[:3] == [0, 1, 2] and holds[3] in (0, 1)  # back to an earlier field
    first_look: dict[int, np.ndarray] = {}
    for frame, (_, step) in zip(frames, expand(source.plan), strict=True):
        if step.phase == "hold":
            first_look.setdefault(step.field, frame.image)
    revisit = [f for f, (_, s) in zip(frames, expand(source.plan), strict=True)
               if s.phase == "hold"][-1]
    assert np.array_equal(revisit.image, first_look[holds[3]])
    assert not np.array_equal(first_look[0], first_look[1])  # distinct fields


def test_a_move_slides_from_one_field_to_the_next() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    for direction in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        assert np.array_equal(move_frame(a, b, direction, 0.0), a)
        assert np.array_equal(move_frame(a, b, direction, 1.0), b)
    halfway = move_frame(a, b, (1, 0), 0.5)  # moving right: a's right half, then b's left
    assert np.array_equal(halfway[:, :20], a[:, 20:]) and np.array_equal(halfway[:, 20:],
                                                                        b[:, :20])


def test_the_plan_revisits_after_every_third_field() -> None:
    order = visit_order(7, np.random.default_rng(3))
    assert list(dict.fromkeys(order)) == list(range(7))  # new fields in turn
    assert len(order) == 9  # revisits after fields 2 and 5
    assert order[3] < 2 and order[7] < 5
    plan = session_plan(7, seed=3, hold=5, move=2, loop=False)
    assert [s.phase for s in plan] == ["hold", "move"] * 8 + ["hold"]
    assert all(s.frames == (5 if s.phase == "hold" else 2) for s in plan)
    assert all(m.origin == h.field for h, m in zip(plan[::2], plan[1::2], strict=False))


def test_loop_moves_back_to_the_first_field_and_goes_on() -> None:
    source = SyntheticSource(5, width=W, height=H, fps=0, hold_s=0.1, loop=True, fields=2,
                             move_s=0.2)
    assert [(s.field, s.phase) for s in source.plan] == [(0, "hold"), (1, "move"),
                                                         (1, "hold"), (0, "move")]
    source.open()
    frames = [source.read() for _ in range(source.frames_per_pass + 1)]
    assert np.array_equal(frames[-1].image, frames[0].image)
    assert frames[-1].seq == source.frames_per_pass + 1


def test_fps_paces_the_frames_and_counts_the_hold_in_frames() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    source = SyntheticSource(2, width=W, height=H, fps=20, hold_s=0.2, fields=1,
                             clock=lambda: now[0], sleep=sleep)
    assert source.plan == [Step(0, "hold", 4, 0, (0, 0))]
    source.open()
    stamps = [source.read().timestamp for _ in range(4)]
    assert stamps == pytest.approx([0.0, 0.05, 0.1, 0.15])
    with pytest.raises(EndOfStream):
        source.read()


def test_defaults_and_refusals() -> None:
    source = SyntheticSource()
    assert (source.width, source.height) == DEFAULT_SIZE == (1280, 960)
    assert sum(s.phase == "hold" for s in source.plan) == 8  # 6 fields and 2 revisits
    with pytest.raises(SourceFault, match="not open"):
        source.read()
    with pytest.raises(SourceError, match="at least 1 field"):
        SyntheticSource(fields=0)
    with pytest.raises(SourceError, match=r"32\.\.8192"):
        SyntheticSource(width=16, height=16)
