"""HEp-2 cases: a patient's well pooled from its fields, and the kit controls checked in it.

The control rules and the case summary are pure and tested on made-up field results;
the workflow runs on a real SQLite store, through the recorder's companion hook as in
the service, with the fields' overlay fingerprints telling a return to a field.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pypdf
import pytest
import referencing

from appliance.assays.hep2.control import (
    Hep2ControlCheck,
    control_expectation,
    evaluate_control,
    westgard_check,
)
from appliance.assays.hep2.control_trend import ControlReading
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult
from appliance.assays.her2.types import FieldResult, Supersedes
from appliance.config import Config, ConfigError, with_overrides
from appliance.outputs import audit, casebook, hep2_json
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.display.live import LiveCase, case_rows
from appliance.outputs.store import ResultStore
from appliance.service.cases import CaseError, CaseWorkflow, case_needs_attention
from appliance.service.hep2_case_report import hep2_report_data
from appliance.service.hep2_case_summary import Hep2CaseSummary
from appliance.service.recorder import Recorder
from tests.broker import Mosquitto
from tests.imagefiles import write_rgb
from tests.test_hep2_well import CFG, MODEL, cell, field, refused

CASE_SCHEMA = contract.SCHEMA_DIR / "hep2-case.schema.json"


def homogeneous(name: str, *, brightness: float = 80.0, n: int = 20) -> Hep2Result:
    return field([cell("homogeneous", brightness=brightness)] * n, name)


def negative(name: str) -> Hep2Result:
    return field([cell("negative", brightness=8.0)] * 20, name)


# ------------------------------------------------------------------- the control rules


def test_control_expectations_are_names_codes_or_negative() -> None:
    assert control_expectation("negative") == "negative"
    assert control_expectation("AC-0") == "negative"
    assert control_expectation("AC-1") == "homogeneous"
    assert control_expectation("fine speckled") == "fine_speckled"
    with pytest.raises(ValueError, match="neither 'negative' nor a pattern"):
        control_expectation("3+")
    with pytest.raises(ConfigError, match=r"hep2\.control\.default_expected"):
        with_overrides(Config(), {"hep2.control.default_expected": "AC-99"})


def test_a_positive_control_must_read_its_pattern_first() -> None:
    ok = evaluate_control([homogeneous("c1.png"), homogeneous("c2.png")], "AC-1", CFG)
    assert ok.valid and ok.expected == "homogeneous"
    assert "AC-1 nuclear homogeneous as expected" in ok.reasons[0]
    other = evaluate_control([field([cell("centromere")] * 20, "c.png")], "AC-1", CFG)
    assert not other.valid
    assert other.reasons == ("reads AC-3 centromere first, AC-1 nuclear homogeneous expected",)
    # A look-alike subtype fails too, and the reason says which kind of miss it is.
    alike = evaluate_control([field([cell("dense_fine_speckled")] * 20, "c.png")],
                             "fine_speckled", CFG)
    assert not alike.valid and "look-alike subtype" in alike.reasons[0]
    dim = evaluate_control([field([cell("homogeneous", brightness=8.0)] * 20, "c.png")],
                           "AC-1", CFG)
    assert not dim.valid and "reads negative" in dim.reasons[0]


def test_a_negative_control_must_read_negative() -> None:
    assert evaluate_control([negative("n.png")], "negative", CFG).valid
    high = evaluate_control([homogeneous("n.png")], "negative", CFG)
    assert not high.valid and "negative control reads positive (AC-1" in high.reasons[0]


def test_the_kits_positive_control_must_read_in_the_labs_range() -> None:
    lab = replace(CFG, control=replace(CFG.control, positive_units=[60.0, 120.0]))
    ok = evaluate_control([homogeneous("c.png", brightness=80.0)], "AC-1", lab)
    assert ok.valid and ok.reasons[0].endswith("80 units within the lab's range 60-120")
    faded = evaluate_control([homogeneous("c.png", brightness=40.0)], "AC-1", lab)
    assert not faded.valid and "40 units is outside the lab's range 60-120" in faded.reasons[0]
    assert "drifted" in faded.reasons[0]
    hot = evaluate_control([homogeneous("c.png", brightness=150.0)], "homogeneous", lab)
    assert not hot.valid and "150 units is outside" in hot.reasons[0]
    raw = evaluate_control([field([cell("homogeneous")] * 20, "c.png", calibrated=False)],
                           "AC-1", lab)
    assert not raw.valid and "are not calibrated" in raw.reasons[0]
    # Another pattern's control (not the kit's, default_expected) is checked for its
    # pattern only, and without a range the kit's is too.
    assert evaluate_control([field([cell("centromere", brightness=30.0)] * 20, "c.png")],
                            "AC-3", lab).valid
    assert evaluate_control([homogeneous("c.png", brightness=40.0)], "AC-1", CFG).valid
    for bad in ([120.0, 60.0], [80.0], [0.0, 10.0]):
        with pytest.raises(ConfigError, match=r"hep2\.control\.positive_units"):
            with_overrides(Config(), {"hep2.control.positive_units": bad})


def test_the_kits_positive_control_is_judged_on_the_labs_target() -> None:
    lab = replace(CFG, control=replace(CFG.control, positive_target=[80.0, 5.0]))

    def run(brightness: float, history: list[ControlReading], *, calibrated: bool = True,
            expected: str = "AC-1") -> Hep2ControlCheck:
        check = evaluate_control([field([cell("homogeneous", brightness=brightness)] * 20,
                                         "c.png", calibrated=calibrated)], expected, lab)
        return westgard_check(check, history, case_id="c", at="2026-11-30T08:00:00.000+00:00",
                              cfg=lab)

    def past(*units: float) -> list[ControlReading]:
        return [ControlReading(f"2026-11-{1 + i:02d}T08:00:00.000+00:00", f"r{i}",
                               "homogeneous", True, u, True) for i, u in enumerate(units)]
    ok = run(82.0, past(79.0, 81.0))
    assert ok.valid and ok.reasons[-1].startswith("82 units, +0.4 SD from the lab's target 80")
    warned = run(91.0, past(79.0, 81.0))
    assert warned.valid and "a Westgard warning (1-2s)" in warned.reasons[-1]
    assert warned.to_dict()["westgard"] == {"target": [80.0, 5.0], "z": 2.2,
                                            "rules": ["1-2s"]}
    far = run(96.0, [])
    assert not far.valid and "rejected by the Westgard rule 1-3s;" in far.reasons[-1]
    # Four runs in a row beyond 1 SD, none beyond 2: a systematic drift.
    drift = run(86.0, past(86.0, 87.0, 86.0))
    assert not drift.valid and "rule 4-1s" in drift.reasons[-1]
    # A failed run (1-3s) before it does not reject the repeat that came back beyond
    # 2 SD on the same side (2-2s), as the same reading of a passed run would.
    assert "rule 2-2s" in run(91.0, past(99.0)).reasons[-1]
    assert run(91.0, [replace(past(99.0)[0], valid=False)]).valid
    # Two runs 5 SD apart on either side of the target: R-4s is a within-run rule, and
    # a run has one positive control level.
    assert run(68.0, past(93.0)).valid
    # Uncalibrated units cannot be judged; another control and a failed check are left.
    raw = run(80.0, [], calibrated=False)
    assert not raw.valid and "not calibrated" in raw.reasons[-1]
    assert run(300.0, [], expected="AC-3").reasons == (
        "reads AC-1 nuclear homogeneous first, AC-3 centromere expected",)
    # With the kit lot named, another lot's runs do not count: the drift above was
    # the old lot's, and the new lot's first run is judged alone.
    new_lot = replace(lab, control=replace(lab.control, kit_lot="L2"))
    first = westgard_check(
        evaluate_control([field([cell("homogeneous", brightness=86.0)] * 20, "c.png")],
                         "AC-1", new_lot),
        [replace(r, kit_lot="L1") for r in past(86.0, 87.0, 86.0)], case_id="c",
        at="2026-11-30T08:00:00.000+00:00", cfg=new_lot)
    assert first.valid and first.to_dict()["kit_lot"] == "L2"
    assert "kit_lot" not in drift.to_dict()
    neg = evaluate_control([negative("n.png")], "negative", lab)
    assert neg.valid and westgard_check(neg, past(200.0), case_id="c", at="2026-11-30",
                                        cfg=lab) == neg


def test_a_control_not_read_validates_nothing() -> None:
    none = evaluate_control([], "AC-1", CFG)
    assert not none.valid and none.reasons == ("no control field was shown",)
    unread = evaluate_control([refused("c.png")], "negative", CFG)
    assert not unread.valid and "could not be read" in unread.reasons[0]
    other_model = replace(homogeneous("d.png"), model=replace(MODEL, sha256="cd" * 32))
    mixed = evaluate_control([homogeneous("c.png"), other_model], "AC-1", CFG)
    assert not mixed.valid and "do not pool" in mixed.reasons[0]
    doc = unread.to_dict()
    assert doc["expected_icap"] == "AC-0" and doc["status"] == "not_scorable"


# ------------------------------------------------------------------- stored results


def test_a_stored_field_reads_back_as_it_was_scored() -> None:
    original = field([cell("homogeneous"), cell("golgi", edge=True),
                      cell("homogeneous", mitosis="mitotic_plate_stained")], "f.png")
    doc = json.loads(hep2_json.to_json(hep2_json.result_to_dict(original, include_cells=True)))
    back = hep2_json.result_from_dict(doc)
    assert back.patterns == original.patterns and back.positive == original.positive
    assert back.intensity_units == pytest.approx(original.intensity_units, abs=0.01)
    for a, b in zip(back.cells, original.cells, strict=True):
        assert (a.pattern, a.mitosis, a.touches_edge) == (b.pattern, b.mitosis, b.touches_edge)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    with pytest.raises(ValueError, match="not a stored HEp-2 field result"):
        hep2_json.result_from_dict(hep2_json.result_to_dict(original))  # no cells kept
    assert back.supersedes is None and doc["supersedes"] is None
    again = replace(original, supersedes=Supersedes("cam", 3, "now_scorable"))
    doc = hep2_json.result_to_dict(again, include_cells=True)
    jsonschema.Draft202012Validator(hep2_json.load_schema()).validate(doc)
    assert hep2_json.result_from_dict(doc).supersedes == again.supersedes
    del doc["supersedes"]  # stored before the key existed
    assert hep2_json.result_from_dict(doc).supersedes is None


# ------------------------------------------------------------------- the workflow


def picture(seed: int) -> np.ndarray:
    """A distinct field image (its fingerprint tells it from the others)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    return np.kron(small, np.ones((40, 40, 1), np.uint8))


