"""The case workflow end to end on generated slides, with the real model and a real store.

A slide is a control region plus tumour fields of known score, all under one camera and
one stain run (tools/synth/her2_slide.py). Fields are scored the way `appliance score`
does it, so every field goes through the assay's case context and the store's companion
hook, as in the service.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pypdf
import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.control import classify_readings
from appliance.assays.her2.rules import score_field
from appliance.assays.her2.types import FieldResult, FieldScore, Supersedes
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.audit import AuditLog
from appliance.outputs.store import ResultStore
from appliance.service.button import ButtonAction
from appliance.service.case_report import write_case_report
from appliance.service.case_summary import readings
from appliance.service.cases import (
    CaseError,
    CaseWorkflow,
    button_handler,
    case_needs_attention,
)
from appliance.service.recorder import Recorder
from tests.test_mqtt_contract import errors, schema_validators
from tools.synth.her2_slide import SlideField, SlideSpec, generate_slide, slide_truth

UM_PER_PX = 0.5


@pytest.fixture(scope="module")
def assay() -> Iterator[Her2Assay]:
    with Her2Assay.from_config(Config()) as a:
        yield a


def slide(dab_scale: float, tumour: tuple[str, ...], *, seed: int = 3,
          duplicates: tuple[int, ...] = ()) -> list[SlideField]:
    return generate_slide(SlideSpec(seed=seed, control_level="3+", control_fields=3,
                                    tumour_scores=tumour, dab_scale=dab_scale,
                                    um_per_px=UM_PER_PX, width=640, height=480,
                                    duplicates=duplicates))


@pytest.fixture(scope="module")
def nominal_slide() -> list[SlideField]:
    return slide(1.0, ("3+", "1+", "2+"), duplicates=(0,))


@pytest.fixture(scope="module")
def weak_slide() -> list[SlideField]:
    # An under-stained run: 70% of the usual DAB on every membrane, control and tumour.
    return slide(0.7, ("3+", "3+"), seed=5)


class Bench:
    """One store, one workflow and the assay, scoring fields as `appliance score` does."""

    def __init__(self, tmp_path: Path, assay: Her2Assay, **overrides: object) -> None:
        self.cfg = with_overrides(Config(), {"store.path": str(tmp_path / "r.sqlite"),
                                             **overrides})
        self.store = ResultStore(self.cfg.store.path)
        self.cases = CaseWorkflow(self.cfg, self.store)
        self.assay = assay
        assay.cfg = self.cfg
        assay.field_context = self.cases.context
        self.recorder = Recorder(
            store=self.store, config_sha256=self.cfg.sha256(), overlay_dir=None,
            out=io.StringIO(), companion_for=lambda r, img: self.cases.companion(
                r, img, source="score"), after_store=[self.cases.after_field])
        self.seq = 0

    def show(self, fields: list[SlideField]) -> None:
        for f in fields:
            self.seq += 1
            frame = Frame(image=f.image, seq=self.seq, timestamp=time.monotonic(),
                          source=f"{f.name}.png", um_per_px=UM_PER_PX)
            self.recorder.record(self.assay.score(frame), f.image)

    def close(self) -> None:
        self.assay.field_context = lambda: None
        self.store.close()


@pytest.fixture
def bench_for(tmp_path: Path, assay: Her2Assay) -> Iterator[object]:
    benches: list[Bench] = []

    def make(**overrides: object) -> Bench:
        benches.append(Bench(tmp_path / str(len(benches)), assay, **overrides))
        return benches[-1]
    yield make
    for b in benches:
        b.close()


def controls(fields: list[SlideField]) -> list[SlideField]:
    return [f for f in fields if f.role == "control"]


def tumours(fields: list[SlideField]) -> list[SlideField]:
    return [f for f in fields if f.role == "tumour"]


def run_case(bench: Bench, fields: list[SlideField], *, case_id: str = "c-1",
             with_control: bool = True) -> dict[str, object]:
    bench.cases.start_case(case_id, source="cli")
    if with_control:
        bench.cases.start_control("3+", source="cli")
        bench.show(controls(fields))
        bench.cases.end_control(source="cli")
    bench.show(tumours(fields))
    return bench.cases.end_case(case_id, source="cli")


def test_a_valid_control_passes_and_the_case_pools_its_distinct_fields(
        bench_for, nominal_slide: list[SlideField]) -> None:
    bench = bench_for()
    summary = run_case(bench, nominal_slide)
    control = summary["control"]
    assert control["status"] == "valid", control
    assert control["checks"][0]["measured_score"] == "3+"
    # Pooled: the case score is the rules on all cells of the distinct tumour fields.
    full = bench.cases.summary("c-1")
    tumour_rows = [f for f in full.fields if f.role == "tumour"]
    distinct = [f for f in tumour_rows if f.duplicate_of is None]
    cells = [c for f in distinct for c in readings(f.result)]
    direct = score_field(classify_readings(cells, full.calibration.thresholds,
                                           bench.cfg.her2.measure), bench.cfg.her2.rules)
    assert isinstance(direct, FieldScore)
    assert summary["score"] == direct.score.value
    assert summary["tumour_cells"] == len(cells)
    # The generated truth of the pooled tumour.
    assert summary["score"] == slide_truth(nominal_slide)[0]
    # The return to tumour field 1 is kept in the record but counted once.
    assert len(tumour_rows) == 4 and len(distinct) == 3
    assert summary["fields_counted"] == 3 and summary["fields_total"] == 4
    again = next(f for f in summary["fields"] if f["file"] == "t01_again.png")
    assert again["counted"] is False and again["duplicate_of"] is not None
    # 3+, 1+ and 2+ fields in one case: the fields that differ are named.
    assert len(summary["heterogeneity"]) >= 1


def test_a_control_field_first_shown_out_of_focus_counts_through_its_sharp_view(
        bench_for, nominal_slide: list[SlideField]) -> None:
    """Before, a control round took only first views: the sharp return to a field first
    refused was left out, and the control failed for want of cells."""
    bench = bench_for()
    bench.cases.start_case("c-focus", source="cli")
    bench.cases.start_control("3+", source="cli")
    for f in controls(nominal_slide):
        h, w = f.image.shape[:2]
        bench.recorder.record(FieldResult(
            file=f"{f.name}-blurred.png", seq=0, assay="her2", status="not_scorable",
            model=bench.assay.model, image_width=w, image_height=h, reason="out of focus",
            reason_code="out_of_focus"), f.image)
    bench.show(controls(nominal_slide))
    check = bench.cases.end_control(source="cli")
    assert check.valid, check.reasons
    rows = bench.cases.summary("c-focus").fields
    assert [r.duplicate_of is not None for r in rows] == [False] * (len(rows) // 2) + [
        True] * (len(rows) // 2)


def test_a_control_round_decided_on_a_refused_view_is_decided_again_on_its_new_reading(
        bench_for, weak_slide: list[SlideField]) -> None:
    """The round ended on a view the box could not score; the objective was then set and
    the view, still held, read again: the round is decided again on that reading, and the
    calibration it brings applies to the next fields."""
    bench = bench_for()
    bench.cases.start_case("c-again", source="cli")
    bench.cases.start_control("3+", source="cli")
    view = controls(weak_slide)[0]
    h, w = view.image.shape[:2]
    refused = FieldResult(file="cam0", seq=1, assay="her2", status="not_scorable",
                          model=bench.assay.model, image_width=w, image_height=h,
                          reason="too few tumour cells", reason_code="too_few_tumour_cells")
    bench.recorder.record(refused, view.image)
    assert not bench.cases.end_control(source="cli").valid
    frame = Frame(image=view.image, seq=2, timestamp=time.monotonic(), source="cam0",
                  um_per_px=UM_PER_PX)
    bench.recorder.record(replace(bench.assay.score(frame), supersedes=Supersedes(
        "cam0", 1, "settings_changed")), view.image)
    summary = bench.cases.summary("c-again")
    assert [c.valid for c in summary.checks] == [False, True]
    assert summary.control_status == "valid" and summary.calibration.source == "control"
    assert summary.checks[-1].check["redecides"]["replaced"] == 1
    kinds = [e.kind for e in AuditLog(bench.store).entries(case_id="c-again")]
    assert kinds.count("control_check") == 2 and "thresholds_changed" in kinds
    bench.show(tumours(weak_slide)[:1])
    stored = bench.store.recent(1)[0]["result"]
    assert stored["case"]["control"] == "valid"
    assert stored["case"]["calibration_factor"] < 0.9
    doc = bench.cases.end_case("c-again", source="cli")
    message = json.loads(contract.encode(contract.case_message("box-1", doc, msg_id="m1",
                                                                seq=1)))
    assert errors(schema_validators()["case"], message) == []


def test_a_weak_control_fails_and_flags_the_case(bench_for) -> None:
    bench = bench_for()
    faint_run = slide(0.35, ("2+",), seed=7)
    bench.cases.start_case("c-weak", source="cli")
    bench.cases.start_control(None, source="cli")
    bench.show(controls(faint_run))
    check = bench.cases.end_control(source="cli")
    assert not check.valid
    assert any("too weak" in r for r in check.reasons), check.reasons
    live = bench.cases.live()
    assert live is not None and live.control == "failed" and case_needs_attention(live)
    bench.show(tumours(faint_run))
    stored = bench.store.recent(1)[0]["result"]
    assert stored["case"] == {"case_id": "c-weak", "role": "tumour", "control": "failed",
                              "calibration_factor": 1.0}
    summary = bench.cases.end_case("c-weak", source="cli")
    assert summary["control"]["status"] == "failed"
    assert any("FAILED" in w for w in summary["warnings"])


def test_without_a_control_the_case_says_not_checked(bench_for,
                                                     nominal_slide: list[SlideField]) -> None:
    bench = bench_for()
    bench.cases.start_case("c-none", source="cli")
    assert case_needs_attention(bench.cases.live())
    bench.show(tumours(nominal_slide)[:1])
    summary = bench.cases.end_case(None, source="cli")
    assert summary["control"]["status"] == "not_checked"
    assert any("not checked" in w for w in summary["warnings"])


def test_calibration_restores_the_score_of_an_under_stained_run(
        bench_for, weak_slide: list[SlideField]) -> None:
    truth = slide_truth(weak_slide)[0]
    assert truth == "3+"
    calibrated = run_case(bench_for(), weak_slide)
    assert calibrated["control"]["status"] == "valid", calibrated["control"]
    factor = calibrated["control"]["calibration"]["factor"]
    assert 0.55 < factor < 0.85, factor  # the run's 0.7, as the camera sees it
    assert calibrated["score"] == truth
    # The same run on nominal thresholds: the weak membranes read one score lower, and
    # the 3+ control fails, which is what the calibration exists to prevent.
    uncalibrated = run_case(bench_for(**{"her2.control.calibration": False}), weak_slide)
    assert uncalibrated["score"] == "2+"
    assert uncalibrated["control"]["status"] == "failed"


def test_fields_measured_in_a_case_record_the_thresholds_they_used(
        bench_for, weak_slide: list[SlideField]) -> None:
    bench = bench_for()
    run_case(bench, weak_slide, case_id="c-thr")
    with sqlite3.connect(bench.cfg.store.path) as conn:
        rows = [json.loads(r[0]) for r in conn.execute(
            "SELECT r.result_json FROM results r JOIN case_fields f ON f.result_id = r.id "
            "WHERE f.case_id = 'c-thr' ORDER BY f.number")]
    control_rows = [r for r in rows if r["case"]["role"] == "control"]
    tumour_rows = [r for r in rows if r["case"]["role"] == "tumour"]
    assert all(r["thresholds"] == [0.2, 0.4, 0.6] for r in control_rows)
    factor = tumour_rows[0]["case"]["calibration_factor"]
    assert factor < 0.9
    assert all(r["thresholds"] == pytest.approx([0.2 * factor, 0.4 * factor, 0.6 * factor],
                                                abs=1e-3) for r in tumour_rows)


def test_the_audit_trail_holds_every_step_and_verifies(bench_for,
                                                       nominal_slide: list[SlideField]) -> None:
    bench = bench_for()
    run_case(bench, nominal_slide[:4], case_id="c-audit")
    log = AuditLog(bench.store)
    kinds = [e.kind for e in log.entries(case_id="c-audit")]
    assert kinds[0] == "case_opened" and kinds[-1] == "case_closed"
    assert "control_started" in kinds and "control_check" in kinds
    assert "thresholds_changed" in kinds
    assert kinds.count("field_result") == 4
    field_entry = next(e for e in log.entries(case_id="c-audit") if e.kind == "field_result")
    assert field_entry.model_sha256 == bench.assay.model.sha256
    assert log.verify() == []
    conn = sqlite3.connect(bench.cfg.store.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()


def test_one_case_at_a_time_and_opaque_ids(bench_for) -> None:
    bench = bench_for()
    bench.cases.start_case("c-a", source="cli")
    with pytest.raises(CaseError, match="still open"):
        bench.cases.start_case("c-b", source="cli")
    with pytest.raises(CaseError, match="not the open one"):
        bench.cases.end_case("c-b", source="cli")
    with pytest.raises(CaseError, match="record number"):
        CaseWorkflow(bench.cfg, bench.store).case_id_for("12345678")
    bench.cases.end_case("c-a", source="cli")
    with pytest.raises(CaseError, match="not reused"):
        bench.cases.start_case("c-a", source="cli")
    made_up = bench.cases.start_case(None, source="button").case_id
    assert made_up.startswith("b-")
    with pytest.raises(CaseError, match="no control check in progress"):
        bench.cases.end_control(source="cli")


def test_the_report_renders_the_case_with_pictures(bench_for, tmp_path: Path,
                                                   nominal_slide: list[SlideField]) -> None:
    bench = bench_for()
    summary = run_case(bench, nominal_slide, case_id="c-report")
    full = bench.cases.summary("c-report", thumbnails=True)
    paths = write_case_report(full, tmp_path / "reports", device_id="box-1",
                              config_sha256=bench.cfg.sha256())
    pdf = next(p for p in paths if p.suffix == ".pdf")
    reader = pypdf.PdfReader(pdf, strict=True)
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "c-report" in text and f"{summary['score']}" in text
    assert "VALID" in text and bench.assay.model.sha256[:16] in text
    pictures = [img for page in reader.pages for img in page.images]
    assert len(pictures) == len(nominal_slide)
    first = np.asarray(pictures[0].image)
    assert first.ndim == 3 and first.shape[1] == 320 and first.std() > 10
    assert "c-report" in next(p for p in paths if p.suffix == ".html").read_text()


def test_the_button_opens_checks_and_closes_a_case(bench_for,
                                                  nominal_slide: list[SlideField]) -> None:
    bench = bench_for()
    press = button_handler(bench.cases)
    press(ButtonAction.CONTROL)  # no case open: refused, logged and audited, nothing breaks
    assert bench.cases.live() is None
    press(ButtonAction.CASE)
    live = bench.cases.live()
    assert live is not None and live.case_id.startswith("b-") and live.mode == "tumour"
    press(ButtonAction.CONTROL)
    assert bench.cases.live().mode == "control"  # type: ignore[union-attr]
    bench.show(controls(nominal_slide))
    press(ButtonAction.CONTROL)
    assert bench.cases.live().control == "valid"  # type: ignore[union-attr]
    press(ButtonAction.CASE)
    assert bench.cases.live() is None
    closed = bench.cases.summary(live.case_id)
    assert closed.case.closed_by == "button" and closed.control_status == "valid"
    refused = [e for e in AuditLog(bench.store).entries() if e.kind == "command"]
    assert refused and "refused" in refused[0].detail["outcome"]
