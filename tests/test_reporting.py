"""The report-once policy on tracked frames: pure logic, real fingerprints, no threads."""

from __future__ import annotations

import numpy as np

from appliance.assays.her2.types import FieldResult, ModelRef
from appliance.capture.frame import Frame
from appliance.config import StabilityConfig
from appliance.pipeline.field_memory import FieldMemory, fingerprint
from appliance.pipeline.reporting import ReportPolicy, Tracked, field_key
from appliance.pipeline.stability import Stage, ViewSample, ViewState
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