class Bench:
    """A store, the workflow and the recorder, as `appliance score` and the service wire
    them; the running assay is ``assay``."""

    def __init__(self, tmp_path: Path, assay: str = "hep2",
                 settings: dict[str, object] | None = None) -> None:
        self.cfg = with_overrides(Config(), {"store.path": str(tmp_path / "r.sqlite"),
                                             "assay": assay, **(settings or {})})
        self.store = ResultStore(self.cfg.store.path)
        self.messages: list[dict[str, object]] = []
        self.cases = CaseWorkflow(self.cfg, self.store, case_message=self._message)
        self.recorder = Recorder(
            store=self.store, config_sha256=self.cfg.sha256(), overlay_dir=None,
            out=io.StringIO(), companion_for=lambda r, img: self.cases.companion(
                r, img, source="score"), after_store=[self.cases.after_field])

    def _message(self, summary: dict[str, object]):  # type: ignore[no-untyped-def]
        self.messages.append(summary)
        return lambda msg_id, seq: ("case", contract.encode(contract.case_message(
            "box-1", summary, msg_id=msg_id, seq=seq)))

    def show(self, result: Hep2Result | FieldResult, seed: int) -> None:
        self.recorder.record(result, picture(seed))


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path)
    yield b
    b.store.close()


def case_validator() -> jsonschema.Draft202012Validator:
    result_schema = hep2_json.load_schema()
    registry = referencing.Registry().with_resource(
        result_schema["$id"], referencing.Resource.from_contents(result_schema))
    return jsonschema.Draft202012Validator(json.loads(CASE_SCHEMA.read_text()),
                                           registry=registry)


