"""The reference probe's wells and its reading of a calibration."""

from __future__ import annotations

from tools import probe_hep2_reference as probe


def test_a_well_is_one_serum_through_one_camera() -> None:
    fields = probe.well(123, "centromere", 0.5, 4)
    assert [f.seed for f in fields] == [123, 124, 125, 126]
    assert {f.camera_seed for f in fields} == {123}
    assert {f.intensity for f in fields} == {probe.REFERENCE_UNITS}
    assert {f.patterns for f in fields} == {(("centromere", 1.0),)}


def test_a_calibration_is_the_units_per_grey_or_why_it_is_refused() -> None:
    assert probe.calibration([10.0, 10.0, 10.0]) == f"{probe.REFERENCE_UNITS / 10:.3f}"
    assert probe.calibration([10.0, 10.0]).startswith("refused (need at least 3")
