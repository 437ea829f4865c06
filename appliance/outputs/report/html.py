"""The case report as one self-contained HTML page, and writing both report files.

Same facts as the PDF, with nothing left out (the PDF caps long flag lists); pictures
are inlined as ``data:`` URIs so the page opens from a USB stick. Every value from the
store goes through :func:`html.escape`, since source names come from outside.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from appliance.files import write_atomic
from appliance.outputs.report.layout import (
    COLUMNS,
    CONTROL_STYLES,
    PERCENT_LABELS,
    TITLE,
    render_pdf,
)
from appliance.outputs.report.model import CaseReportData, ReportControl, ReportField

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px;margin:0} .muted{color:#666;font-size:12px}
.open{background:#c62121;color:#fff;font-weight:bold;padding:2px 8px}
.boxes{display:flex;gap:12px;margin:12px 0} .box{border:1px solid #bbb;padding:8px;flex:1}
.badge{display:inline-block;min-width:56px;text-align:center;font-size:32px;font-weight:bold;
 color:#fff;padding:8px} .small{font-size:12px;min-width:24px;padding:1px 4px}
.s0{background:#6b7887}.s1{background:#2e6bb8}.s2{background:#ed9e0d;color:#000}
.s3{background:#c62121}.sn{background:#6b7380}
.valid{border-color:#218a45}.valid h2{background:#218a45}
.failed{border-color:#c62121}.failed h2{background:#c62121}
.not_checked{border-color:#ed9e0d}.not_checked h2{background:#ed9e0d;color:#000}
.box h2{color:#fff;margin:-8px -8px 8px;padding:4px 8px;font-size:16px}
table{border-collapse:collapse;width:100%;font-size:12px}
td,th{border:1px solid #bbb;padding:3px;vertical-align:top;text-align:left}
tr.uncounted{background:#eef0f2} .differs{color:#c62121} img{height:60px}
"""

_SCORE_CLASS = {"0": "s0", "1+": "s1", "2+": "s2", "3+": "s3"}


def escape(value: object) -> str:
    """HTML-escaped text of any value (quotes too, as some land in attributes)."""
    return html.escape(str(value), quote=True)


_e = escape  # short, as it is on every line


def _badge(score: str | None, *, small: bool = False) -> str:
    css = _SCORE_CLASS.get(score or "", "sn")
    size = " small" if small else ""
    return f'<span class="badge {css}{size}">{_e(score or "not scorable")}</span>'


def item_list(items: tuple[str, ...]) -> str:
    """A bulleted list, or a grey "none"."""
    if not items:
        return '<p class="muted">none</p>'
    return "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _header(data: CaseReportData) -> str:
    closed = ('<span class="open">OPEN</span> case still open' if data.closed_at is None
              else _e(data.closed_at))
    return (f"<h1>{_e(TITLE)}</h1><p><b>Case {_e(data.case_id)}</b></p>"
            f'<p class="muted">Opened {_e(data.opened_at)} &middot; Closed {closed} &middot; '
            f"Device {_e(data.device_id)} &middot; Software {_e(data.software_version)}</p>")


def _score_box(data: CaseReportData) -> str:
    pooled = " &middot; ".join(f"{_e(label)} {data.percent[key]:.1f}%"
                               for key, label in PERCENT_LABELS if key in data.percent)
    return (f'<div class="box"><div class="muted">Case score (pooled over counted fields)</div>'
            f"{_badge(data.score)} <b>{_e(data.category or '')}</b>"
            f"<p>{data.fields_counted} of {data.fields_total} fields counted, "
            f"{data.tumour_cells} tumour cells</p><p>Rule: {_e(data.rule)}</p>"
            f'<p class="muted">{pooled}</p></div>')


def _control_box(control: ReportControl) -> str:
    word = CONTROL_STYLES[control.status][1]
    ratio = _num(control.ratio, ".2f")
    return (f'<div class="box {_e(control.status)}"><h2>Control {_e(word)}</h2>'
            f"<p><b>expected {_e(control.expected or '-')} &middot; measured "
            f"{_e(control.measured_score or '-')}</b></p>"
            f"<p>membrane OD {_num(control.measured_od, '.3f')} (reference "
            f"{_num(control.reference_od, '.3f')}, ratio {ratio})</p>"
            f"<p>{control.cells} cells in {control.fields} fields</p>"
            f"<p>calibration: {_e(control.calibration)}</p>{item_list(control.reasons)}</div>")


