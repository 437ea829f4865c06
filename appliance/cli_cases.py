"""`appliance case`, `appliance report` and `appliance audit`: the case workflow from a shell.

They act on the results store directly, the same way the service does, so a case opened
here is the case the running service files its fields under, and the other way round.

    appliance case start [CASE_ID] [--assay hep2]   open a case (an id is made up when none
                                            is given) of the configured assay, or --assay's
    appliance case control start [--expected 3+]   the next fields are the control's (HEp-2:
                                            --expected negative, homogeneous, AC-3, ...)
    appliance case control end               decide on the control (valid / failed)
    appliance case dilution 160              HEp-2: the next patient fields are the 1:160
                                            well's (a titration, for the endpoint titre)
    appliance case end [CASE_ID]             close the open case: its summary
    appliance case status [CASE_ID] [--json] appliance case list
    appliance report CASE_ID [--out DIR]     PDF + HTML report
    appliance audit export [--case ID] [--out FILE]   appliance audit verify
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.assays.hep2.control import Hep2ControlCheck, control_expectation, describe
from appliance.assays.hep2.control_trend import (
    MIN_BASELINE,
    ControlReading,
    ControlTrend,
    control_trend,
    since_utc,
)
from appliance.config import CONTROL_LEVELS, Config
from appliance.outputs import casebook
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.audit import AuditLog
from appliance.outputs.commands import ASSAYS
from appliance.outputs.overlay import write_png
from appliance.outputs.qc_chart import render_chart
from appliance.outputs.store import ResultStore
from appliance.service.case_report import write_case_report
from appliance.service.cases import AnySummary, CaseError, CaseWorkflow, mqtt_case_messages
from appliance.service.hep2_case_report import write_hep2_case_report
from appliance.service.hep2_case_summary import Hep2CaseSummary, call_in_words

SOURCE = "cli"


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the case, report and audit subcommands to the `appliance` parser."""
    cs = sub.add_parser("case", help="open / close a case, check its positive control")
    actions = cs.add_subparsers(dest="case_command", required=True)
    start = actions.add_parser("start", help="open a case")
    start.add_argument("case_id", nargs="?", help="the lab's case id (hashed with the site "
                       "salt); omitted: the box makes one up")
    start.add_argument("--assay", choices=ASSAYS, help="the case's assay (default: the "
                       "config's); a case takes only its own assay's fields")
    start.add_argument("--slide", help="HEp-2: the slide the well is on (hashed as case ids "
                       "are); the case counts the kit controls checked in the slide's other "
                       "cases")
    end = actions.add_parser("end", help="close the open case and print its summary")
    end.add_argument("case_id", nargs="?", help="must be the open case, if given")
    control = actions.add_parser("control", help="control check of the open case (HER2: the "
                                 "positive control tissue; HEp-2: a kit control well)")
    step = control.add_subparsers(dest="control_command", required=True)
    cstart = step.add_parser("start", help="the fields reported next are the control's")
    cstart.add_argument("--expected", help="what the control must show: a HER2 level ("
                        f"{', '.join(CONTROL_LEVELS)}; default her2.control.default_expected) "
                        "or, in a HEp-2 case, 'negative' or a pattern's class name or ICAP "
                        "code (default hep2.control.default_expected)")
    cend = step.add_parser("end", help="decide on the control shown since `control start`")
    dilution = actions.add_parser("dilution", help="HEp-2: the serum dilution of the well "
                                  "shown next (160 for 1:160): a titration's wells give "
                                  "each pattern its endpoint titre")
    dilution.add_argument("dilution", type=int, help="the dilution's denominator")
    status = actions.add_parser("status", help="a case's summary (default: the open case)")
    status.add_argument("case_id", nargs="?")
    status.add_argument("--json", action="store_true", help="the summary as JSON")
    listing = actions.add_parser("list", help="the newest cases")
    chart = actions.add_parser("controls", help="HEp-2: a kit control's readings over runs "
                               "(Levey-Jennings, Westgard rules); exit 1 when the latest "
                               "breaks a rejection rule")
    chart.add_argument("--expected", help="the control: 'negative' or a pattern (default "
                       "hep2.control.default_expected, the kit's positive control)")
    chart.add_argument("--since", help="the first day (or time) of the kit lot: readings "
                       "before it are neither shown nor part of the baseline (an ISO date or "
                       "time; without an offset, the box's local time; default "
                       "hep2.control.target_since)")
    chart.add_argument("--lot", help="the kit lot whose readings to chart (default "
                       "hep2.control.kit_lot; '' for every lot)")
    chart.add_argument("--baseline", type=int, default=MIN_BASELINE, help="without an "
                       "established mean and SD, the first so many calibrated readings of "
                       "passed checks since --since set them (default %(default)s, as CLSI "
                       "C24)")
    chart.add_argument("--target", type=float, nargs=2, metavar=("MEAN", "SD"),
                       help="the lab's established mean and SD in calibrated units (default "
                       "hep2.control.positive_target for the kit's positive control)")
    chart.add_argument("--last", type=int, default=200, help="readings to show, newest; each "
                       "is judged with all readings before it (default %(default)s)")
    chart.add_argument("--chart", type=Path, help="also write the chart as a PNG")
    chart.add_argument("--json", action="store_true", help="the readings as JSON")
    for leaf in (start, end, cstart, cend, dilution, status, listing, chart):
        common(leaf)

    rp = sub.add_parser("report", help="write a case's report (PDF and HTML)")
    rp.add_argument("case_id", metavar="CASE_ID")
    rp.add_argument("--out", type=Path, default=Path("var/reports"), help="folder for the report")
    common(rp)

    au = sub.add_parser("audit", help="export or verify the audit trail")
    what = au.add_subparsers(dest="audit_command", required=True)
    ex = what.add_parser("export", help="the audit trail as JSON lines")
    ex.add_argument("--case", help="only this case's entries")
    ex.add_argument("--out", type=Path, help="file to write (default: standard output)")
    common(ex)
    common(what.add_parser("verify", help="check the audit trail's hash chain"))