def test_a_hep2_case_pools_its_fields_once_each_into_the_well_call(bench: Bench) -> None:
    row = bench.cases.start_case("S26-1-W3", source="cli")
    assert row.assay == "hep2"
    bench.show(homogeneous("a.png"), seed=1)
    bench.show(field([cell("homogeneous")] * 8 + [cell("cyto_fibrillar")] * 12, "b.png"), 2)
    bench.show(homogeneous("a-again.png", brightness=200.0), seed=1)  # back to field 1
    bench.show(refused("c.png"), seed=3)
    live = bench.cases.live()
    assert live is not None and live.assay == "hep2" and live.fields_counted == 2
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary)
    assert summary.counted == {1, 2}
    doc = bench.cases.end_case(None, source="cli")
    assert doc["assay"] == "hep2" and doc["status"] == "scored" and doc["positive"] is True
    assert [p["icap"] for p in doc["patterns"]] == ["AC-1", "AC-15"]  # mixed, both named
    assert doc["fields_counted"] == 2 and doc["fields_total"] == 4
    assert doc["cell_counts"]["interphase"] == 40  # field 1's return is not counted again
    assert doc["intensity"]["value"] == pytest.approx(80.0)  # nor its brighter cells
    notes = {f["number"]: f["note"] for f in doc["fields"]}
    assert notes[3] == "return to field 1: counted once"
    assert notes[4].startswith("not counted: out of focus")
    assert doc["control"]["status"] == "not_checked"
    assert any("kit controls not checked" in w for w in doc["warnings"])
    # The message the outbox sends follows its schema.
    message = contract.case_message("box-1", doc, msg_id="m1", seq=1)
    assert message["schema"] == "eyepiece.hep2-case/1"
    case_validator().validate(json.loads(contract.encode(message)))
    with pytest.raises(jsonschema.ValidationError):
        case_validator().validate({**message, "case": {**doc, "positive": "yes"}})
    assert bench.messages == [doc]


def test_a_scored_return_stands_for_a_field_first_shown_out_of_focus(bench: Bench) -> None:
    """The field's later, sharp view counts (before, every return was left out, so a field
    first shown blurred was lost from the call and from a control round)."""
    bench.cases.start_case("S26-5", source="cli")
    bench.show(refused("a.png"), seed=1)
    bench.show(homogeneous("a-sharp.png"), seed=1)  # the same field, focused
    doc = bench.cases.summary().to_dict()
    assert doc["fields_counted"] == 1 and doc["positive"] is True
    assert [f["counted"] for f in doc["fields"]] == [False, True]
    assert [f["duplicate_of"] for f in doc["fields"]] == [None, 1]
    bench.cases.start_control("AC-1", source="cli")
    bench.show(refused("c.png"), seed=2)
    bench.show(homogeneous("c-sharp.png"), seed=2)
    assert bench.cases.end_control(source="cli").valid


@pytest.mark.parametrize(("reason", "warning"), [
    ("settings_changed", "were read again after a settings change"),
    ("sharper", "were reported again when the view came back sharper")])
def test_a_field_read_again_counts_by_its_new_reading(
        bench: Bench, reason: str, warning: str) -> None:
    bench.cases.start_case("S26-6", source="cli")
    first = homogeneous("cam0", brightness=80.0)
    bench.show(first, seed=1)
    bench.show(homogeneous("cam0-b", brightness=80.0), seed=2)
    # The same view, read again after set_objective: the pipeline names the report it
    # replaces by file and frame number.
    again = replace(homogeneous("cam0", brightness=120.0), seq=9,
                    supersedes=Supersedes("cam0", first.seq, reason))
    bench.show(again, seed=1)
    doc = bench.cases.end_case(None, source="cli")
    assert [(f["number"], f["counted"]) for f in doc["fields"]] == [(1, False), (2, True),
                                                                    (3, True)]
    assert doc["fields"][0]["note"] == "superseded by field 3 (read again): not counted"
    # The well's units are the median of its cells': 80 and 120 counted, not 80 twice.
    assert doc["intensity"]["value"] == pytest.approx(100.0)
    assert [w for w in doc["warnings"] if "field 1 by 3" in w] == [
        f"1 field(s) {warning} (objective, config): only the new reading counts (field 1 by 3)"
        if reason == "settings_changed" else
        f"1 field(s) {warning} (focused better): only the new reading counts (field 1 by 3)"]
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m1", seq=1))))
    # The stored results keep both readings, each as it was reported.
    with sqlite3.connect(bench.cfg.store.path) as conn:
        stored = [json.loads(r)["supersedes"] for (r,) in
                  conn.execute("SELECT result_json FROM results ORDER BY id")]
    assert stored == [None, None, {"file": "cam0", "seq": 1, "reason": reason}]


