"""Still-field detection on generated HER2 fields seen through a simulated eyepiece camera.

The tissue comes from the synthetic generator rendered without optics; the camera
(fixed vignetting, exposure, sensor noise, defocus) is applied here per frame, so a
frame sequence can pan, drift, flicker and refocus over the same tissue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np
import pytest

from appliance.config import StabilityConfig
from appliance.pipeline.stability import (
    FOCUS_HISTORY_S,
    FOCUS_LONGEST,
    THUMBNAIL_LONGEST,
    Stage,
    StillnessTracker,
    ViewState,
    change,
    sharpness,
    thumbnail,
)
from tools.synth.her2_fields import FieldSpec, build_scene, render_scene

W, H = 320, 240
FPS = 15.0
# The tracker's logic is tested at a focus threshold between 1 px and 2 px of blur (the
# shipped default is lower on purpose: see StabilityConfig.min_focus).
CFG = StabilityConfig(min_focus=1.3)


def clean_scene(seed: int, width: int, height: int, um_per_px: float) -> np.ndarray:
    """Light transmitted by a generated field, float32 RGB in 0..1, no camera effects."""
    scene = build_scene(FieldSpec(seed=seed, width=width, height=height, um_per_px=um_per_px))
    return render_scene(scene, camera=False).astype(np.float32) / 255.0


def vignette(width: int, height: int, corner_loss: float = 0.35) -> np.ndarray:
    """Radial light fall-off of the eyepiece, fixed to the camera (not the tissue)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    return (1.0 - corner_loss * r2 / 2.0)[..., None]