def _workflow(cfg: Config, store: ResultStore) -> CaseWorkflow:
    return CaseWorkflow(cfg, store, case_message=mqtt_case_messages(cfg, socket.gethostname()),
                        salt=contract.read_case_salt(cfg.mqtt.case_salt_file))


def _resolve(cases: CaseWorkflow, raw: str | None) -> str | None:
    """A case id as typed: the stored id itself, or the lab's id hashed as on start."""
    if raw is None:
        return None
    if cases.store.read_with(lambda conn: casebook.get_case(conn, raw)) is not None:
        return raw
    return cases.case_id_for(raw)


def cmd_case(args: argparse.Namespace, cfg: Config) -> int:
    """`appliance case ...`: one action on the store's case state."""
    with ResultStore(cfg.store.path) as store:
        cases = _workflow(cfg, store)
        try:
            return _case_action(args, cases)
        except CaseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            cases.record_command(f"case_{args.case_command}", f"refused: {exc}",
                                 source=SOURCE)
            return 2


def _case_action(args: argparse.Namespace, cases: CaseWorkflow) -> int:
    action = args.case_command
    if action == "start":
        row = cases.start_case(args.case_id, source=SOURCE, assay=args.assay,
                               slide=args.slide)
        print(f"case {row.case_id} opened ({row.assay}"
              + (f", slide {row.slide})" if row.slide else ")"))
        cases.record_command("case_start", "done", source=SOURCE, case_id=row.case_id)
        return 0
    elif action == "end":
        closed = cases.end_case(_resolve(cases, args.case_id), source=SOURCE)
        print(f"case {closed['case_id']} closed")
        print(_summary_text(cases.summary(closed["case_id"])))
    elif action == "control":
        if args.control_command == "start":
            out = cases.start_control(args.expected, source=SOURCE)
            print(f"control check {out['round']} ({out['expected']}) started for case "
                  f"{out['case_id']}: show the control tissue")
        else:
            check = cases.end_control(source=SOURCE)
            print(f"control {check.expected}: {'VALID' if check.valid else 'FAILED'}")
            for reason in check.reasons:
                print(f"  {reason}")
            if isinstance(check, Hep2ControlCheck):
                return 0 if check.valid else 1
            print(f"  {check.calibration.describe()}")
            if check.measured_od is not None:
                print(f"  measured membrane OD {check.measured_od:.3f} (reference_od "
                      f"{check.reference_od})")
            return 0 if check.valid else 1
    elif action == "dilution":
        out = cases.set_dilution(args.dilution, source=SOURCE)
        print(f"case {out['case_id']}: the next patient fields are the 1:{out['dilution']} "
              "well's")
    elif action == "controls":
        return _controls(args, cases)
    elif action == "status":
        summary = cases.summary(_resolve(cases, args.case_id))
        print(json.dumps(summary.to_dict(), indent=2) if args.json else _summary_text(summary))
    else:
        rows = cases.store.read_with(casebook.list_cases)
        for c in rows:
            state = "OPEN" if c.open else f"closed {c.closed_at}"
            print(f"{c.case_id:40s} {c.opened_at}  {c.assay:5s} {state}  "
                  f"{_listed_call(c)}")
    cases.record_command(f"case_{action}", "done", source=SOURCE)
    return 0


