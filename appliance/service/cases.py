"""The case workflow: open and close cases, check the control, tie every field to its case.

Every action (from an MQTT command, the ``appliance case`` CLI, the hardware button or
``appliance score --case``) is one transaction on the results store that changes the
case tables and appends its audit entry, so any process that opens the store sees the
same case and a restart resumes it. The service asks :meth:`CaseWorkflow.context`
before measuring each field (which case, which role, which thresholds), and the
recorder stores each result with :meth:`CaseWorkflow.companion`, which links it to the
case in the result's own transaction.

Case ids are opaque: a raw id is hashed with the site's salt (``mqtt.case_salt_file``)
or must already look opaque; ids the box makes up are ``<prefix>-<UTC time>-<random>``.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import cv2
import numpy as np

from appliance.assays.case_views import standing_rows
from appliance.assays.hep2 import control as hep2_control
from appliance.assays.hep2.control_trend import ControlReading, since_utc
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.her2.control import ControlCheck, evaluate_control
from appliance.assays.her2.types import CaseTag, FieldContext, FieldResult
from appliance.assays.results import AnyResult
from appliance.config import CONTROL_LEVELS, Config, Hep2ControlConfig
from appliance.outputs import audit, casebook, hep2_overlay
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.display.live import LiveCase
from appliance.outputs.outbox import MessageBuilder, append_message, report
from appliance.outputs.overlay import render_overlay
from appliance.outputs.result_json import supersedes_to_dict
from appliance.outputs.store import Companion, ResultStore, StoreError
from appliance.pipeline.field_memory import fingerprint
from appliance.service.button import ButtonAction
from appliance.service.case_summary import CaseSummary, control_state, readings, summarise
from appliance.service.hep2_case_summary import (
    Hep2CaseSummary,
    call_in_words,
    distinct_results,
    summarise_hep2,
)

_log = logging.getLogger(__name__)
THUMBNAIL_WIDTH = 320
# Serum dilutions a HEp-2 titration's wells may be given: 1:2 .. 1:100000 (labs screen at
# 1:40..1:160 and titrate in doubling steps to about 1:10240).
MIN_DILUTION, MAX_DILUTION = 2, 100_000
_THUMBNAIL_QUALITY = 80
SOURCES = ("mqtt", "cli", "button", "score", "service")


class CaseError(Exception):
    """A case action that cannot be done (no open case, one already open, bad id...)."""


CaseMessage = Callable[[dict[str, Any]], MessageBuilder]
AnySummary = CaseSummary | Hep2CaseSummary
AnyCheck = ControlCheck | hep2_control.Hep2ControlCheck


class CaseWorkflow:
    """Case actions on one results store, for one configuration."""

    def __init__(self, cfg: Config, store: ResultStore, *,
                 case_message: CaseMessage | None = None, salt: bytes | None = None,
                 settings: Callable[[], Config] | None = None) -> None:
        # ``settings`` follows a live reload (the service passes the assay's config), so
        # a changed her2.control or her2.case section applies to the next action.
        self._settings = settings or (lambda: cfg)
        self.store = store
        self._case_message = case_message  # the MQTT `case` message, when MQTT is on
        self._salt = salt
        self._live: LiveCase | None = None
        self._live_lock = threading.Lock()

    @property
    def cfg(self) -> Config:
        """The configuration in force now."""
        return self._settings()

    # ------------------------------------------------------------ ids

    def case_id_for(self, raw: str | None) -> str:
        """The opaque id of a raw case id, or a new one made up when ``raw`` is None."""
        if raw is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            return f"{self.cfg.her2.case.auto_id_prefix}-{stamp}-{secrets.token_hex(3)}"
        try:
            return contract.opaque_case_id(raw, self._salt)
        except ValueError as exc:
            raise CaseError(str(exc)) from exc

    def slide_id_for(self, raw: str, assay: str) -> str:
        """The opaque id of a slide as the lab knows it; CaseError for a HER2 case (its
        control is on the patient's own slide) or an id that cannot be made opaque."""
        if assay != "hep2":
            raise CaseError("a slide is named for a HEp-2 case only: its kit controls are "
                            "shared by the slide's wells (a HER2 case checks its own control)")
        try:
            return contract.opaque_case_id(raw, self._salt, what="slide id")
        except ValueError as exc:
            raise CaseError(str(exc)) from exc

    # ------------------------------------------------------------ actions

    def start_case(self, raw_id: str | None, *, source: str, assay: str | None = None,
                   slide: str | None = None) -> casebook.CaseRow:
        """Open a case of ``assay`` (default: the configured one; one case at a time);
        CaseError when one is open or the id is used.

        ``slide`` (HEp-2 only) names the slide the patient's well is on, as the lab knows
        it: it is made opaque as case ids are, and the case counts the kit control checks
        made in the slide's other cases (docs/cases.md, "One slide, one set of kit
        controls").
        """
        case_id = self.case_id_for(raw_id)
        assay = assay or self.cfg.assay
        slide_id = None if slide is None else self.slide_id_for(slide, assay)
        now = _now()

        def work(conn: sqlite3.Connection) -> casebook.CaseRow:
            try:
                casebook.insert_case(conn, case_id, at=now, by=source, assay=assay,
                                     slide=slide_id)
            except ValueError as exc:
                raise CaseError(str(exc)) from exc
            detail: dict[str, Any] = {"assay": assay}
            if slide_id is not None:
                detail["slide"] = slide_id
            audit.append(conn, kind="case_opened", source=source, case_id=case_id,
                         detail=detail, at=now)
            row = casebook.get_case(conn, case_id)
            assert row is not None
            return row
        row = self._write(work)
        _log.info("case %s opened (%s%s, %s)", case_id, assay,
                  f", slide {slide_id}" if slide_id else "", source)
        self.refresh_live()
        return row

    def end_case(self, case_id: str | None, *, source: str) -> dict[str, Any]:
        """Close the open case (``case_id`` must name it, if given); its final summary.

        The summary is stored with the case, audited and, with MQTT on, queued as the
        ``case`` message in the same transaction.
        """
        now = _now()

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            case = self._open(conn, case_id)
            closing = replace(case, closed_at=now, closed_by=source)
            summary = self._summary(conn, closing).to_dict()
            casebook.close_case(conn, case.case_id, at=now, by=source, summary=summary)
            audit.append(conn, kind="case_closed", source=source, case_id=case.case_id, at=now,
                         detail=_closing_detail(summary))
            self._queue(conn, summary)
            return summary
        summary = self._write(work)
        _log.info("case %s closed (%s): %s, control %s", summary["case_id"], source,
                  _call_words(summary), summary["control"]["status"])
        self.refresh_live()
        return summary

    def start_control(self, expected: str | None, *, source: str) -> dict[str, Any]:
        """Start a control check: the fields reported next are the control's.

        ``expected`` is what the control must show: a HER2 level, or for a HEp-2 case
        "negative" or a pattern (class name or ICAP code); None takes the assay's
        ``control.default_expected``.
        """
        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            case = self._open(conn, None)
            level = self._control_expectation(case.assay, expected)
            if case.mode == "control":
                raise CaseError(f"a {case.control_expected} control check is already in "
                                "progress: end it first")
            round_ = case.control_round + 1
            casebook.set_mode(conn, case.case_id, "control", expected=level,
                              control_round=round_)
            audit.append(conn, kind="control_started", source=source, case_id=case.case_id,
                         detail={"expected": level, "round": round_})
            return {"case_id": case.case_id, "expected": level, "round": round_}
        out = self._write(work)
        self.refresh_live()
        return out

    def set_dilution(self, dilution: int, *, source: str) -> dict[str, Any]:
        """The serum dilution (80 for 1:80) of the well the open HEp-2 case's next patient
        fields are shown in: a titration's wells, for the endpoint titre."""
        if not MIN_DILUTION <= dilution <= MAX_DILUTION:
            raise CaseError(f"dilution {dilution} is outside {MIN_DILUTION}..{MAX_DILUTION} "
                            "(80 for 1:80)")

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            case = self._open(conn, None)
            if case.assay != "hep2":
                raise CaseError(f"case {case.case_id} is a {case.assay} case: dilutions are "
                                "for HEp-2 titrations")
            if case.mode == "control":
                raise CaseError("a kit control check is in progress: end it first (the kit's "
                                "controls come ready to use, undiluted by the lab)")
            casebook.set_dilution(conn, case.case_id, dilution)
            audit.append(conn, kind="dilution_set", source=source, case_id=case.case_id,
                         detail={"dilution": dilution})
            return {"case_id": case.case_id, "dilution": dilution}
        out = self._write(work)
        _log.info("case %s: patient fields now of the 1:%d well (%s)", out["case_id"],
                  dilution, source)
        self.refresh_live()
        return out

    def _control_expectation(self, assay: str, expected: str | None) -> str:
        """The control's expected reading for a case of ``assay``; CaseError if unknown."""
        if assay == "hep2":
            try:
                return hep2_control.control_expectation(
                    expected or self.cfg.hep2.control.default_expected)
            except ValueError as exc:
                raise CaseError(str(exc)) from exc
        level = expected or self.cfg.her2.control.default_expected
        if level not in CONTROL_LEVELS:
            raise CaseError(f"control level {level!r} is not one of {', '.join(CONTROL_LEVELS)}")
        return level

    def end_control(self, *, source: str) -> AnyCheck:
        """Decide on the control from the fields shown since it started; back to the
        patient's fields."""
        now = _now()

        def work(conn: sqlite3.Connection) -> AnyCheck:
            case = self._open(conn, None)
            if case.mode != "control" or case.control_expected is None:
                raise CaseError("no control check in progress")
            check = self._decide(conn, case, case.control_round, case.control_expected,
                                 at=now, source=source)
            casebook.set_mode(conn, case.case_id, "tumour")
            return check
        check = self._write(work)
        _log.log(logging.INFO if check.valid else logging.WARNING, "control %s %s: %s",
                 check.expected, "valid" if check.valid else "FAILED", "; ".join(check.reasons))
        self.refresh_live()
        return check

    def _decide(self, conn: sqlite3.Connection, case: casebook.CaseRow, control_round: int,
                expected: str, *, at: str, source: str,
                redecides: dict[str, Any] | None = None) -> AnyCheck:
        """Decide control round ``control_round`` from the views that stand for its fields;
        store and audit the decision (and, for HER2, a change of thresholds it makes).

        ``redecides`` describes the round's earlier decision when one of its views was read
        again after it (``_redecide_round``); it is kept with the new decision.
        """
        rows = casebook.case_fields(conn, case.case_id, role="control",
                                    control_round=control_round)
        h3 = self.cfg.her2
        # HER2: the thresholds before this decision, to audit a change it makes.
        before = (None if case.assay == "hep2" else
                  control_state(casebook.checks(conn, case.case_id), h3.measure,
                                h3.control)[1])
        check: AnyCheck = (self._hep2_check(conn, case.case_id, control_round, rows,
                                            expected, at)
                           if case.assay == "hep2" else self._her2_check(rows, expected))
        if redecides is not None:
            check = replace(check, reasons=(*check.reasons, _redecided_words(redecides)))
        stored = check.to_dict()
        if redecides is not None:
            stored["redecides"] = redecides
        casebook.insert_check(conn, case.case_id, control_round=control_round,
                              expected=expected, at=at, valid=check.valid, check=stored)
        audit.append(conn, kind="control_check", source=source, case_id=case.case_id,
                     at=at, detail=stored)
        if before is not None:
            after = control_state(casebook.checks(conn, case.case_id), h3.measure,
                                  h3.control)[1]
            if after != before:
                audit.append(conn, kind="thresholds_changed", source=source, at=at,
                             case_id=case.case_id,
                             detail={"from": list(before.thresholds),
                                     "to": list(after.thresholds),
                                     "factor": after.factor, "why": after.describe()})
        return check

    def _redecide_round(self, conn: sqlite3.Connection, case: casebook.CaseRow,
                        control_round: int, *, field: int, replaced: int,
                        source: str) -> None:
        """Decide a finished control round again: its view ``replaced`` was read again
        under new settings after the decision, as case field ``field``.

        Nothing is done while the round is open (its end decides with the new reading), or
        when a later round of the same level has decided since (the latest decision per
        level counts, so the earlier one no longer does). A decision that cannot be made is
        logged and the round's earlier one stands: the field itself is stored either way.
        """
        decided = casebook.checks(conn, case.case_id)
        mine = [c for c in decided if c.round == control_round]
        if not mine:
            return
        last = mine[-1]
        if any(c.expected == last.expected and c.round > control_round for c in decided):
            _log.info("control round %d not decided again after field %d: a later %s round "
                      "has decided since", control_round, field, last.expected)
            return
        redecides = {"decided_at": last.decided_at, "valid": last.valid, "field": field,
                     "replaced": replaced}
        # A savepoint: a decision that fails half-way leaves no trace, and the field's own
        # rows (the enclosing transaction) are stored all the same.
        conn.execute("SAVEPOINT redecide")
        try:
            check = self._decide(conn, case, control_round, last.expected, at=_now(),
                                 source=source, redecides=redecides)
        except (CaseError, ValueError, KeyError, TypeError) as exc:
            conn.execute("ROLLBACK TO redecide")
            conn.execute("RELEASE redecide")
            _log.error("control round %d not decided again after field %d: %s (its "
                       "decision of %s stands)", control_round, field, exc, last.decided_at)
            return
        conn.execute("RELEASE redecide")
        changed = check.valid != last.valid
        _log.log(logging.WARNING if changed else logging.INFO,
                 "control round %d decided again (field %d read again as field %d): %s%s",
                 control_round, replaced, field, "valid" if check.valid else "FAILED",
                 f", was {'valid' if last.valid else 'failed'}" if changed else "")

    def _hep2_check(self, conn: sqlite3.Connection, case_id: str, control_round: int,
                    rows: list[casebook.CaseFieldRow], expected: str, now: str
                    ) -> hep2_control.Hep2ControlCheck:
        results, unreadable = distinct_results(rows)
        ctl = self.cfg.hep2.control
        check = hep2_control.evaluate_control([r for _, r in results], expected,
                                              self.cfg.hep2)
        if ctl.positive_target:  # the lot's earlier runs, for the Westgard rules
            since = since_utc(ctl.target_since, "hep2.control.target_since")
            # A round decided again is judged against the runs before it, not itself.
            history = [ControlReading.from_check(r.case_id, r.decided_at, r.check)
                       for r in casebook.control_history(conn, assay="hep2",
                                                         expected=check.expected, since=since)
                       if (r.case_id, r.round) != (case_id, control_round)]
            check = hep2_control.westgard_check(check, history, case_id=case_id, at=now,
                                                cfg=self.cfg.hep2)
        return replace(check, reasons=(*check.reasons, *unreadable))

    def _her2_check(self, rows: list[casebook.CaseFieldRow], expected: str) -> ControlCheck:
        h3 = self.cfg.her2
        standing = standing_rows((f.number, f.duplicate_of, f.result) for f in rows)
        distinct = [readings(f.result) for f in rows
                    if f.number in standing and f.result.get("status") == "scored"]
        return evaluate_control(distinct, expected, measure=h3.measure, rules=h3.rules,
                                control=h3.control)

    def record_command(self, name: str, outcome: str, *, source: str,
                       case_id: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Audit a command: its name, what came of it, and the (opaque) case it acted on.

        The caller passes only what may be kept: never a raw case id, which may be a
        patient's record number.
        """
        try:
            self.store.write_with(lambda conn: audit.append(
                conn, kind="command", source=source,
                detail={"name": name, "outcome": outcome, **(detail or {})},
                case_id=_opaque_or_none(case_id)), flush_backlog=False)
        except (StoreError, ValueError) as exc:
            _log.error("audit of command %s not recorded: %s", name, exc)

    # ------------------------------------------------------------ fields

    def context(self) -> FieldContext | None:
        """The open case's say on the next field (None outside a case).

        Read from the store each time (two indexed queries), so a case opened by the
        CLI or another process applies from the next field.
        """
        h3 = self.cfg.her2
        try:
            def read(conn: sqlite3.Connection) -> FieldContext | None:
                case = casebook.open_case(conn)
                if case is None or case.assay != "her2":
                    return None  # a HEp-2 case: the HER2 field is not one of its
                status, calibration = control_state(casebook.checks(conn, case.case_id),
                                                    h3.measure, h3.control)
                if case.mode == "control":
                    # A control is measured with the nominal thresholds: it is what
                    # calibrates them.
                    t = h3.measure.intensity_thresholds
                    return FieldContext(CaseTag(case.case_id, "control", "checking", 1.0),
                                        (t[0], t[1], t[2]))
                return FieldContext(CaseTag(case.case_id, "tumour", status,
                                            calibration.factor), calibration.thresholds)
            return self.store.read_with(read)
        except StoreError as exc:
            # Nominal thresholds outside a case beat no result; the field says so.
            _log.error("open case not readable, field measured outside a case: %s", exc)
            return None

    def companion(self, result: AnyResult, image: np.ndarray | None,
                  *, source: str) -> Companion:
        """The store hook that links a result to its case and audits it (one transaction).

        A case takes only its own assay's fields: one of another assay (the case was
        opened by another process under the other assay) is stored outside it, logged.
        The fingerprint and the thumbnail are made here, before the store's lock.
        """
        # Fingerprint and thumbnail cost tens of ms: only for a field that joins a case.
        # (A case opened by another process in between links without them.)
        tag = result.case if isinstance(result, FieldResult) else None
        in_case = tag is not None or self._case_open()
        fp = fingerprint(image) if image is not None and in_case else None
        thumb = self._thumbnail(result, image) if in_case else None
        same = self.cfg.her2.case.duplicate_similarity

        def link(conn: sqlite3.Connection, row_id: int) -> None:
            case = casebook.open_case(conn)
            number = duplicate_of = None
            redecide: tuple[casebook.CaseRow, int, int, int] | None = None
            if case is not None and case.assay != result.assay:
                _log.warning("field %s (%s) kept outside case %s, a %s case", result.file,
                             result.assay, case.case_id, case.assay)
            elif case is not None and (tag is None or tag.case_id == case.case_id):
                role = tag.role if tag is not None else case.mode
                control_round = case.control_round if role == "control" else None
                dilution = case.dilution if role == "tumour" else None
                prior = _superseded_place(conn, case.case_id, result)
                if prior is not None and (prior.role, prior.control_round, prior.dilution) != (
                        role, control_round, dilution):
                    # The same view read again: it stays where its first reading was filed
                    # (a control well's view never joins the patient's well because the
                    # control round ended while it was held).
                    _log.info("field %s#%d supersedes case field %d: filed as it was (%s)",
                              result.file, result.seq, prior.number, prior.role)
                    role, control_round, dilution = (prior.role, prior.control_round,
                                                     prior.dilution)
                number, duplicate_of = casebook.link_field(
                    conn, case.case_id, row_id, role=role, control_round=control_round,
                    at=_now(), fingerprint=fp, thumbnail=thumb, same_field=same,
                    dilution=dilution)
                if prior is not None and role == "control" and control_round is not None:
                    redecide = (case, control_round, number, prior.number)
            elif tag is not None:
                _log.warning("field %s was measured for case %s, which closed before it was "
                             "stored: kept outside the case", result.file, tag.case_id)
            audit.append(
                conn, kind="field_result", source=source, result_id=row_id,
                case_id=case.case_id if number is not None and case else None,
                model_sha256=result.model.sha256 or None,
                detail={"file": result.file, "seq": result.seq, "status": result.status,
                        "reason_code": result.reason_code, **_audit_call(result),
                        "case_field": number, "duplicate_of": duplicate_of,
                        "supersedes": supersedes_to_dict(result.supersedes)})
            if redecide is not None:  # after the field's own entry, which it cites
                case_row, control_round, field, replaced = redecide
                self._redecide_round(conn, case_row, control_round, field=field,
                                     replaced=replaced, source=source)
        return link

    def after_field(self) -> None:
        """Refresh the overlay's case line (call after a result is stored)."""
        self.refresh_live()

    # ------------------------------------------------------------ reading

    def summary(self, case_id: str | None = None, *, thumbnails: bool = False) -> AnySummary:
        """A case's summary now (the open one when ``case_id`` is None).

        ``thumbnails`` loads the fields' overlay pictures too (for the report).
        """
        def read(conn: sqlite3.Connection) -> AnySummary:
            case = (casebook.open_case(conn) if case_id is None
                    else casebook.get_case(conn, case_id))
            if case is None:
                raise CaseError("no open case" if case_id is None else "no such case")
            return self._summary(conn, case, thumbnails=thumbnails)
        return self.store.read_with(read)

    def open_case(self) -> casebook.CaseRow | None:
        """The open case as stored now (None: none is open)."""
        return self.store.read_with(casebook.open_case)

    def live(self) -> LiveCase | None:
        """The open case for the overlay (as of the last refresh)."""
        with self._live_lock:
            return self._live

    def refresh_live(self) -> None:
        """Recompute the overlay's case line from the store (errors logged, never raised)."""
        try:
            summary = self.summary()
        except CaseError:
            live = None
        except (StoreError, ValueError, KeyError) as exc:
            _log.error("case summary not computed: %s", exc)
            return
        else:
            live = _live_case(summary)
        with self._live_lock:
            self._live = live

    # ------------------------------------------------------------ helpers

    def _summary(self, conn: sqlite3.Connection, case: casebook.CaseRow, *,
                 thumbnails: bool = False) -> AnySummary:
        fields = casebook.case_fields(conn, case.case_id, thumbnails=thumbnails)
        checks = casebook.checks(conn, case.case_id)
        if case.assay == "hep2":
            if case.slide is not None:
                checks = with_slide_checks(conn, case, checks, self.cfg.hep2.control)
            return summarise_hep2(case, fields, checks, self.cfg.hep2)
        return summarise(case, fields, checks, self.cfg.her2)

    def _case_open(self) -> bool:
        try:
            return self.open_case() is not None
        except StoreError:
            return False

    @staticmethod
    def _open(conn: sqlite3.Connection, case_id: str | None) -> casebook.CaseRow:
        case = casebook.open_case(conn)
        if case is None:
            raise CaseError("no case is open")
        if case_id is not None and case.case_id != case_id:
            raise CaseError("that case is not the open one")
        return case

    def _queue(self, conn: sqlite3.Connection, summary: dict[str, Any]) -> None:
        if self._case_message is None:
            return
        cap = self.store.outbox_max_messages
        appended = append_message(conn, self._case_message(summary), cap=cap)
        report(appended, cap)

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return self.store.write_with(work, flush_backlog=True)
        except sqlite3.IntegrityError as exc:  # e.g. a second open case from another process
            raise CaseError(f"refused by the store: {exc}") from exc

    def _thumbnail(self, result: AnyResult, image: np.ndarray | None) -> bytes | None:
        if image is None:
            return None
        try:
            picture = (hep2_overlay.render_overlay(image, result)
                       if isinstance(result, Hep2Result) else render_overlay(image, result))
            h, w = picture.shape[:2]
            scale = THUMBNAIL_WIDTH / w
            small = cv2.resize(picture, (THUMBNAIL_WIDTH, max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, _THUMBNAIL_QUALITY])
        except (cv2.error, ValueError) as exc:
            _log.error("thumbnail of %s not made: %s", result.file, exc)
            return None
        return jpeg.tobytes() if ok else None


def with_slide_checks(conn: sqlite3.Connection, case: casebook.CaseRow,
                      own: list[casebook.CheckRow], control: Hep2ControlConfig
                      ) -> list[casebook.CheckRow]:
    """A HEp-2 case's own control checks and those of its slide's other cases, by time.

    A slide check counts when it was decided no more than ``control.slide_max_age_h``
    before the case opened (one run's controls, not a reused slide id's) and, for a
    closed case, before it closed, so a closed case's call does not change afterwards.
    """
    assert case.slide is not None
    opened = datetime.fromisoformat(case.opened_at)
    since = (opened - timedelta(hours=control.slide_max_age_h)).isoformat(
        timespec="milliseconds")
    shared = casebook.slide_checks(conn, case.slide, assay=case.assay, since=since,
                                   until=case.closed_at, exclude=case.case_id)
    return sorted([*shared, *own], key=lambda c: c.decided_at)


def mqtt_case_messages(cfg: Config, hostname: str) -> CaseMessage | None:
    """The builder of the MQTT ``case`` message, when MQTT is configured (else None).

    Any process that closes a case (the service, the CLI) queues the message in the
    outbox with the close; the service's MQTT link sends it.
    """
    if not cfg.mqtt.url:
        return None
    device_id = contract.device_id_for(cfg.mqtt, hostname)

    def for_summary(summary: dict[str, Any]) -> MessageBuilder:
        return lambda msg_id, seq: ("case", contract.encode(contract.case_message(
            device_id, summary, msg_id=msg_id, seq=seq)))
    return for_summary


def _live_case(summary: AnySummary) -> LiveCase:
    """The overlay's case line from a case's summary."""
    case = summary.case
    control = "checking" if case.mode == "control" else summary.control_status
    if isinstance(summary, Hep2CaseSummary):
        w = summary.well
        return LiveCase(
            case_id=case.case_id, mode=case.mode, control=control,
            control_expected=(hep2_control.describe(case.control_expected)
                              if case.control_expected else None),
            calibration="", score=summary.call if w is not None else None, category=None,
            fields_counted=len(summary.counted),
            tumour_cells=w.cells_interphase if w is not None else 0,
            flags=len(w.odd_fields) if w is not None else 0, assay="hep2",
            dilution=case.dilution, on_slide=case.slide is not None)
    s = summary.score
    return LiveCase(
        case_id=case.case_id, mode=case.mode, control=control,
        control_expected=case.control_expected, calibration=summary.calibration.short(),
        score=s.score.value if s.score else None,
        category=s.category.value if s.category else None,
        fields_counted=s.fields_counted, tumour_cells=s.tumour_cells,
        flags=len(s.heterogeneity) + len(s.borderline))


def _superseded_place(conn: sqlite3.Connection, case_id: str,
                      result: AnyResult) -> casebook.FieldPlace | None:
    """Where the case filed the report ``result`` supersedes (None: it supersedes none of
    the case's fields)."""
    ref = result.supersedes
    return None if ref is None else casebook.place_of(conn, case_id, ref.file, ref.seq)


def _redecided_words(redecides: dict[str, Any]) -> str:
    """The reason line of a control decision made again (``CaseWorkflow._redecide_round``)."""
    return (f"decided again: field {redecides['replaced']} was read again under new settings "
            f"as field {redecides['field']} (the round's decision of {redecides['decided_at']} "
            f"was {'valid' if redecides['valid'] else 'failed'})")


def _audit_call(result: AnyResult) -> dict[str, Any]:
    """What the audit keeps of a field's call."""
    if isinstance(result, Hep2Result):
        return {"positive": result.positive,
                "patterns": [p.icap for p in result.patterns],
                "cells": result.cells_interphase}
    return {"score": result.score.value if result.score else None,
            "tumour_cells": result.tumour_cells,
            "thresholds": list(result.intensity_thresholds or ())}


def _closing_detail(summary: dict[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a closed case's summary."""
    if summary.get("assay") == "hep2":
        return {"assay": "hep2", "status": summary["status"], "positive": summary["positive"],
                "patterns": [p["icap"] for p in summary["patterns"]],
                "control": summary["control"]["status"],
                "fields_counted": summary["fields_counted"],
                "cells": summary["cell_counts"]["interphase"]}
    return {"score": summary["score"], "category": summary["category"],
            "control": summary["control"]["status"],
            "fields_counted": summary["fields_counted"],
            "tumour_cells": summary["tumour_cells"]}


def _call_words(summary: dict[str, Any]) -> str:
    """A closed case's call for the log line."""
    if summary.get("assay") == "hep2":
        return call_in_words(summary["positive"], [p["icap"] for p in summary["patterns"]])
    return str(summary["score"])


def case_needs_attention(live: LiveCase | None) -> bool:
    """The status light asks for attention while the open case's control is not valid."""
    return live is not None and live.mode == "tumour" and live.control != "valid"


def button_handler(cases: CaseWorkflow) -> Callable[[ButtonAction], None]:
    """What the case button does: toggle the case (short press) or the control (long)."""
    def on_action(action: ButtonAction) -> None:
        live = cases.live()
        try:
            if action is ButtonAction.CASE:
                if live is None:
                    cases.start_case(None, source="button")
                else:
                    cases.end_case(live.case_id, source="button")
            elif live is not None and live.mode == "control":
                cases.end_control(source="button")
            else:
                cases.start_control(None, source="button")
        except CaseError as exc:
            # e.g. a long press with no case open: the panel and LED already say why.
            _log.warning("button %s: %s", action.value, exc)
            cases.record_command(f"button_{action.value}", f"refused: {exc}", source="button")
    return on_action


def _opaque_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and contract.is_opaque_id(value) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