class Camera:
    """Views of a scene as an eyepiece camera sees them: crop, defocus, light, noise."""

    def __init__(self, scene: np.ndarray, width: int = W, height: int = H, seed: int = 0,
                 noise: float = 0.01) -> None:
        self.scene, self.width, self.height, self.noise = scene, width, height, noise
        self.vig = vignette(width, height)
        self.rng = np.random.default_rng(seed)

    def view(self, x: int, y: int, *, gain: float = 0.9, blur: float = 0.0) -> np.ndarray:
        light = self.scene[y:y + self.height, x:x + self.width]
        assert light.shape[:2] == (self.height, self.width), "view outside the scene"
        if blur > 0:
            light = cv2.GaussianBlur(light, (0, 0), blur)
        light = light * self.vig * gain
        light = light + self.rng.normal(0.0, self.noise, size=light.shape).astype(np.float32)
        return np.clip(light * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return clean_scene(31, 720, 480, 0.5)


def run(frames: Iterable[np.ndarray], cfg: StabilityConfig = CFG,
        t0: float = 100.0) -> list[ViewState]:
    """Feed frames at FPS to a fresh tracker; capture times start at an arbitrary t0."""
    tracker = StillnessTracker(cfg)
    return [tracker.update(f, t0 + i / FPS) for i, f in enumerate(frames)]


def stages(states: Sequence[ViewState]) -> str:
    """One letter per frame (m, s, S, b) for readable assertion messages."""
    code = {Stage.MOVING: "m", Stage.SETTLING: "s", Stage.STABLE: "S", Stage.BLURRED: "b"}
    return "".join(code[s.stage] for s in states)


def ids(states: Sequence[ViewState]) -> list[int]:
    """The still ids in order of first appearance."""
    seen: list[int] = []
    for s in states:
        if s.still_id is not None and s.still_id not in seen:
            seen.append(s.still_id)
    return seen


# ------------------------------------------------------------------------ measurements


def test_thumbnail_is_small_normalised_and_blind_to_exposure(scene: np.ndarray) -> None:
    cam = Camera(scene, 640, 480)
    bright, dim = cam.view(20, 0, gain=0.95), cam.view(20, 0, gain=0.6)
    t = thumbnail(bright)
    assert t.dtype == np.float32 and max(t.shape) == THUMBNAIL_LONGEST
    assert t.shape == (120, 160)
    assert abs(float(t.mean())) < 1e-3 and abs(float(t.std()) - 1.0) < 1e-3
    assert change(t, thumbnail(dim)) < CFG.motion_threshold / 2
    moved = cam.view(36, 0, gain=0.95)  # 16 px: 4 thumbnail pixels
    assert change(t, thumbnail(moved)) > 5 * CFG.motion_threshold


def test_blank_view_noise_is_not_motion() -> None:
    rng = np.random.default_rng(1)
    frames = [np.clip(200 + rng.normal(0, 3, (H, W, 3)), 0, 255).astype(np.uint8)
              for _ in range(2)]
    assert change(thumbnail(frames[0]), thumbnail(frames[1])) < CFG.motion_threshold
    assert sharpness(frames[0]) == pytest.approx(1.0)  # nothing to judge: not sharp


def test_change_of_differently_sized_views_is_infinite() -> None:
    a = thumbnail(np.zeros((240, 320, 3), np.uint8))
    b = thumbnail(np.zeros((240, 420, 3), np.uint8))
    assert change(a, b) == float("inf")


@pytest.mark.parametrize("um_per_px", [0.25, 1.0])
def test_sharpness_falls_with_blur_at_either_magnification(um_per_px: float) -> None:
    """640x480 views shrink to the FOCUS_LONGEST copy: sharp reads well above 1, blur ~1."""
    cam = Camera(clean_scene(41, 640, 480, um_per_px), 640, 480)
    readings = [sharpness(cam.view(0, 0, blur=b)) for b in (0.0, 1.0, 3.0, 6.0)]
    assert readings[0] > 1.4, readings
    assert readings == sorted(readings, reverse=True), readings
    assert readings[2] < 1.2, readings
    assert 0.95 < readings[3] < 1.1, readings


def test_sharpness_ignores_sensor_noise_and_exposure(scene: np.ndarray) -> None:
    quiet = sharpness(Camera(scene, noise=0.0).view(0, 0))
    noisy = Camera(scene, noise=0.03, seed=2)
    for gain in (0.5, 0.95):
        assert sharpness(noisy.view(0, 0, gain=gain)) == pytest.approx(quiet, rel=0.05)
    blurred = sharpness(Camera(scene, noise=0.03).view(0, 0, blur=3.0))
    assert blurred < 1.2  # noise must not make a blurred view read sharp


@pytest.mark.parametrize(("bad", "why"), [
    (np.zeros((240, 320), np.float32), "uint8"),
    (np.zeros((240, 320, 4), np.uint8), "RGB image"),
    (np.zeros((0, 320, 3), np.uint8), "empty image"),
    (np.zeros((4, 320, 3), np.uint8), "too small"),
])
def test_bad_images_are_refused_with_a_reason(bad: np.ndarray, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sharpness(bad)
    with pytest.raises(ValueError, match=why):
        StillnessTracker(CFG).update(bad, 0.0)


def test_grey_frames_are_accepted(scene: np.ndarray) -> None:
    rgb = Camera(scene).view(0, 0)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert change(thumbnail(rgb), thumbnail(grey)) < 0.01
    assert max(thumbnail(np.zeros((960, 1280), np.uint8)).shape) == THUMBNAIL_LONGEST
    assert FOCUS_LONGEST >= 2 * THUMBNAIL_LONGEST


# ---------------------------------------------------------------------------- tracker


def pan_sequence(cam: Camera) -> tuple[list[np.ndarray], slice, slice, slice]:
    """Still 1 s, pan 0.5 s (15 px a frame, 4.7% of the width), still 1 s."""
    still1 = [cam.view(20, 100) for _ in range(15)]
    pan = [cam.view(20 + 15 * (i + 1), 100) for i in range(8)]
    still2 = [cam.view(20 + 15 * 8, 100) for _ in range(15)]
    return still1 + pan + still2, slice(0, 15), slice(15, 23), slice(23, 38)


def test_still_pan_still(scene: np.ndarray) -> None:
    frames, first, pan, second = pan_sequence(Camera(scene))
    states = run(frames)
    code = stages(states)
    assert code[pan] == "m" * 8, code
    for part in (first, second):
        period = states[part]
        assert len({s.still_id for s in period}) == 1, code
        since = period[0].still_since
        assert since is not None and all(s.still_since == since for s in period)
        for s, t in zip(period, (100.0 + i / FPS for i in range(part.start, part.stop)),
                        strict=True):
            expected = Stage.STABLE if t - since >= CFG.stable_s else Stage.SETTLING
            assert s.stage is expected, (code, t - since)
    a, b = states[first][0].still_id, states[second][0].still_id
    assert a is not None and b is not None and b > a
    assert all(s.still_id is None and s.fingerprint is None for s in states[pan])


def test_fingerprint_only_once_stable_and_cached_per_period(scene: np.ndarray) -> None:
    frames, first, _, second = pan_sequence(Camera(scene))
    states = run(frames)
    for part in (first, second):
        prints = {id(s.fingerprint) for s in states[part] if s.stage is Stage.STABLE}
        assert len(prints) == 1 and None not in prints
        assert all(s.fingerprint is None for s in states[part] if s.stage is Stage.SETTLING)
    assert states[first][-1].fingerprint is not states[second][-1].fingerprint


def test_noise_and_exposure_flicker_stay_stable(scene: np.ndarray) -> None:
    cam = Camera(scene, noise=0.025, seed=3)
    gains = np.random.default_rng(4).uniform(0.7, 1.0, 45)
    states = run(cam.view(200, 50, gain=float(g)) for g in gains)
    code = stages(states)
    assert len(ids(states)) == 1, code
    assert max(s.sample.motion for s in states) < CFG.motion_threshold
    settle = sum(1 for i in range(45) if (100.0 + i / FPS) - 100.0 < CFG.stable_s)
    assert settle in (9, 10)  # 0.6 s at 15 fps, give or take the float rounding of the times
    assert code == "s" * settle + "S" * (45 - settle), code


def test_blurred_then_refocused_gets_a_new_still_period(scene: np.ndarray) -> None:
    cam = Camera(scene, seed=5)
    blurred = [cam.view(100, 100, blur=3.0) for _ in range(15)]
    turning = [cam.view(100, 100, blur=b) for b in (2.0, 1.0, 0.5)]
    sharp = [cam.view(100, 100) for _ in range(15)]
    states = run(blurred + turning + sharp)
    code = stages(states)
    assert "b" in code[:15] and "S" not in code[:15], code
    assert code[-1] == "S", code
    blurred_id, sharp_id = states[14].still_id, states[-1].still_id
    assert blurred_id is not None and sharp_id is not None and sharp_id > blurred_id
    first_sharp = next(s for s in states if s.still_id == sharp_id)
    assert first_sharp.stage is Stage.SETTLING  # judged afresh: still for stable_s again


def test_refocus_too_subtle_for_motion_still_starts_a_new_period() -> None:
    """640x480 frames, blur 1.5 px -> sharp: the thumbnail hardly changes, the focus does."""
    cam = Camera(clean_scene(33, 720, 520, 0.5), 640, 480, seed=8)
    frames = [cam.view(0, 0, blur=1.5) for _ in range(12)] + [cam.view(0, 0) for _ in range(12)]
    states = run(frames)
    code = stages(states)
    assert "m" not in code, code  # no motion: the focus rule must do it
    assert states[11].stage is Stage.BLURRED and states[-1].stage is Stage.STABLE, code
    assert ids(states) == [states[0].still_id, states[-1].still_id]


def test_defocusing_a_stable_view_starts_a_blurred_period(scene: np.ndarray) -> None:
    cam = Camera(scene, seed=6)
    frames = [cam.view(100, 100) for _ in range(15)] + [cam.view(100, 100, blur=3.0)
                                                        for _ in range(15)]
    states = run(frames)
    assert states[14].stage is Stage.STABLE and states[-1].stage is Stage.BLURRED
    assert states[-1].still_id != states[14].still_id


def test_a_view_held_softer_than_its_spot_was_a_moment_before_says_so(
        scene: np.ndarray) -> None:
    """The user turns the knob through the best focus and stops on a softer one: the
    still view carries the sharpest frame of the same spot seen before it was held."""
    cam = Camera(scene, seed=9)
    elsewhere = [cam.view(380, 200) for _ in range(4)]  # sharper, but another spot
    through_best = [cam.view(100, 100, blur=b) for b in (2.0, 1.0, 0.0, 0.0, 0.3)]
    held = [cam.view(100, 100, blur=0.5) for _ in range(15)]
    states = run(elsewhere + through_best + held)
    last = states[-1]
    assert last.stage is Stage.STABLE, stages(states)
    seen = last.sharpest_before
    assert seen is not None and seen.focus > 1.1 * last.sample.focus
    # One of the sharp frames of the same spot (indices 6 and 7; the history keeps a frame
    # every FOCUS_HISTORY_STEP_S), not the other spot's.
    assert seen.focus in {s.sample.focus for s in states[6:8]}
    assert 0.0 < seen.seconds_before < len(through_best) / FPS
    # Settling frames carry nothing yet; a view held at its sharpest carries nothing.
    assert all(s.sharpest_before is None for s in states if s.stage is Stage.SETTLING)
    sharp_held = run(through_best[:3] + [cam.view(100, 100) for _ in range(15)])
    assert sharp_held[-1].stage is Stage.STABLE and sharp_held[-1].sharpest_before is None


def test_the_focus_history_forgets_what_is_older_than_its_window(scene: np.ndarray) -> None:
    cam = Camera(scene, seed=10)
    tracker = StillnessTracker(CFG)
    for i in range(3):  # the spot sharp, long before
        tracker.update(cam.view(100, 100), 100.0 + i / FPS)
    t = 100.0 + FOCUS_HISTORY_S + 1.0
    state = None
    for i in range(15):
        state = tracker.update(cam.view(100, 100, blur=0.5), t + i / FPS)
    assert state is not None and state.stage is Stage.STABLE and state.sharpest_before is None


def test_slow_drift_is_caught_by_the_drift_threshold() -> None:
    """1/4 px a frame on the 320 px view: every step is below the motion threshold."""
    wide = clean_scene(32, 1400, 1000, 0.25)
    vig, rng = vignette(W, H), np.random.default_rng(7)

    def frame(x: int) -> np.ndarray:  # a 1280x960 crop shrunk 4x: the stage moves 1 px
        light = np.asarray(cv2.resize(wide[20:980, x:x + 1280], (W, H),
                                      interpolation=cv2.INTER_AREA))
        light = light * vig * 0.9 + rng.normal(0.0, 0.01, size=light.shape).astype(np.float32)
        return np.clip(light * 255 + 0.5, 0, 255).astype(np.uint8)

    states = run(frame(10 + i) for i in range(45))
    assert max(s.sample.motion for s in states) <= CFG.motion_threshold
    moving = [s for s in states if s.stage is Stage.MOVING]
    assert moving and all(s.sample.drift > CFG.drift_threshold for s in moving)
    assert Stage.STABLE not in {s.stage for s in states}, stages(states)
    assert len(ids(states)) >= 3


def test_stable_s_zero_is_stable_at_once(scene: np.ndarray) -> None:
    cam = Camera(scene)
    states = run([cam.view(0, 0) for _ in range(3)], StabilityConfig(stable_s=0.0))
    assert [s.stage for s in states] == [Stage.STABLE] * 3
    assert states[0].fingerprint is not None


def test_timestamps_must_not_go_back(scene: np.ndarray) -> None:
    tracker = StillnessTracker(CFG)
    frame = Camera(scene).view(0, 0)
    tracker.update(frame, 5.0)
    tracker.update(frame, 5.0)  # two frames with one time stamp: allowed
    with pytest.raises(ValueError, match="go back"):
        tracker.update(frame, 4.9)


def test_tracker_uses_only_the_given_times(scene: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def no_clock() -> float:
        raise AssertionError("the tracker read a clock")

    fail: Callable[[], float] = no_clock
    monkeypatch.setattr(time, "monotonic", fail)
    monkeypatch.setattr(time, "time", fail)
    monkeypatch.setattr(time, "perf_counter", fail)
    cam = Camera(scene)
    states = run([cam.view(0, 0) for _ in range(12)], t0=0.0)
    assert states[-1].stage is Stage.STABLE and states[-1].still_since == 0.0