def _controls(args: argparse.Namespace, cases: CaseWorkflow) -> int:
    """`appliance case controls`: a kit control's chart over runs."""
    try:
        ctl = cases.cfg.hep2.control
        expected = control_expectation(args.expected or ctl.default_expected)
        if args.last < 1:
            raise ValueError(f"--last {args.last}: need at least 1 reading")
        since = (since_utc(args.since, "--since") if args.since is not None
                 else since_utc(ctl.target_since, "hep2.control.target_since"))
        target = args.target
        if target is None and ctl.positive_target and expected == control_expectation(
                ctl.default_expected):
            target = ctl.positive_target
        lot = args.lot if args.lot is not None else ctl.kit_lot
        rows = cases.store.read_with(lambda conn: casebook.control_history(
            conn, assay="hep2", expected=expected, since=since))
        readings = [ControlReading.from_check(r.case_id, r.decided_at, r.check) for r in rows]
        trend = control_trend([r for r in readings if not lot or r.kit_lot == lot], expected,
                              baseline=args.baseline,
                              established=None if target is None else (target[0], target[1]))
    except ValueError as exc:
        raise CaseError(str(exc)) from exc
    # Judged on the whole history (since the lot began), shown by its newest readings.
    trend = trend.last(args.last)
    title = (f"Kit control {describe(expected)}{f', lot {lot}' if lot else ''}: "
             f"{len(trend.points)} readings")
    if args.json:
        print(json.dumps(_trend_dict(trend), indent=2))
    else:
        print(_trend_text(trend, title))
    if args.chart is not None:
        write_png(args.chart, render_chart(trend, title))
        print(f"chart: {args.chart}", file=sys.stderr)
    cases.record_command("case_controls", "done", source=SOURCE,
                         detail={"expected": expected, "readings": len(trend.points)})
    return 1 if trend.points and trend.points[-1].rejected else 0


def _trend_dict(trend: ControlTrend) -> dict[str, Any]:
    r = trend.suggested_range
    return {"expected": trend.expected, "baseline_n": trend.baseline_n, "mean": trend.mean,
            "sd": trend.sd, "established": trend.established,
            "suggested_positive_units": list(r) if r else None,
            "readings": [{"decided_at": p.reading.decided_at, "case_id": p.reading.case_id,
                          "kit_lot": p.reading.kit_lot or None,
                          "valid": p.reading.valid, "units": p.reading.units,
                          "calibrated": p.reading.calibrated,
                          "z": None if p.z is None else round(p.z, 3), "rules": list(p.rules)}
                         for p in trend.points]}


def _trend_text(trend: ControlTrend, title: str) -> str:
    lines = [title]
    if trend.mean is None or trend.sd is None:
        lines.append(f"  {trend.basis} (and for a suggested range)")
    else:
        low, high = trend.suggested_range or (0.0, 0.0)
        lines += [f"  target: mean {trend.mean:.1f}, SD {trend.sd:.1f} units {trend.basis}",
                  f"  suggested hep2.control.positive_units = [{low:g}, {high:g}] (mean +/- "
                  "2 SD)"]
    for p in trend.points:
        r = p.reading
        units = "not read" if r.units is None else f"{r.units:.0f} units"
        flags = " ".join(p.rules)
        if p.rejected:
            flags += " REJECT"
        lot = f" lot {r.kit_lot}" if r.kit_lot else ""
        lines.append(f"  {r.decided_at}  {r.case_id:36s}{lot} {units:>10s}"
                     f"{'' if r.calibrated else ' (not calibrated)'}  "
                     f"{'valid' if r.valid else 'FAILED'}  {flags}".rstrip())
    return "\n".join(lines)


