"""The report-once policy on tracked frames: pure logic, real fingerprints, no threads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from appliance.assays.her2.types import FieldResult, ModelRef, Supersedes
from appliance.capture.frame import Frame
from appliance.config import Config, StabilityConfig, with_overrides
from appliance.pipeline.field_memory import FieldMemory, fingerprint
from appliance.pipeline.reporting import (
    ReportPolicy,
    Tracked,
    field_key,
    parse_field_key,
    reading_settings,
    sharper_before_warning,
    with_supersedes,
    with_warning,
)
from appliance.pipeline.stability import SharperBefore, Stage, ViewSample, ViewState
from tools.synth.her2_fields import FieldSpec, generate_field

MODEL = ModelRef(name="her2-seg", sha256="ab" * 32, precision="int8",
                 validated_on="generated data only")
FIELDS = [generate_field(FieldSpec(seed=990_400 + i, width=320, height=240)).image
          for i in range(2)]


def tracked(image: np.ndarray, seq: int, stage: Stage, still_id: int | None) -> Tracked:
    fp = fingerprint(image) if stage in (Stage.STABLE, Stage.BLURRED) else None
    view = ViewState(stage=stage, still_id=still_id, still_since=0.0 if still_id else None,
                     sample=ViewSample(motion=0.0, drift=0.0, focus=1.5), fingerprint=fp)
    return Tracked(Frame(image=image, seq=seq, timestamp=float(seq), source="cam"), view)


def result(seq: int, scored: bool = True) -> FieldResult:
    return FieldResult(file="cam", seq=seq, assay="her2",
                       status="scored" if scored else "not_scorable", model=MODEL,
                       image_width=320, image_height=240)


def test_only_stable_frames_are_candidates() -> None:
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    for stage, still in ((Stage.MOVING, None), (Stage.SETTLING, 1), (Stage.BLURRED, 1)):
        assert policy.consider(tracked(FIELDS[0], 1, stage, still), result(1)) is None


def test_a_still_field_is_reported_once_and_not_again_on_return() -> None:
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    first = policy.consider(tracked(FIELDS[0], 10, Stage.STABLE, 1), result(10))
    again = policy.consider(tracked(FIELDS[0], 11, Stage.STABLE, 1), result(11))
    other = policy.consider(tracked(FIELDS[1], 30, Stage.STABLE, 2), result(30))
    back = policy.consider(tracked(FIELDS[0], 50, Stage.STABLE, 3), result(50))
    assert first is not None and first.report
    assert again is not None and not again.report
    assert other is not None and other.report
    assert back is not None and not back.report
    assert back.matched_key == field_key(tracked(FIELDS[0], 10, Stage.STABLE, 1).frame)


def test_a_field_first_refused_is_reported_again_once_scorable() -> None:
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    refused = policy.consider(tracked(FIELDS[0], 10, Stage.STABLE, 1), result(10, False))
    fixed = policy.consider(tracked(FIELDS[0], 40, Stage.STABLE, 2), result(40, True))
    later = policy.consider(tracked(FIELDS[0], 80, Stage.STABLE, 3), result(80, True))
    assert refused is not None and refused.report
    assert fixed is not None and fixed.report
    assert later is not None and not later.report


def test_a_held_view_read_under_new_settings_is_reported_as_superseding_the_first() -> None:
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    before = reading_settings(Config())
    objective = reading_settings(with_overrides(Config(), {"optics.objective": "20x"}))
    first = policy.consider(tracked(FIELDS[0], 10, Stage.STABLE, 1), result(10), before)
    same = policy.consider(tracked(FIELDS[0], 11, Stage.STABLE, 1), result(11), before)
    again = policy.consider(tracked(FIELDS[0], 12, Stage.STABLE, 1), result(12), objective)
    after = policy.consider(tracked(FIELDS[0], 13, Stage.STABLE, 1), result(13), objective)
    back = policy.consider(tracked(FIELDS[0], 50, Stage.STABLE, 2), result(50), objective)
    assert first is not None and first.report and with_supersedes(result(10), first) == result(10)
    assert same is not None and not same.report
    assert again is not None and again.report and again.reason == "settings changed"
    assert with_supersedes(result(12), again).supersedes == Supersedes("cam", 10,
                                                                       "settings_changed")
    assert after is not None and not after.report  # reported once under each setting
    # A return to the field matches the new reading: the replaced one is forgotten.
    assert back is not None and not back.report and back.matched_key == "cam#12"


def test_new_settings_on_a_later_view_of_a_reported_field_report_nothing() -> None:
    """Only the view held through the change is read again: a return after it is a return."""
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    before = reading_settings(Config())
    objective = reading_settings(with_overrides(Config(), {"optics.objective": "20x"}))
    assert policy.consider(tracked(FIELDS[0], 10, Stage.STABLE, 1), result(10), before)
    back = policy.consider(tracked(FIELDS[0], 50, Stage.STABLE, 2), result(50), objective)
    assert back is not None and not back.report


def test_a_scorable_return_to_a_refused_field_names_the_refused_report() -> None:
    policy = ReportPolicy(FieldMemory(StabilityConfig()))
    assert policy.consider(tracked(FIELDS[0], 10, Stage.STABLE, 1), result(10, False))
    fixed = policy.consider(tracked(FIELDS[0], 40, Stage.STABLE, 2), result(40, True))
    assert with_supersedes(result(40), fixed).supersedes == Supersedes("cam", 10, "now_scorable")


def test_the_settings_a_reading_depends_on_are_compared_by_value() -> None:
    hep2 = with_overrides(Config(), {"assay": "hep2"})
    assert reading_settings(hep2) == reading_settings(
        with_overrides(hep2, {"her2.case.duplicate_similarity": 0.9}))
    assert reading_settings(hep2) != reading_settings(
        with_overrides(hep2, {"hep2.specimen.mixed_share": 0.3}))
    assert reading_settings(Config()) != reading_settings(
        with_overrides(Config(), {"optics.um_per_px": 0.5}))
    # A file the config names, made again under the same name (a flat field).
    assert reading_settings(hep2, ("a" * 64,)) != reading_settings(hep2, ("b" * 64,))
    assert reading_settings(hep2, ("a" * 64,)) == reading_settings(hep2, ("a" * 64,))


def test_a_view_softer_than_its_spot_was_just_before_is_warned_about() -> None:
    def view(seen: SharperBefore | None, stage: Stage = Stage.STABLE) -> ViewState:
        return ViewState(stage=stage, still_id=3, still_since=0.0,
                         sample=ViewSample(motion=0.0, drift=0.0, focus=1.5),
                         fingerprint=None, sharpest_before=seen)

    warned = sharper_before_warning(view(SharperBefore(1.8, 0.7)), 1.1)
    assert warned is not None and "sharper 0.7 s before" in warned and "1.80, now 1.50" in warned
    # Within the factor, nothing seen, or not a view the box reports: no warning.
    assert sharper_before_warning(view(SharperBefore(1.6, 0.7)), 1.1) is None
    assert sharper_before_warning(view(None), 1.1) is None
    assert sharper_before_warning(view(SharperBefore(1.8, 0.7), Stage.BLURRED), 1.1) is None
    assert sharper_before_warning(view(SharperBefore(1.8, 0.7)), 100.0) is None  # turned off
    # Added to a scored result's warnings; a refusal keeps its own.
    scored = dataclasses.replace(result(5), warnings=("the assay's own",))
    assert with_warning(scored, warned).warnings == (warned, "the assay's own")
    assert with_warning(scored, None) is scored
    refused = result(6, scored=False)
    assert with_warning(refused, warned) is refused


@pytest.mark.parametrize("key", ["cam", "cam#", "cam#x1", "#-1"])
def test_a_malformed_field_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a field key"):
        parse_field_key(key)


def test_a_field_key_reads_back_even_with_a_hash_in_the_source() -> None:
    frame = Frame(image=FIELDS[0], seq=7, timestamp=0.0, source="replay:a#b")
    assert parse_field_key(field_key(frame)) == ("replay:a#b", 7)