def test_a_control_view_read_again_after_its_round_stays_a_control_field(
        bench: Bench) -> None:
    """The control round ends while its last view is held, then the objective is set: the
    view's new reading is filed where its first was, never in the patient's well."""
    bench.cases.start_case("S26-7", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    control = homogeneous("cam0")
    bench.show(control, seed=1)
    assert bench.cases.end_control(source="cli").valid
    again = replace(homogeneous("cam0", brightness=150.0), seq=9,
                    supersedes=Supersedes("cam0", control.seq, "settings_changed"))
    bench.show(again, seed=1)
    bench.show(negative("patient"), seed=2)
    doc = bench.cases.end_case(None, source="cli")
    assert [(f["number"], f["role"]) for f in doc["fields"]] == [
        (1, "control"), (2, "control"), (3, "patient")]
    assert doc["positive"] is False and doc["fields_counted"] == 1  # the patient's only
    with sqlite3.connect(bench.cfg.store.path) as conn:
        rounds = [r for (r,) in conn.execute(
            "SELECT control_round FROM case_fields ORDER BY number")]
    assert rounds == [1, 1, None]


def test_a_control_round_is_decided_again_when_its_view_is_read_again(bench: Bench) -> None:
    """The round ended on a reading made under the old settings; the view's new reading
    decides it again, recorded beside the first decision, and the case's status follows."""
    bench.cases.start_case("S26-8", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    first = homogeneous("cam0", brightness=8.0)  # read negative under the old settings
    bench.show(first, seed=1)
    assert not bench.cases.end_control(source="cli").valid
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary) and summary.control_status == "failed"
    again = replace(homogeneous("cam0"), seq=9,
                    supersedes=Supersedes("cam0", first.seq, "settings_changed"))
    bench.show(again, seed=1)
    summary = bench.cases.summary()
    # Only the positive control has been checked: no longer failed, not yet complete.
    assert isinstance(summary, Hep2CaseSummary) and summary.control_status == "incomplete"
    assert [(c.round, c.valid) for c in summary.checks] == [(1, False), (1, True)]
    redone = summary.checks[-1].check
    assert redone["redecides"] == {"decided_at": summary.checks[0].decided_at,
                                   "valid": False, "field": 2, "replaced": 1}
    assert redone["reasons"][-1].startswith(
        "decided again: field 1 was read again under new settings as field 2")
    with sqlite3.connect(bench.cfg.store.path) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM audit ORDER BY id")]
    assert kinds.count("control_check") == 2
    # The lot's history counts the run once, by its latest decision.
    runs = bench.store.read_with(lambda conn: casebook.control_history(
        conn, assay="hep2", expected="homogeneous"))
    assert [(r.round, r.valid) for r in runs] == [(1, True)]
    bench.cases.start_control("negative", source="cli")
    bench.show(negative("neg"), seed=3)
    assert bench.cases.end_control(source="cli").valid
    doc = bench.cases.end_case(None, source="cli")
    assert doc["control"]["status"] == "valid"
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m1", seq=1))))


def test_a_round_that_cannot_be_decided_again_keeps_its_decision_and_the_field(
        bench: Bench, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """The new decision fails half-way (its audit entry is refused after its row was
    written): neither is kept, the first decision stands, the field is stored."""
    bench.cases.start_case("S26-12", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    first = homogeneous("cam0", brightness=8.0)
    bench.show(first, seed=1)
    assert not bench.cases.end_control(source="cli").valid
    append = audit.append

    def refusing(conn: sqlite3.Connection, **kw: Any) -> Any:
        if kw["kind"] == "control_check":
            raise ValueError("audit refused")
        return append(conn, **kw)
    monkeypatch.setattr(audit, "append", refusing)
    bench.show(replace(homogeneous("cam0"), seq=9,
                       supersedes=Supersedes("cam0", first.seq, "settings_changed")), seed=1)
    monkeypatch.undo()
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary) and summary.control_status == "failed"
    assert [(c.round, c.valid) for c in summary.checks] == [(1, False)]
    assert [f.number for f in summary.fields] == [1, 2]
    assert any("not decided again after field 2: audit refused" in r.getMessage()
               for r in caplog.records)


def test_a_control_view_read_again_while_its_round_is_open_waits_for_its_end(
        bench: Bench) -> None:
    bench.cases.start_case("S26-9", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    first = homogeneous("cam0", brightness=8.0)
    bench.show(first, seed=1)
    bench.show(replace(homogeneous("cam0"), seq=9,
                       supersedes=Supersedes("cam0", first.seq, "settings_changed")), seed=1)
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary) and summary.checks == ()
    check = bench.cases.end_control(source="cli")
    assert check.valid and not any("decided again" in r for r in check.reasons)


def test_a_later_round_of_the_level_keeps_an_earlier_round_as_decided(bench: Bench) -> None:
    """The latest decision per level counts: a view of round 1 read again after round 2
    of the same control decided changes nothing."""
    bench.cases.start_case("S26-11", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    first = homogeneous("cam0", brightness=8.0)
    bench.show(first, seed=1)
    assert not bench.cases.end_control(source="cli").valid
    bench.cases.start_control("AC-1", source="cli")
    bench.show(homogeneous("cam1"), seed=2)
    assert bench.cases.end_control(source="cli").valid
    bench.show(replace(homogeneous("cam0"), seq=9,
                       supersedes=Supersedes("cam0", first.seq, "settings_changed")), seed=1)
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary) and summary.control_status == "incomplete"
    assert [(c.round, c.valid) for c in summary.checks] == [(1, False), (2, True)]


def test_kit_controls_are_checked_in_their_own_rounds(bench: Bench) -> None:
    bench.cases.start_case("S26-2", source="mqtt")
    with pytest.raises(CaseError, match="neither 'negative' nor a pattern"):
        bench.cases.start_control("3+", source="mqtt")
    started = bench.cases.start_control(None, source="button")  # the default: AC-1
    assert started["expected"] == "homogeneous" and started["round"] == 1
    live = bench.cases.live()
    assert live is not None and live.control == "checking"
    assert live.control_expected == "AC-1 nuclear homogeneous"
    bench.show(homogeneous("pos.png"), seed=10)
    first = bench.cases.end_control(source="button")
    assert isinstance(first, Hep2ControlCheck) and first.valid
    bench.cases.start_control("negative", source="cli")
    bench.show(homogeneous("neg.png", brightness=60.0), seed=11)  # a high negative control
    assert not bench.cases.end_control(source="cli").valid
    bench.show(negative("patient.png"), seed=12)
    doc = bench.cases.end_case(None, source="cli")
    assert doc["control"]["status"] == "failed"
    assert doc["warnings"][0].startswith("kit control FAILED")
    assert [c["valid"] for c in doc["control"]["checks"]] == [True, False]
    # Control fields never join the patient's call.
    assert doc["positive"] is False and doc["fields_counted"] == 1
    assert [f["role"] for f in doc["fields"]] == ["control", "control", "patient"]
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m1", seq=1))))


def test_a_repeated_control_replaces_the_failed_one(bench: Bench) -> None:
    bench.cases.start_case("S26-3", source="cli")
    for expected, result, seed in (("negative", homogeneous("n1.png"), 1),
                                   ("negative", negative("n2.png"), 2),
                                   ("AC-1", homogeneous("p.png"), 3)):
        bench.cases.start_control(expected, source="cli")
        bench.show(result, seed)
        bench.cases.end_control(source="cli")
    bench.show(homogeneous("patient.png"), seed=4)
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary)
    assert summary.control_status == "valid"
    assert not any("control" in w for w in summary.warnings)


def test_one_missing_kit_control_leaves_the_call_unvalidated(bench: Bench) -> None:
    bench.cases.start_case("S26-4", source="cli")
    bench.cases.start_control("AC-1", source="cli")
    bench.show(homogeneous("p.png"), seed=1)
    bench.cases.end_control(source="cli")
    summary = bench.cases.summary()
    assert summary.control_status == "incomplete"
    assert summary.warnings[0].startswith("the kit's negative control was not checked")
    live = bench.cases.live()
    assert live is not None and live.control == "incomplete"
    assert case_needs_attention(live)  # the status light asks for it


def test_a_case_takes_only_its_own_assays_fields(tmp_path: Path) -> None:
    her2 = Bench(tmp_path, assay="her2")
    try:
        her2.cases.start_case("S26-5", source="cli")  # a HER2 case, opened by the CLI
        her2.show(homogeneous("iif.png"), seed=1)  # while a HEp-2 field is scored
        with sqlite3.connect(her2.cfg.store.path) as conn:
            assert conn.execute("SELECT count(*) FROM case_fields").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 1
        her2.cases.end_case(None, source="cli")
        # A HER2 field context is not given by a HEp-2 case.
        her2.cases.start_case("S26-6", source="cli", assay="hep2")
        assert her2.cases.context() is None
    finally:
        her2.store.close()


def test_an_empty_hep2_case_closes_as_not_scorable(bench: Bench) -> None:
    bench.cases.start_case(None, source="button")
    assert bench.cases.live() is not None
    doc = bench.cases.end_case(None, source="button")
    assert doc["status"] == "not_scorable" and doc["reason_code"] == "no_field"
    assert doc["positive"] is None and doc["fields"] == []
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m1", seq=1))))


def test_the_panel_shows_the_wells_running_call() -> None:
    live = LiveCase(case_id="h-1", mode="tumour", control="not_checked",
                    control_expected=None, calibration="", score="positive AC-1, strong",
                    category=None, fields_counted=3, tumour_cells=61, flags=1, assay="hep2")
    texts = [item.text for row in case_rows(live) for item in row.items]
    assert "Case h-1: positive AC-1, strong (3 fields, 61 cells)" in texts
    titrating = [i.text for r in case_rows(replace(live, dilution=320)) for i in r.items]
    assert titrating[0].startswith("Case h-1 (showing 1:320): ")
    assert "KIT CONTROLS NOT CHECKED: call not validated" in texts
    assert "1 field(s) unlike the well: another well's?" in texts
    checking = case_rows(replace(live, mode="control", control="checking",
                                 control_expected="AC-0 negative"))
    assert any("KIT CONTROL (AC-0 negative)" in i.text for r in checking for i in r.items)


def test_her2_cases_are_unchanged_by_the_assay_column(tmp_path: Path) -> None:
    b = Bench(tmp_path, assay="her2")
    try:
        row = b.cases.start_case("S26-7", source="cli")
        assert row.assay == "her2"
        with pytest.raises(CaseError, match="is not one of 0, 1\\+, 2\\+, 3\\+"):
            b.cases.start_control("AC-1", source="cli")
        doc = b.cases.end_case(None, source="cli")
        assert "score" in doc and "assay" not in doc
        assert contract.case_message("box-1", doc, msg_id="m", seq=1)["schema"] == \
            "eyepiece.case/1"
    finally:
        b.store.close()


def test_unreadable_stored_fields_are_named_not_fatal(bench: Bench) -> None:
    bench.cases.start_case("S26-8", source="cli")
    bench.show(homogeneous("a.png"), seed=1)
    bench.show(homogeneous("b.png"), seed=2)
    with sqlite3.connect(bench.cfg.store.path) as conn:
        conn.execute("UPDATE results SET result_json = '{\"assay\": \"hep2\"}' WHERE id = 2")
    doc = bench.cases.end_case(None, source="cli")
    assert doc["fields_counted"] == 1
    assert any(w.startswith("field 2 is left out") for w in doc["warnings"])
    assert doc["fields"][1]["note"] == "not counted: its stored result is unreadable"


# ------------------------------------------------------------------- one slide's controls


def check_controls(bench: Bench, *, negative_ok: bool = True, seed: int = 50) -> None:
    """Read the kit's positive (AC-1) and negative controls in the open case."""
    for expected, result in (("AC-1", homogeneous("pos.png")),
                             ("negative", negative("neg.png") if negative_ok
                              else homogeneous("neg.png", brightness=60.0))):
        bench.cases.start_control(expected, source="cli")
        bench.show(result, seed)
        bench.cases.end_control(source="cli")
        seed += 1


def test_a_drifting_kit_control_fails_its_run_on_the_labs_target(tmp_path: Path) -> None:
    lab = Bench(tmp_path, settings={"hep2.control.positive_target": [80.0, 5.0],
                                    "hep2.control.target_since": "2026-01-01"})
    try:
        # An earlier lot's run, before target_since: not judged with this lot's.
        def old_lot(conn: sqlite3.Connection) -> None:
            at = "2025-12-20T08:00:00.000+00:00"
            casebook.insert_case(conn, "old-lot", at=at, by="cli", assay="hep2")
            casebook.insert_check(conn, "old-lot", control_round=1, expected="homogeneous",
                                  at=at, valid=True, check={
                                      "expected": "homogeneous", "valid": True, "intensity": {
                                          "level": "strong", "value": 88.0,
                                          "calibrated": True}})
            casebook.close_case(conn, "old-lot", at=at, by="cli", summary={})
        lab.store.write_with(old_lot, flush_backlog=False)
        checks = []
        for run, brightness in enumerate((86.0, 87.0, 86.0, 87.0)):
            lab.cases.start_case(f"S26-20-W{run}", source="cli")
            lab.cases.start_control("AC-1", source="cli")
            lab.show(homogeneous("pos.png", brightness=brightness), 70 + run)
            checks.append(lab.cases.end_control(source="cli"))
            if run < 3:
                lab.cases.end_case(None, source="cli")
        # Each run alone is within 2 SD; the fourth in a row beyond 1 SD is rejected (with
        # the old lot's 88 counted, the third run would have been).
        assert [c.valid for c in checks] == [True, True, True, False]
        assert "rule 4-1s" in checks[-1].reasons[-1]
        summary = lab.cases.summary()
        assert isinstance(summary, Hep2CaseSummary) and summary.control_status != "valid"
    finally:
        lab.store.close()


def test_a_westgard_warning_reaches_the_case_and_its_message(tmp_path: Path) -> None:
    lab = Bench(tmp_path, settings={"hep2.control.positive_target": [80.0, 5.0],
                                    "hep2.control.target_since": "2026-01-01",
                                    "hep2.control.kit_lot": "B2"})
    try:
        lab.cases.start_case("S26-21-W1", source="cli")
        for expected, result, seed in (("AC-1", homogeneous("pos.png", brightness=91.0), 80),
                                       ("negative", negative("neg.png"), 81)):
            lab.cases.start_control(expected, source="cli")
            lab.show(result, seed)
            lab.cases.end_control(source="cli")
        lab.show(homogeneous("p1.png"), 82)
        doc = lab.cases.end_case(None, source="cli")
        assert doc["control"]["status"] == "valid"
        assert any("read +2.2 SD from the lab's target: a Westgard warning (1-2s)" in w
                   for w in doc["warnings"])
        positive = next(c for c in doc["control"]["checks"] if c["expected"] != "negative")
        assert positive["westgard"] == {"target": [80.0, 5.0], "z": 2.2, "rules": ["1-2s"]}
        assert positive["kit_lot"] == "B2"
        summary = lab.cases.summary(str(doc["case_id"]))
        assert isinstance(summary, Hep2CaseSummary)
        report = hep2_report_data(summary, device_id="box-1", config_sha256="0" * 64)
        assert all("kit lot B2" in c.reasons for c in report.checks)
        case_validator().validate(json.loads(contract.encode(
            contract.case_message("box-1", doc, msg_id="m1", seq=1))))
    finally:
        lab.store.close()


def test_the_cases_of_one_slide_share_its_kit_controls(bench: Bench) -> None:
    first = bench.cases.start_case("S26-10-W1", source="cli", slide="SL-0412")
    assert first.slide == "SL-0412"
    check_controls(bench)
    bench.show(homogeneous("w1.png"), seed=1)
    bench.cases.end_case(None, source="cli")

    second = bench.cases.start_case("S26-10-W2", source="cli", slide="SL-0412")
    bench.show(negative("w2.png"), seed=2)
    summary = bench.cases.summary()
    assert isinstance(summary, Hep2CaseSummary) and summary.control_status == "valid"
    assert {c.case_id for c in summary.checks} == {first.case_id}
    live = bench.cases.live()
    assert live is not None and live.on_slide and not case_needs_attention(live)
    texts = [i.text for r in case_rows(live) for i in r.items]
    assert "Kit controls valid on this slide" in texts
    doc = bench.cases.end_case(None, source="cli")
    assert doc["slide"] == "SL-0412" and doc["control"]["status"] == "valid"
    assert [c["case_id"] for c in doc["control"]["checks"]] == [first.case_id] * 2
    assert not any("control" in w for w in doc["warnings"])
    assert doc["positive"] is False  # the control fields stay the first case's
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m2", seq=2))))
    assert second.case_id != first.case_id

    # Another slide, or no slide, does not borrow them.
    bench.cases.start_case("S26-11-W1", source="cli", slide="SL-0413")
    other = bench.cases.summary()
    assert other.control_status == "not_checked" and not other.checks
    assert other.warnings[0].startswith("kit controls not checked on this slide")
    bench.cases.end_case(None, source="cli")
    bench.cases.start_case("S26-12", source="cli")
    assert bench.cases.summary().control_status == "not_checked"


def test_a_control_failed_on_the_slide_fails_its_later_cases_until_repeated(
        bench: Bench) -> None:
    first = bench.cases.start_case("S26-13-W1", source="cli", slide="SL-9")
    check_controls(bench, negative_ok=False)
    bench.cases.end_case(None, source="cli")
    bench.cases.start_case("S26-13-W2", source="cli", slide="SL-9")
    summary = bench.cases.summary()
    assert summary.control_status == "failed"
    assert summary.warnings[0].startswith(f"kit control FAILED (in case {first.case_id} on "
                                          "this slide)")
    # The negative control read again, in this case: the latest decision counts.
    bench.cases.start_control("negative", source="cli")
    bench.show(negative("neg-again.png"), seed=60)
    bench.cases.end_control(source="cli")
    again = bench.cases.summary()
    assert again.control_status == "valid"
    assert [c.case_id for c in again.checks][-1] == again.case.case_id


def test_slide_checks_count_within_one_run(bench: Bench) -> None:
    early = bench.cases.start_case("S26-14-W1", source="cli", slide="SL-7")
    bench.show(homogeneous("w1.png"), seed=1)
    closed_early = bench.cases.end_case(None, source="cli")
    bench.cases.start_case("S26-14-W2", source="cli", slide="SL-7")
    check_controls(bench)
    bench.cases.end_case(None, source="cli")
    # Checks decided after a case closed do not change it, read again later.
    assert bench.cases.summary(early.case_id).control_status == "not_checked"
    assert closed_early["control"]["status"] == "not_checked"
    # Checks older than hep2.control.slide_max_age_h before a case opened do not count:
    # a slide id reused on another day.
    with sqlite3.connect(bench.cfg.store.path) as conn:
        conn.execute("UPDATE control_checks SET decided_at = '2026-01-01T00:00:00.000+00:00'")
    bench.cases.start_case("S26-14-W3", source="cli", slide="SL-7")
    assert bench.cases.summary().control_status == "not_checked"


def test_a_slide_is_named_for_hep2_cases_only_and_kept_opaque(tmp_path: Path) -> None:
    her2 = Bench(tmp_path, assay="her2")
    try:
        with pytest.raises(CaseError, match="a slide is named for a HEp-2 case only"):
            her2.cases.start_case("S26-15", source="cli", slide="SL-1")
        with pytest.raises(CaseError, match=r"slide id: without mqtt\.case_salt_file"):
            her2.cases.start_case("S26-15", source="cli", assay="hep2", slide="SL 0412 / 3")
        assert her2.cases.open_case() is None  # nothing was opened by a refusal
        salted = CaseWorkflow(her2.cfg, her2.store, salt=b"s" * 32)
        row = salted.start_case("S26-15", source="cli", assay="hep2", slide="SL 0412 / 3")
        assert row.slide is not None and row.slide.startswith(contract.CASE_ID_PREFIX)
        assert row.slide == salted.slide_id_for("SL 0412 / 3", "hep2")  # same slide, same id
    finally:
        her2.store.close()


# ------------------------------------------------------------------- the running box


def test_mqtt_drives_a_hep2_case_in_the_running_box(tmp_path: Path, broker: Mosquitto) -> None:
    """`appliance run` on replayed HEp-2 fields, a real broker: the case takes the fields,
    the box will not switch assay under it, and its close sends the well's call."""
    from tests.test_case_service import appliance, config, dashboard
    from tests.test_hep2_assay import field as iif_field
    from tests.test_mqtt_service import DEVICE, Subscriber, finish

    folder = tmp_path / "fields"
    folder.mkdir()
    for i in range(2):
        write_rgb(folder / f"w{i}.png", iif_field("homogeneous", seed=71_040 + i))
    cfg = config(tmp_path, folder, mqtt_port=broker.port)
    cfg.write_text('assay = "hep2"\n' + cfg.read_text(encoding="utf-8"), encoding="utf-8")
    status = Subscriber(broker.port, f"eyepiece/{DEVICE}/status", client_id="status-watch")
    replies = Subscriber(broker.port, f"eyepiece/{DEVICE}/cmd/+/reply", client_id="replies")
    cases = Subscriber(broker.port, f"eyepiece/{DEVICE}/case", client_id="cases")
    fields = Subscriber(broker.port, f"eyepiece/{DEVICE}/field", client_id="fields")
    log = tmp_path / "service.log"
    proc = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(proc, subprocess.Popen)
    sender, command = dashboard(broker.port, replies)
    try:
        status.wait_for("birth", lambda ms: any(json.loads(m.payload)["status"] == "online"
                                                for m in ms))
        wrong = command("start_case", {"case_id": "w-1", "assay": "her2"})
        assert wrong["ok"] is False and "set_assay her2 first" in json.dumps(wrong)
        unsalted = command("start_case", {"case_id": "w-1", "slide": "SL 04/12"})
        assert unsalted["ok"] is False and unsalted["error"]["field"] == "slide", unsalted
        assert "slide id: without mqtt.case_salt_file" in unsalted["error"]["reason"]
        started = command("start_case", {"case_id": "w-1", "slide": "SL-0412"})
        assert started["ok"] is True and started["result"]["assay"] == "hep2", started
        assert started["result"]["slide"] == "SL-0412"
        fields.wait_for("fields of the case", lambda ms: sum(
            json.loads(m.payload)["case_id"] == "w-1" for m in ms) >= 2)
        switch = command("set_assay", {"assay": "her2"})
        assert switch["ok"] is False and "end it before" in json.dumps(switch)
        ended = command("end_case", {"case_id": "w-1"})
        assert ended["ok"] is True, ended
        body = json.loads(cases.wait_for("the case message", lambda ms: len(ms) >= 1)[0].payload)
    finally:
        sender.loop_stop()
        proc.send_signal(signal.SIGTERM)
        finish(proc, log)
        for s in (status, replies, cases, fields):
            s.close()
    assert body["schema"] == "eyepiece.hep2-case/1"
    case_validator().validate(body)
    case = body["case"]
    assert case["case_id"] == "w-1" and case["positive"] is True and case["slide"] == "SL-0412"
    assert case["patterns"][0]["icap"] == "AC-1"
    # The replay loops over its two fields: each is counted once however often it is seen.
    assert 1 <= case["fields_counted"] <= 2 <= case["fields_total"]
    assert case["control"]["status"] == "not_checked"


def test_the_case_cli_and_score_run_a_hep2_case(tmp_path: Path) -> None:
    """`appliance case` and `appliance score --assay hep2` as separate processes on one
    store, the real model: a kit control that fails, then the patient's fields."""
    from tests.test_case_service import appliance, config
    from tests.test_hep2_assay import field as iif_field

    folder = tmp_path / "fields"
    folder.mkdir()
    paths = []
    for name, p, seed in (("ctrl", "homogeneous", 71_050), ("p1", "centromere", 71_051),
                          ("p2", "centromere", 71_052)):
        write_rgb(folder / f"{name}.png", iif_field(p, seed=seed))
        paths.append(str(folder / f"{name}.png"))
    cfg = str(config(tmp_path, folder))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = appliance(*args, "--config", cfg, cwd=tmp_path)
        assert isinstance(done, subprocess.CompletedProcess)
        return done

    assert "opened (hep2, slide SL-2)" in run("case", "start", "w-2", "--assay", "hep2",
                                              "--slide", "SL-2").stdout
    assert run("case", "control", "start", "--expected", "negative").returncode == 0
    assert run("score", "--assay", "hep2", paths[0]).returncode == 0
    failed = run("case", "control", "end")
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    assert "negative control reads positive (AC-1" in failed.stdout
    assert "the next patient fields are the 1:80 well's" in run("case", "dilution", "80").stdout
    assert run("score", "--assay", "hep2", *paths[1:]).returncode == 0
    closed = run("case", "end")
    assert closed.returncode == 0, closed.stderr
    assert "call: positive AC-3" in closed.stdout and "kit controls failed" in closed.stdout
    assert "titre AC-3 1:80 or higher" in closed.stdout  # one dilution read: a lower bound
    summary = json.loads(run("case", "status", "w-2", "--json").stdout)
    assert summary["fields_counted"] == 2 and summary["patterns"][0]["icap"] == "AC-3"
    assert summary["screening_dilution"] == 80 and summary["titres"][0]["endpoint"] is False
    assert [f["role"] for f in summary["fields"]] == ["control", "patient", "patient"]
    report = run("report", "w-2", "--out", str(tmp_path / "rep"))
    assert report.returncode == 0, report.stderr
    pdf = pypdf.PdfReader(tmp_path / "rep" / "case-w-2.pdf", strict=True)
    text = " ".join(" ".join(p.extract_text().split()) for p in pdf.pages)
    assert "HEp-2 IIF (ANA) case report" in text and "ANA positive AC-3" in text
    assert "KIT CONTROL FAILED" in text and "negative control reads positive" in text
    assert "RESEARCH USE ONLY" in text
    page = (tmp_path / "rep" / "case-w-2.html").read_text(encoding="utf-8")
    assert "ANA positive AC-3" in page and "KIT CONTROL FAILED" in page
    listed = run("case", "list").stdout
    assert "hep2" in listed and "call positive AC-3 1:80 or higher" in listed
    # The slide's next well: its kit control check is w-2's.
    assert run("case", "start", "w-3", "--assay", "hep2", "--slide", "SL-2").returncode == 0
    status = run("case", "status").stdout
    assert "(open, HEp-2, slide SL-2)" in status and "kit controls failed" in status
    assert "negative: FAILED at" in status and "in case w-2" in status


def test_the_field_fingerprint_tells_hep2_fields_apart() -> None:
    from tools.probe_hep2_fingerprint import pair_similarities

    cut = Config().her2.case.duplicate_similarity
    different, again, shifted = pair_similarities(3)  # one pair at each objective
    assert max(different) < cut <= min(again + shifted)


# ------------------------------------------------------------------- titration and titres


def test_endpoint_titres_follow_each_pattern_up_the_series() -> None:
    from appliance.assays.hep2.titre import endpoint_titres
    from appliance.assays.hep2.well import call_well

    def well(*cells: tuple[str, int, float]) -> Hep2WellResult:
        made = [cell(n, brightness=b) for n, k, b in cells for _ in range(k)]
        return call_well([field(made, "w.png")], CFG)

    mixed = well(("homogeneous", 14, 150.0), ("cyto_fibrillar", 8, 150.0))
    series = [(80, mixed), (160, well(("homogeneous", 14, 90.0), ("cyto_fibrillar", 8, 90.0))),
              (320, well(("homogeneous", 20, 50.0))), (640, well(("negative", 20, 8.0)))]
    titres = {t.icap: t for t in endpoint_titres(series, CFG.specimen)}
    assert titres["AC-1"].words() == "1:320" and titres["AC-1"].endpoint
    assert titres["AC-15"].words() == "1:160" and "not shown at 1:320" in titres["AC-15"].why
    # Still shown at the highest dilution read: a lower bound.
    open_ended = endpoint_titres(series[:3], CFG.specimen)
    assert [t.words() for t in open_ended] == ["1:320 or higher", "1:160"]
    assert not open_ended[0].endpoint and "highest dilution read" in open_ended[0].why
    # A well that cannot be scored ends the run without an endpoint.
    gap = endpoint_titres([series[0], (160, call_well([refused("x.png")], CFG)), series[2]],
                          CFG.specimen)
    assert gap[0].words() == "1:80 or higher" and "could not be scored" in gap[0].why
    # Order of the list given does not matter; a negative screening well has no titre.
    assert endpoint_titres(list(reversed(series)), CFG.specimen) == tuple(titres.values())
    assert endpoint_titres([(80, well(("negative", 20, 8.0)))], CFG.specimen) == ()


def test_a_titration_case_reports_the_screening_call_and_the_titres(bench: Bench) -> None:
    bench.cases.start_case("S26-9", source="cli")
    bench.show(homogeneous("before.png", brightness=40.0), seed=1)  # before any dilution
    for dilution, brightness, seeds in ((80, 160.0, (2, 3)), (160, 90.0, (4,)),
                                        (320, 45.0, (5,)), (640, 12.0, (6,))):
        bench.cases.set_dilution(dilution, source="mqtt")
        for seed in seeds:
            bench.show(homogeneous(f"{dilution}-{seed}.png", brightness=brightness), seed)
    bench.cases.set_dilution(80, source="cli")
    bench.show(homogeneous("80-again.png", brightness=160.0), seed=2)  # back to a field
    live = bench.cases.live()
    assert live is not None and live.dilution == 80
    assert live.score is not None and live.score.startswith("positive AC-1 1:320, ")
    doc = bench.cases.end_case(None, source="cli")
    assert doc["screening_dilution"] == 80
    assert doc["intensity"]["value"] == pytest.approx(160.0)  # the screening well's
    assert doc["titres"] == [{"name": "homogeneous", "icap": "AC-1", "titre": "1:320",
                              "dilution": 320, "endpoint": True,
                              "why": "not shown at 1:640"}]
    assert [(w["dilution"], w["positive"], w["fields_counted"]) for w in doc["wells"]] == [
        (80, True, 2), (160, True, 1), (320, True, 1), (640, False, 1)]
    assert any("1 patient field(s) were shown before a dilution" in w for w in doc["warnings"])
    by_number = {f["number"]: f for f in doc["fields"]}
    assert by_number[1]["dilution"] is None and not by_number[1]["counted"]
    assert by_number[1]["note"] == "not counted: shown before a dilution was given"
    assert by_number[7]["duplicate_of"] == 2  # same field, same dilution: counted once
    assert by_number[5]["duplicate_of"] is None  # seed 4 at 1:160: a well of its own
    case_validator().validate(json.loads(contract.encode(
        contract.case_message("box-1", doc, msg_id="m1", seq=1))))


def test_dilutions_are_for_hep2_patient_wells_only(bench: Bench, tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="no case is open"):
        bench.cases.set_dilution(80, source="cli")
    bench.cases.start_case("S26-10", source="cli")
    with pytest.raises(CaseError, match=r"outside 2\.\.100000"):
        bench.cases.set_dilution(1, source="cli")
    bench.cases.start_control("negative", source="cli")
    with pytest.raises(CaseError, match="kit control check is in progress"):
        bench.cases.set_dilution(80, source="cli")
    her2 = Bench(tmp_path / "her2", assay="her2")
    try:
        her2.cases.start_case("S26-11", source="cli")
        with pytest.raises(CaseError, match="dilutions are for HEp-2"):
            her2.cases.set_dilution(80, source="cli")
    finally:
        her2.store.close()


def test_a_hep2_case_survives_a_sigkill_and_counts_each_field_once(tmp_path: Path) -> None:
    """The service killed mid-well and started again (as systemd does): the case goes on
    from the store, and the fields the replay shows again are counted once."""
    from tests.test_case_service import appliance, case_fields, config, wait_until
    from tests.test_hep2_assay import field as iif_field
    from tests.test_mqtt_service import finish

    folder = tmp_path / "fields"
    folder.mkdir()
    for i in range(3):
        write_rgb(folder / f"w{i}.png", iif_field("centromere", seed=71_060 + i))
    cfg = config(tmp_path, folder)
    cfg.write_text('assay = "hep2"\n' + cfg.read_text(encoding="utf-8"), encoding="utf-8")
    db = tmp_path / "results.sqlite"
    opened = appliance("case", "start", "w-kill", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(opened, subprocess.CompletedProcess) and opened.returncode == 0
    assert "opened (hep2)" in opened.stdout
    log = tmp_path / "service.log"
    first = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(first, subprocess.Popen)
    try:
        wait_until("two fields in the case", lambda: case_fields(db, "w-kill") >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    before = case_fields(db, "w-kill")
    second = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(second, subprocess.Popen)
    try:
        wait_until("more fields after the restart",
                   lambda: case_fields(db, "w-kill") >= before + 3)
        second.send_signal(signal.SIGTERM)
        finish(second, log)
    finally:
        second.kill()
    closed = appliance("case", "end", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(closed, subprocess.CompletedProcess) and closed.returncode == 0
    status = appliance("case", "status", "w-kill", "--json", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(status, subprocess.CompletedProcess)
    summary = json.loads(status.stdout)
    assert summary["assay"] == "hep2" and summary["closed_at"] is not None
    assert summary["fields_total"] >= before + 3
    assert summary["fields_counted"] == 3  # three distinct fields, however often seen
    assert summary["positive"] is True and summary["patterns"][0]["icap"] == "AC-3"
