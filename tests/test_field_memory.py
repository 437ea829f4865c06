"""Fingerprints, their similarity and the report-once field memory, on generated fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from appliance.config import StabilityConfig
from appliance.pipeline.field_memory import (
    FP_HEIGHT,
    FP_WIDTH,
    SAME_SPOT_SHIFT_PX,
    FieldMemory,
    Fingerprint,
    fingerprint,
    register,
    similarity,
)
from tests.test_stability import Camera, clean_scene

W, H = 320, 240
CFG = StabilityConfig()
MATCH = CFG.same_field_similarity


@dataclass(frozen=True)
class Views:
    """Cameras on three different fields of the same tissue type (and scale)."""

    a: Camera
    b: Camera
    c: Camera


@pytest.fixture(scope="module", params=[0.5, 1.0], ids=["20x", "10x"])
def views(request: pytest.FixtureRequest) -> Views:
    umpp = float(request.param)
    a, b, c = (Camera(clean_scene(seed, 640, 480, umpp), seed=seed) for seed in (51, 52, 53))
    return Views(a, b, c)


@pytest.fixture(scope="module")
def prints() -> dict[str, Fingerprint]:
    """Field A, A again after a stage offset, and fields B, C, D (20x)."""
    a, b, c, d = (Camera(clean_scene(seed, 560, 420, 0.5), seed=seed)
                  for seed in (61, 62, 63, 64))
    return {
        "a": fingerprint(a.view(120, 90)),
        "a_back": fingerprint(a.view(150, 70, gain=0.7)),
        "a_blurred": fingerprint(a.view(125, 95, blur=3.0)),
        "a_soft": fingerprint(a.view(120, 90, blur=1.5)),  # the same spot, focus turned
        "b": fingerprint(b.view(120, 90)),
        "c": fingerprint(c.view(120, 90)),
        "d": fingerprint(d.view(120, 90)),
    }


# --------------------------------------------------------------------- similarity


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.1, 0.2])
def test_same_field_after_a_stage_offset_matches(views: Views, fraction: float) -> None:
    ref = fingerprint(views.a.view(160, 120))
    for dx, dy in ((1, 0), (0, -1), (-1, 1)):
        x, y = 160 + round(dx * fraction * W), 120 + round(dy * fraction * H)
        again = views.a.view(x, y, gain=0.6)  # another exposure, new sensor noise
        assert similarity(ref, fingerprint(again)) >= MATCH + 0.05, (dx, dy)


def test_same_field_blurred_or_reexposed_matches(views: Views) -> None:
    ref = fingerprint(views.a.view(160, 120))
    assert similarity(ref, fingerprint(views.a.view(163, 118, blur=3.0))) >= MATCH
    assert similarity(ref, fingerprint(views.a.view(160, 120, gain=0.45))) >= 0.95


def test_other_fields_of_the_same_tissue_do_not_match(views: Views) -> None:
    ref = fingerprint(views.a.view(160, 120))
    sims = [similarity(ref, fingerprint(cam.view(x, y)))
            for cam in (views.b, views.c) for x, y in ((0, 0), (160, 120), (320, 240))]
    assert max(sims) < 0.5, sims


def test_far_parts_of_the_same_slide_do_not_match(views: Views) -> None:
    ref = fingerprint(views.a.view(0, 0))
    sims = [similarity(ref, fingerprint(views.a.view(x, y))) for x, y in ((320, 0), (0, 240),
                                                                          (320, 240))]
    assert max(sims) < 0.5, sims


def test_similarity_is_about_symmetric(views: Views) -> None:
    p, q = fingerprint(views.a.view(100, 100)), fingerprint(views.a.view(140, 80))
    assert similarity(p, q) == pytest.approx(similarity(q, p), abs=0.03)


def test_a_blank_view_matches_nothing(views: Views) -> None:
    blank = fingerprint(np.full((H, W, 3), 180, np.uint8))
    assert blank.blank
    assert similarity(blank, blank) == 0.0
    assert similarity(blank, fingerprint(views.a.view(0, 0))) == 0.0


def test_similarity_leaves_fingerprints_unchanged(prints: dict[str, Fingerprint]) -> None:
    """OpenCV's phaseCorrelate writes its window into its inputs: never into ours."""
    before = {k: fp.pixels.copy() for k, fp in prints.items()}
    first = similarity(prints["a"], prints["a_back"])
    for _ in range(3):
        assert similarity(prints["a"], prints["a_back"]) == first
        similarity(prints["a"], prints["b"])
    for k, fp in prints.items():
        assert np.array_equal(fp.pixels, before[k])
        assert not fp.pixels.flags.writeable