def _flags(data: CaseReportData) -> str:
    groups = (("Heterogeneity", data.heterogeneity), ("Borderline", data.borderline),
              ("Warnings", data.warnings))
    return '<div class="boxes">' + "".join(
        f'<div class="box"><b>{title}</b>{item_list(items)}</div>' for title, items in groups
    ) + "</div>"


def picture(index: int, jpeg: bytes | None) -> str:
    """A field's overlay picture inlined as a data: URI."""
    if jpeg is None:
        return '<span class="muted">no picture</span>'
    data = base64.b64encode(jpeg).decode("ascii")
    return f'<img alt="field {index}" src="data:image/jpeg;base64,{data}">'


def _row(row: ReportField) -> str:
    css = "" if row.counted else ' class="uncounted"'
    note_css = ' class="differs"' if "differs" in row.note else ""
    score = _badge(row.score, small=True) if row.status == "scored" else "not scorable"
    cells = (
        f"<b>{row.index}</b>", picture(row.index, row.thumbnail_jpeg),
        f"<b>{_e(row.role)}</b><br>{_e(row.created_at)}<br>{_e(row.source)}",
        f"{score}<br>{_e(row.category or '')}", str(row.tumour_cells),
        f"{row.percent_complete_intense:.1f}", f"{row.percent_complete:.1f}",
        f"{row.percent_stained:.1f}", "yes" if row.counted else "<b>no</b>",
    )
    return (f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td{note_css}>{_e(row.note)}</td></tr>")


def _table(data: CaseReportData) -> str:
    head = "".join(f"<th>{_e(column.title)}</th>" for column in COLUMNS)
    body = "".join(_row(row) for row in data.fields)
    if not data.fields:
        body = '<tr><td colspan="10">No fields recorded in this case.</td></tr>'
    return f"<h3>Fields</h3><table><tr>{head}</tr>{body}</table>"


def _models(data: CaseReportData) -> str:
    rows = "".join(f"<li>{_e(m.name)} ({_e(m.precision)}) &middot; sha256 "
                   f"<code>{_e(m.sha256[:16])}</code> &middot; validated on "
                   f"{_e(m.validated_on)}</li>" for m in data.models)
    return (f"<h3>Models and configuration</h3><ul>{rows or '<li>no model recorded</li>'}"
            f"</ul><p>config sha256 <code>{_e(data.config_sha256)}</code></p>")


def render_html(data: CaseReportData) -> str:
    """The case report as a self-contained HTML document (pictures as data: URIs)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(TITLE)} {_e(data.case_id)}</title><style>{_CSS}</style></head><body>"
        f'{_header(data)}<div class="boxes">{_score_box(data)}{_control_box(data.control)}'
        f"</div>{_flags(data)}{_models(data)}{_table(data)}"
        f'<hr><p class="muted">{_e(data.research_use)}</p>'
        f'<p class="muted">Generated {_e(data.generated_at)}</p></body></html>\n'
    )


def write_report(data: CaseReportData, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.pdf`` and ``<stem>.html`` into ``out_dir`` atomically; returns both paths.

    Both documents are rendered before either file is written, so a rendering error
    leaves no half-updated pair behind.
    """
    check_stem(stem)
    return write_documents(out_dir, stem, render_pdf(data), render_html(data))


def check_stem(stem: str) -> None:
    """ValueError unless ``stem`` is a plain file name."""
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        raise ValueError(f"report file stem {stem!r} is not a plain file name")


def write_documents(out_dir: Path, stem: str, pdf: bytes, page: str) -> list[Path]:
    """Write a rendered report pair atomically; returns the two paths."""
    check_stem(stem)
    paths = [out_dir / f"{stem}.pdf", out_dir / f"{stem}.html"]
    for path, payload in zip(paths, (pdf, page.encode("utf-8")), strict=True):
        write_atomic(path, payload)
    return paths