def _listed_call(case: casebook.CaseRow) -> str:
    """A closed case's call for ``case list`` (its stored summary's)."""
    summary = case.summary or {}
    if case.assay != "hep2":
        return f"score {summary.get('score') or '-'}"
    if summary.get("positive") is None:
        return "call -"
    titres = {t["icap"]: f" {t['titre']}" for t in summary.get("titres", ())}
    return "call " + call_in_words(summary["positive"], [
        p["icap"] + titres.get(p["icap"], "") for p in summary["patterns"]])


def _summary_text(summary: AnySummary) -> str:
    if isinstance(summary, Hep2CaseSummary):
        return _hep2_summary_text(summary)
    s = summary.score
    lines = [
        f"case {summary.case.case_id} ({'open' if summary.case.open else 'closed'})",
        f"  score {s.score.value if s.score else '-'} "
        f"{s.category.value if s.category else ''}: {s.rule}",
        f"  {s.fields_counted} distinct tumour fields of {s.fields_total}, "
        f"{s.tumour_cells} tumour cells",
        f"  control {summary.control_status}; {summary.calibration.describe()}",
    ]
    lines += [f"  heterogeneity: {h}" for h in s.heterogeneity]
    lines += [f"  borderline: {b}" for b in s.borderline]
    lines += [f"  warning: {w}" for w in summary.warnings]
    return "\n".join(lines)


def _hep2_summary_text(summary: Hep2CaseSummary) -> str:
    w = summary.well
    lines = [
        f"case {summary.case.case_id} ({'open' if summary.case.open else 'closed'}, HEp-2"
        + (f", slide {summary.case.slide})" if summary.case.slide else ")"),
        f"  call: {summary.call}"
        + (f" ({w.intensity_units:.0f} units)" if w is not None and w.scored and w.positive
           else ""),
    ]
    if w is not None:
        lines += [f"    {p.icap} {p.label}: {p.share:.0%} of cells, {p.evidence}"
                  for p in w.patterns if w.positive]
        lines.append(f"  {len(summary.counted)} fields pooled, {w.cells_interphase} interphase "
                     f"and {w.cells_mitotic} mitotic cells")
    else:
        lines.append(f"  {summary.reason}")
    lines += [f"  titre {t.icap} {t.words()} ({t.why})" for t in summary.titres]
    for dw in summary.wells:
        call = dw.well
        read = call_in_words(call.positive if call is not None and call.scored else None,
                             [p.icap for p in call.patterns] if call is not None else [])
        n = len(dw.counted)
        lines.append(f"    1:{dw.dilution} well: {read} ({n} field{'' if n == 1 else 's'})")
    lines.append(f"  kit controls {summary.control_status}")
    lines += [f"    {c.expected}: {'valid' if c.valid else 'FAILED'} at {c.decided_at}"
              + ("" if c.case_id in ("", summary.case.case_id) else f" in case {c.case_id}")
              for c in summary.checks]
    lines += [f"  warning: {x}" for x in summary.warnings]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    """`appliance report CASE_ID`: the PDF and HTML report of a case."""
    with ResultStore(cfg.store.path) as store:
        cases = _workflow(cfg, store)
        try:
            case_id = _resolve(cases, args.case_id)
            summary = cases.summary(case_id, thumbnails=True)
        except CaseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        device = contract.device_id_for(cfg.mqtt, socket.gethostname())
        if isinstance(summary, Hep2CaseSummary):
            paths = write_hep2_case_report(summary, args.out, device_id=device,
                                           config_sha256=cfg.sha256())
        else:
            paths = write_case_report(summary, args.out, device_id=device,
                                      config_sha256=cfg.sha256())
        cases.record_command("report", "written", source=SOURCE, case_id=case_id,
                             detail={"files": [p.name for p in paths]})
    for p in paths:
        print(p)
    return 0


def cmd_audit(args: argparse.Namespace, cfg: Config) -> int:
    """`appliance audit export|verify`."""
    with ResultStore(cfg.store.path) as store:
        log = AuditLog(store)
        if args.audit_command == "verify":
            problems = log.verify()
            for p in problems:
                print(p)
            print("audit trail intact" if not problems else f"{len(problems)} problem(s)")
            return 0 if not problems else 1
        case = args.case
        count = log.export(args.out if args.out else sys.stdout, case_id=case)
        print(f"{count} audit entries", file=sys.stderr)
    return 0