def test_fingerprint_shape_and_normalisation(prints: dict[str, Fingerprint]) -> None:
    px = prints["a"].pixels
    assert px.shape == (FP_HEIGHT, FP_WIDTH) and px.dtype == np.float32
    assert abs(float(px.mean())) < 1e-4 and float(px.std()) == pytest.approx(1.0, abs=1e-3)
    wide = fingerprint(np.zeros((1080, 1920, 3), np.uint8))  # any aspect: the same size
    assert wide.pixels.shape == (FP_HEIGHT, FP_WIDTH)


def test_bad_fingerprints_are_refused() -> None:
    with pytest.raises(ValueError, match="float32"):
        Fingerprint(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="float32"):
        Fingerprint(np.zeros((FP_HEIGHT, FP_WIDTH), np.float64))
    with pytest.raises(ValueError, match="too small"):
        fingerprint(np.zeros((4, 100, 3), np.uint8))


# ------------------------------------------------------------------------ memory


def test_a_still_period_is_reported_once(prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(CFG)
    first = mem.decide(1, prints["a"], scored=True)
    assert first.report and first.reason == "new field" and first.matched_key is None
    # Asked again before the result is remembered (another frame of the same period).
    assert mem.decide(1, prints["a"], scored=True).reason == "same still period"
    mem.remember("k1", 1, prints["a"], scored=True)
    again = mem.decide(1, prints["a"], scored=True)
    assert not again.report and again.reason == "same still period" and again.matched_key == "k1"


def test_a_return_to_a_field_is_not_reported(prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(CFG)
    mem.decide(1, prints["a"], scored=True)
    mem.remember("k1", 1, prints["a"], scored=True)
    back = mem.decide(7, prints["a_back"], scored=True)
    assert not back.report
    assert back.reason == "return to field k1" and back.matched_key == "k1"
    other = mem.decide(8, prints["b"], scored=True)
    assert other.report and other.reason == "new field"


def test_an_unscored_field_is_reported_again_once_scorable(
        prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(CFG)
    mem.decide(1, prints["a_blurred"], scored=False)
    mem.remember("blurry", 1, prints["a_blurred"], scored=False)
    # Still not scorable: nothing new to report.
    assert not mem.decide(2, prints["a_blurred"], scored=False).report
    fixed = mem.decide(3, prints["a"], scored=True)
    assert fixed.report and fixed.reason == "now scorable" and fixed.matched_key == "blurry"
    mem.remember("sharp", 3, prints["a"], scored=True)
    assert mem.keys() == ["sharp"]  # the scored report replaced the unscored one
    later = mem.decide(4, prints["a_back"], scored=True)
    assert not later.report and later.matched_key == "sharp"
    # Scored once, a later unscored view of it is a plain return.
    assert mem.decide(5, prints["a_blurred"], scored=False).reason == "return to field sharp"


def test_a_return_clearly_sharper_than_its_report_is_reported_again(
        prints: dict[str, Fingerprint]) -> None:
    """The box reported a view the user then focused better, the stage unmoved: the
    sharper reading replaces it. A view as sharp or less sharp is a plain return, so is a
    sharper view of another spot of the field, and only a report raises the bar."""
    mem = FieldMemory(CFG)
    assert mem.decide(1, prints["a_soft"], scored=True, focus=1.2).report
    mem.remember("soft", 1, prints["a_soft"], scored=True, focus=1.2)
    # Within the factor (noise, a touch of the knob), or less sharp: a return.
    assert not mem.decide(2, prints["a"], scored=True, focus=1.2 * 1.09).report
    assert not mem.decide(3, prints["a"], scored=True, focus=1.05).report
    # Sharper but not scorable (a refusal is never reported over a scored field).
    assert not mem.decide(4, prints["a"], scored=False, focus=1.5).report
    # Sharper, but the stage was moved: other cells, whose figure differs by content.
    assert not mem.decide(5, prints["a_back"], scored=True, focus=1.5).report
    # Sharper by the factor at the same spot: reported, replacing the soft report.
    sharper = mem.decide(6, prints["a"], scored=True, focus=1.2 * 1.1)
    assert sharper.report and sharper.reason == "sharper" and sharper.matched_key == "soft"
    mem.remember("sharp", 6, prints["a"], scored=True, focus=1.2 * 1.1)
    assert mem.keys() == ["sharp"]
    # The bar is now the sharper report's; an unknown focus compares nothing.
    assert not mem.decide(7, prints["a_soft"], scored=True, focus=1.4).report
    assert mem.decide(8, prints["a_soft"], scored=True, focus=1.46).reason == "sharper"
    assert not mem.decide(9, prints["a"], scored=True).report


def test_the_sharper_factor_can_turn_the_rule_off(prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(StabilityConfig(sharper_factor=100.0))
    mem.decide(1, prints["a_soft"], scored=True, focus=1.1)
    mem.remember("soft", 1, prints["a_soft"], scored=True, focus=1.1)
    assert mem.decide(2, prints["a"], scored=True, focus=3.0).reason == "return to field soft"


def test_a_registration_gives_the_shift_between_two_views(
        prints: dict[str, Fingerprint]) -> None:
    same_spot = register(prints["a"], prints["a_soft"])
    assert same_spot.similarity >= MATCH and same_spot.shift <= SAME_SPOT_SHIFT_PX
    moved = register(prints["a"], prints["a_back"])  # 30 and 20 px of a 320 px view
    assert moved.similarity >= MATCH and moved.shift > SAME_SPOT_SHIFT_PX
    assert register(prints["a"], prints["b"]).similarity == similarity(prints["a"], prints["b"])


def test_memory_forgets_the_oldest_field(prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(StabilityConfig(memory=2))
    for sid, name in enumerate(("a", "b", "c"), start=1):
        assert mem.decide(sid, prints[name], scored=True).report
        mem.remember(name, sid, prints[name], scored=True)
    assert len(mem) == 2 and mem.keys() == ["b", "c"] and mem.capacity == 2
    assert mem.decide(10, prints["a_back"], scored=True).reason == "new field"  # forgotten


def test_a_return_keeps_a_field_in_memory(prints: dict[str, Fingerprint]) -> None:
    mem = FieldMemory(StabilityConfig(memory=2))
    for sid, name in ((1, "a"), (2, "b")):
        mem.decide(sid, prints[name], scored=True)
        mem.remember(name, sid, prints[name], scored=True)
    assert not mem.decide(3, prints["a_back"], scored=True).report  # a return refreshes a
    mem.decide(4, prints["c"], scored=True)
    mem.remember("c", 4, prints["c"], scored=True)
    assert mem.keys() == ["a", "c"]


def test_repeated_questions_about_a_return_reuse_the_match(
        prints: dict[str, Fingerprint], monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.pipeline.field_memory as fm

    mem = FieldMemory(CFG)
    for sid, name in ((1, "a"), (2, "b"), (3, "c")):
        mem.decide(sid, prints[name], scored=True)
        mem.remember(name, sid, prints[name], scored=True)
    calls = 0
    real = fm.register

    def counting(p: Fingerprint, q: Fingerprint) -> fm.Registration:
        nonlocal calls
        calls += 1
        return real(p, q)

    monkeypatch.setattr(fm, "register", counting)
    for _ in range(5):  # five analysed frames of one still period
        assert mem.decide(9, prints["a_back"], scored=True).matched_key == "a"
    assert calls == 3  # one search of the memory, not five


def test_remember_needs_a_key(prints: dict[str, Fingerprint]) -> None:
    with pytest.raises(ValueError, match="key"):
        FieldMemory(CFG).remember("", 1, prints["a"], scored=True)
