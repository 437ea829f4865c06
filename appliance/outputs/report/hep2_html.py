"""The HEp-2 case report as one self-contained HTML page, and writing both report files.

Same facts as the PDF, nothing left out; pictures inlined as ``data:`` URIs; every value
from the store escaped (source names come from outside).
"""

from __future__ import annotations

from pathlib import Path

from appliance.outputs.report.hep2_layout import (
    COLUMNS,
    CONTROL_STYLES,
    TITLE,
    call_words,
    render_hep2_pdf,
)
from appliance.outputs.report.html import (
    check_stem,
    escape,
    item_list,
    picture,
    write_documents,
)
from appliance.outputs.report.model import Hep2CaseReportData, Hep2ReportField

_e = escape

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px;margin:0} .muted{color:#666;font-size:12px}
.open{background:#c62121;color:#fff;font-weight:bold;padding:2px 8px}
.boxes{display:flex;gap:12px;margin:12px 0} .box{border:1px solid #bbb;padding:8px;flex:1}
.badge{display:inline-block;min-width:56px;text-align:center;font-size:28px;font-weight:bold;
 color:#fff;padding:8px;background:#6b7380} .pos{background:#2e6bb8}
.valid{border-color:#218a45}.valid h2{background:#218a45}
.failed{border-color:#c62121}.failed h2{background:#c62121}
.incomplete,.not_checked{border-color:#ed9e0d}
.incomplete h2,.not_checked h2{background:#ed9e0d;color:#000}
.box h2{color:#fff;margin:-8px -8px 8px;padding:4px 8px;font-size:16px}
table{border-collapse:collapse;width:100%;font-size:12px}
td,th{border:1px solid #bbb;padding:3px;vertical-align:top;text-align:left}
tr.uncounted{background:#eef0f2} .bad{color:#c62121} img{height:60px}
"""


def _call_box(data: Hep2CaseReportData) -> str:
    word, headline = call_words(data)
    css = "badge pos" if data.positive else "badge"
    patterns = "".join(f"<li>{_e(p.icap)} {_e(p.label)}: {p.share:.0%} of cells "
                       f"({_e(p.evidence)})</li>" for p in data.patterns) if data.positive else ""
    reason = (f'<p class="bad">{_e(data.reason)}</p>' if data.reason and data.positive is None
              else "")
    intensity = f"<p>Intensity {_e(data.intensity)}</p>" if data.intensity else ""
    intensity += "".join(f"<p><b>Titre {_e(t)}</b></p>" for t in data.titres)
    intensity += item_list(data.wells) if data.wells else ""
    return (f'<div class="box"><div class="muted">Well call (its fields pooled, each counted '
            f'once)</div><span class="{css}">{_e(word)}</span> <b>{_e(headline)}</b>'
            f"<ul>{patterns}</ul>{reason}{intensity}<p>{data.fields_counted} of "
            f"{data.fields_total} patient fields counted, {_e(data.cells)}</p></div>")


def _control_box(data: Hep2CaseReportData) -> str:
    title = CONTROL_STYLES[data.control_status][1]
    checks = "".join(
        f"<li><b{'' if c.valid else ' class=bad'}>{_e(c.title())}</b> "
        f"<span class=muted>{_e(c.decided_at)}</span>"
        f"{item_list(c.reasons)}</li>" for c in data.checks)
    slide = (f"<p class=muted>slide {_e(data.slide)}: its wells share the kit controls</p>"
             if data.slide else "")
    body = (slide + f"<ul>{checks}</ul>" if checks
            else f"<p><b>{_e(data.no_check_words())}</b></p>")
    return f'<div class="box {_e(data.control_status)}"><h2>{_e(title)}</h2>{body}</div>'


def _row(row: Hep2ReportField) -> str:
    css = "" if row.counted else ' class="uncounted"'
    cells = (f"<b>{row.index}</b>", picture(row.index, row.thumbnail_jpeg),
             f"<b>{_e(row.role)}</b><br>{_e(row.created_at)}<br>{_e(row.source)}",
             f"<b>{_e(row.call)}</b>", _e(row.intensity or "-"), str(row.cells),
             "yes" if row.counted else "<b>no</b>", _e(row.note))
    return f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_hep2_html(data: Hep2CaseReportData) -> str:
    """The HEp-2 case report as a self-contained HTML document."""
    closed = ('<span class="open">OPEN</span> case still open' if data.closed_at is None
              else _e(data.closed_at))
    head = "".join(f"<th>{_e(c.title)}</th>" for c in COLUMNS)
    body = "".join(_row(r) for r in data.fields) or (
        f'<tr><td colspan="{len(COLUMNS)}">No fields recorded in this case.</td></tr>')
    models = "".join(f"<li>{_e(m.name)} ({_e(m.precision)}) &middot; sha256 "
                     f"<code>{_e(m.sha256[:16])}</code> &middot; validated on "
                     f"{_e(m.validated_on)}</li>" for m in data.models)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(TITLE)} {_e(data.case_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(TITLE)}</h1><p><b>Case {_e(data.case_id)}</b></p>"
        f'<p class="muted">Opened {_e(data.opened_at)} &middot; Closed {closed} &middot; '
        f"Device {_e(data.device_id)} &middot; Software {_e(data.software_version)}</p>"
        f'<div class="boxes">{_call_box(data)}{_control_box(data)}</div>'
        f'<div class="box"><b>Warnings</b>{item_list(data.warnings)}</div>'
        f"<h3>Models and configuration</h3><ul>{models or '<li>no model recorded</li>'}</ul>"
        f"<p>config sha256 <code>{_e(data.config_sha256)}</code></p>"
        f"<h3>Fields</h3><table><tr>{head}</tr>{body}</table>"
        f'<hr><p class="muted">{_e(data.research_use)}</p>'
        f'<p class="muted">Generated {_e(data.generated_at)}</p></body></html>\n'
    )


def write_hep2_report(data: Hep2CaseReportData, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.pdf`` and ``<stem>.html`` (both rendered before either is written)."""
    check_stem(stem)
    return write_documents(out_dir, stem, render_hep2_pdf(data), render_hep2_html(data))
