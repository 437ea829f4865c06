"""The case report: the PDF parses strictly and carries the facts, the HTML too."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pypdf
import pytest

from appliance.outputs.report import (
    CaseReportData,
    ReportControl,
    ReportField,
    ReportModel,
    render_html,
    render_pdf,
    write_report,
)
from appliance.outputs.report.hep2_html import render_hep2_html
from appliance.outputs.report.hep2_layout import render_hep2_pdf
from appliance.outputs.report.layout import paginate, wrap_text
from appliance.outputs.report.model import (
    Hep2CaseReportData,
    Hep2ReportCheck,
    Hep2ReportField,
    Hep2ReportPattern,
)
from appliance.outputs.report.pdf import (
    PdfError,
    PdfWriter,
    escape_string,
    jpeg_info,
    text_width,
    to_winansi,
)

MODEL_SHA = "0123456789abcdef" + "f" * 48


def _thumbnail(width: int, height: int, seed: int) -> bytes:
    """An overlay-like picture: pink tissue with brown rings, as JPEG."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (225, 205, 235), np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(image, (x, y), 9, (40, 70, 140), 2)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def _field(index: int, *, source: str | None = None, thumb: bytes | None = b"",
           note: str = "") -> ReportField:
    picture = _thumbnail(320, 240, index) if thumb == b"" else thumb
    return ReportField(
        index=index, role="control" if index == 1 else "tumour",
        created_at=f"2026-03-01T10:{index % 60:02d}:00Z", source=source or f"field_{index:03d}.png",
        status="not_scorable" if index == 3 else "scored",
        score=None if index == 3 else ("3+" if index == 4 else "1+"),
        category=None if index == 3 else ("positive" if index == 4 else "HER2-low"),
        tumour_cells=100 + index, percent_complete_intense=2.5 * (index % 4),
        percent_complete=10.0 + index % 7, percent_stained=40.0 + index % 9,
        counted=index != 5, note=note or ("duplicate of field 2" if index == 5 else ""),
        thumbnail_jpeg=picture,
    )


def _case(n_fields: int = 4, **changes: object) -> CaseReportData:
    control = ReportControl(
        status="valid", expected="3+", measured_score="3+", measured_od=0.512,
        reference_od=0.6, ratio=0.853, cells=420, fields=2,
        reasons=("complete intense staining in 86% of control cells (>= 50% required)",),
        calibration="thresholds x0.85 (0.170 / 0.340 / 0.510 OD)",
    )
    data = CaseReportData(
        case_id="C-2026-0042", opened_at="2026-03-01T10:00:00Z",
        closed_at="2026-03-01T10:45:00Z", device_id="eyepiece-07", software_version="0.9.1",
        config_sha256="c0ffee" * 10 + "abcd",
        models=(ReportModel("her2-membrane-seg", "fp16", MODEL_SHA, "BCI test set 2022"),),
        score="1+", category="HER2-low", rule="faint incomplete staining in >10% of cells (1+)",
        fields_counted=n_fields - 1, fields_total=n_fields, tumour_cells=1234,
        percent={"none": 50.0, "incomplete_faint": 38.0, "incomplete_moderate_intense": 2.0,
                 "complete_weak_moderate": 6.0, "complete_intense": 4.0},
        control=control,
        heterogeneity=("field 4 scores 3+ (case 1+): 104 cells",),
        borderline=("complete staining 11.2% is within 3 points of 10%",),
        warnings=(),
        fields=tuple(_field(i) for i in range(1, n_fields + 1)),
        research_use="Research use only: model validated on the BCI test set (breast, 20x).",
        generated_at="2026-03-01T11:00:00Z",
    )
    return replace(data, **changes)  # type: ignore[arg-type]


def _read(pdf: bytes) -> pypdf.PdfReader:
    return pypdf.PdfReader(io.BytesIO(pdf), strict=True)


def _text(reader: pypdf.PdfReader) -> list[str]:
    """Each page's text with runs of whitespace (line breaks from wrapping) as one space."""
    return [" ".join(page.extract_text().split()) for page in reader.pages]


# --- the writer ---------------------------------------------------------------------------

def test_escape_string_escapes_delimiters_and_replaces_unknown_characters() -> None:
    assert escape_string("a(b)c\\d") == b"(a\\(b\\)c\\\\d)"
    assert escape_string("5 µm") == b"(5 \\265m)"  # µ is WinAnsi 0xB5, written in octal
    assert to_winansi("≥ 10% → 3+ 日") == ">= 10% -> 3+ ?"


def test_text_width_uses_helvetica_metrics() -> None:
    # AFM: "i" is 222 and "W" 944 units in Helvetica; Helvetica-Bold's "i" is 278.
    assert text_width("i", 10) == pytest.approx(2.22)
    assert text_width("W", 10) == pytest.approx(9.44)
    assert text_width("i", 10, bold=True) == pytest.approx(2.78)
    assert text_width("≥", 10) == pytest.approx(text_width(">=", 10))


def test_width_table_matches_adobe_afm_for_ascii() -> None:
    afm_dir = Path(matplotlib.get_data_path()) / "fonts" / "afm"
    for afm, bold in (("phvr8a.afm", False), ("phvb8a.afm", True)):
        widths = {}
        for line in (afm_dir / afm).read_text(encoding="latin-1").splitlines():
            match = re.match(r"C (\d+) ; WX (\d+) ;", line)
            if match and 33 <= int(match.group(1)) <= 126 and int(match.group(1)) not in (39, 96):
                widths[chr(int(match.group(1)))] = int(match.group(2))
        assert len(widths) > 90
        for ch, width in widths.items():
            assert text_width(ch, 1000, bold=bold) == pytest.approx(width), (afm, ch)


def test_writer_xref_offsets_point_at_objects() -> None:
    writer = PdfWriter(title="t")
    page = writer.add_page()
    page.text(72, 700, "hello")
    page.rect(72, 600, 50, 20, fill=(1, 0, 0))
    page.line(72, 590, 200, 590)
    pdf = writer.to_bytes()
    xref_at = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert pdf[xref_at:xref_at + 4] == b"xref"
    entries = pdf[xref_at:].split(b"\n")[3:]
    count = int(pdf[xref_at:].split(b"\n")[1].split()[1])
    for number, entry in enumerate(entries[:count - 1], start=1):
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj" % number)
    assert _text(_read(pdf)) == ["hello"]


def test_writer_refuses_bad_input() -> None:
    with pytest.raises(PdfError, match="at least one page"):
        PdfWriter().to_bytes()
    with pytest.raises(PdfError, match="not a JPEG"):
        PdfWriter().add_jpeg(b"\x89PNG....")
    with pytest.raises(PdfError, match="colour"):
        PdfWriter().add_page().text(0, 0, "x", colour=(2.0, 0.0, 0.0))
    assert jpeg_info(_thumbnail(64, 48, 1)).width == 64


# --- the report -----------------------------------------------------------------------------

def test_page_one_carries_the_facts_and_a_picture() -> None:
    data = _case(5)
    reader = _read(render_pdf(data))
    assert len(reader.pages) == 1
    text = _text(reader)[0]
    for fact in ("HER2 IHC case report", "C-2026-0042", "1+", "HER2-low", "Control VALID",
                 "0123456789abcdef", "thresholds x0.85", "eyepiece-07", "0.9.1",
                 "BCI test set 2022", "Research use only", "page 1 of 1",
                 "complete staining 11.2% is within 3 points of 10%", "duplicate of field 2"):
        assert fact in text, fact
    assert "OPEN" not in text
    assert "0123456789abcdeff" not in text  # only the first 16 hex of the model's sha256
    images = reader.pages[0].images
    assert len(images) == 5  # control + 4 tumour fields, each with its thumbnail
    picture = images[0].image
    assert picture is not None and picture.size == (320, 240)


def test_control_status_colour_words_and_not_scorable_case() -> None:
    failed = replace(_case(2).control, status="failed", reasons=("control OD ratio 0.41 < 0.7",))
    text = _text(_read(render_pdf(_case(2, control=failed, score=None, category=None))))[0]
    assert "Control FAILED" in text and "ratio 0.41 < 0.7" in text
    assert "not scorable" in text
    unchecked = replace(_case(2).control, status="not_checked")
    text = _text(_read(render_pdf(_case(2, control=unchecked))))[0]
    assert "Control NOT CHECKED" in text


def test_open_case_says_open() -> None:
    text = _text(_read(render_pdf(_case(2, closed_at=None))))[0]
    assert "OPEN" in text


def test_forty_fields_continue_on_more_pages_each_field_once() -> None:
    data = _case(40)
    reader = _read(render_pdf(data))
    pages = _text(reader)
    n = len(pages)
    assert n >= 3
    for i, text in enumerate(pages, start=1):
        assert f"page {i} of {n}" in text
        assert "C-2026-0042" in text  # the short header repeats the case id
    sources = re.findall(r"field_(\d{3})\.png", "\n".join(pages))
    assert sorted(int(s) for s in sources) == list(range(1, 41))
    assert sum(len(page.images) for page in reader.pages) == 40
    for page in reader.pages:  # no picture reaches into the footer (rule ~ 60 pt up)
        content = page.get_contents().get_data().decode("latin-1")  # type: ignore[union-attr]
        lowest = min(float(y) for y in re.findall(r" [\d.]+ ([\d.]+) cm /Im", content))
        assert lowest > 36 + 8.6 + 12 + 3


def test_escaped_source_names_come_back_verbatim() -> None:
    source = r"slide(A)\f1≥5µm.png"
    data = _case(2, fields=(_field(1), _field(2, source=source)))
    text = _text(_read(render_pdf(data)))[0]
    assert r"slide(A)\f1>=5µm.png" in text.replace(" ", "")


def test_long_text_wraps_inside_the_page() -> None:
    note = "needs a second look " * 30
    data = _case(2, rule="x" * 400, fields=(_field(1), _field(2, note=note + "y" * 300)))
    page = _read(render_pdf(data)).pages[0]
    runs = _text_runs(page.get_contents().get_data().decode("latin-1"))  # type: ignore[union-attr]
    assert len(runs) > 40
    for bold, size, x, text in runs:
        right = x + text_width(text, size, bold=bold)
        assert right <= 595.28 - 36 + 0.5, (text, right)
    assert all(text_width(line, 10) <= 100 for line in wrap_text("y" * 1000, 100, 10))


def _text_runs(content: str) -> list[tuple[bool, float, float, str]]:
    """(bold, size, x, text) of every text run in an uncompressed content stream."""
    runs = re.findall(r"/F(\d) ([\d.]+) Tf ([\d.]+) [\d.-]+ Td \(((?:[^\\)]|\\.)*)\) Tj",
                      content)
    return [(font == "2", float(size), float(x), _unescape(text))
            for font, size, x, text in runs]


def _unescape(text: str) -> str:
    """Undo the PDF string escapes (octal and backslash) and decode WinAnsi."""
    raw = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
    raw = re.sub(r"\\(.)", r"\1", raw)
    return raw.encode("latin-1").decode("cp1252")


def test_paginate_moves_rows_that_do_not_fit() -> None:
    assert paginate([10, 10, 10], 25, 100) == [[0, 1], [2]]
    assert paginate([30], 25, 100) == [[], [0]]
    assert paginate([500, 10], 25, 100) == [[], [0], [1]]  # a huge row gets its own page
    assert paginate([], 25, 100) == [[]]


def test_unreadable_or_missing_picture_is_said_in_words() -> None:
    fields = (_field(1, thumb=None), _field(2, thumb=b"\xff\xd8garbage"))
    reader = _read(render_pdf(_case(2, fields=fields)))
    text = _text(reader)[0]
    assert "no picture" in text and "picture unreadable" in text
    assert len(reader.pages[0].images) == 0


def test_wide_picture_is_shrunk_to_320_px() -> None:
    reader = _read(render_pdf(_case(2, fields=(_field(1, thumb=_thumbnail(640, 480, 3)),))))
    picture = reader.pages[0].images[0].image
    assert picture is not None and picture.size == (320, 240)


def test_model_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status 'done'"):
        replace(_field(1), status="done")
    with pytest.raises(ValueError, match="control status"):
        replace(_case(1).control, status="ok")


# --- HTML and files --------------------------------------------------------------------------

def test_html_has_the_same_facts_and_escapes_sources() -> None:
    data = _case(3, closed_at=None, fields=(_field(1), _field(2, source="<script>x</script>")))
    page = render_html(data)
    for fact in ("C-2026-0042", "HER2-low", "Control VALID", "0123456789abcdef", "OPEN",
                 "Research use only", "data:image/jpeg;base64,", "&lt;script&gt;"):
        assert fact in page, fact
    assert "<script>" not in page


def test_write_report_writes_both_files(tmp_path: Path) -> None:
    paths = write_report(_case(2), tmp_path / "reports", "C-2026-0042")
    assert [p.name for p in paths] == ["C-2026-0042.pdf", "C-2026-0042.html"]
    assert _read(paths[0].read_bytes()).pages
    assert "C-2026-0042" in paths[1].read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="plain file name"):
        write_report(_case(1), tmp_path, "../x")


# --- the HEp-2 case report ----------------------------------------------------------------

def _hep2_field(index: int) -> Hep2ReportField:
    return Hep2ReportField(
        index=index, role="control" if index == 1 else "patient",
        created_at=f"2026-03-01T10:{index % 60:02d}:00Z", source=f"<camera {index}>",
        status="not_scorable" if index == 3 else "scored",
        call="not scorable" if index == 3 else "positive AC-3 + AC-22",
        intensity="" if index == 3 else "intermediate 120", cells=80 + index,
        counted=index not in (1, 3), note="control round 1" if index == 1 else "",
        thumbnail_jpeg=_thumbnail(320, 240, index))


def _hep2_case(n_fields: int = 4, **changes: object) -> Hep2CaseReportData:
    data = Hep2CaseReportData(
        case_id="W-2026-0007", opened_at="2026-03-01T10:00:00Z",
        closed_at="2026-03-01T10:30:00Z", device_id="eyepiece-07", software_version="0.9.1",
        config_sha256="c0ffee" * 10 + "abcd",
        models=(ReportModel("hep2-cells-v9", "int8", MODEL_SHA, "generated data only"),),
        positive=True,
        patterns=(Hep2ReportPattern("AC-3", "centromere", 0.63, "138 of 218 cells"),
                  Hep2ReportPattern("AC-22", "cytoplasmic polar (Golgi-like)", 0.54,
                                    "118 of 218 cells (mixed pattern)")),
        intensity="intermediate: 130 relative units", cells="251 interphase and 12 mitotic cells",
        fields_counted=n_fields - 2, fields_total=n_fields - 1, reason=None,
        control_status="incomplete",
        checks=(Hep2ReportCheck(1, "AC-1 nuclear homogeneous", True,
                                ("AC-1 nuclear homogeneous as expected, intermediate",),
                                "2026-03-01T10:05:00Z"),),
        warnings=("the kit's negative control was not checked: the call is not validated by it",),
        fields=tuple(_hep2_field(i) for i in range(1, n_fields + 1)),
        research_use="RESEARCH USE ONLY - not for diagnosis.",
        generated_at="2026-03-01T11:00:00Z")
    return replace(data, **changes)  # type: ignore[arg-type]


def test_hep2_report_pdf_carries_the_call_controls_and_fields() -> None:
    reader = _read(render_hep2_pdf(_hep2_case()))
    assert len(reader.pages) == 1
    text = _text(reader)[0]
    for fact in ("HEp-2 IIF (ANA) case report", "Case W-2026-0007", "ANA positive AC-3 + AC-22",
                 "AC-3 centromere: 63% of cells (138 of 218 cells)",
                 "Intensity intermediate: 130 relative units", "KIT CONTROLS INCOMPLETE",
                 "round 1: AC-1 nuclear homogeneous - valid", "negative control was not checked",
                 "hep2-cells-v9", "RESEARCH USE ONLY", "page 1 of 1", "<camera 2>"):
        assert fact in text, fact
    titrated = _text(_read(render_hep2_pdf(_hep2_case(
        titres=("AC-3 centromere: 1:320 (not shown at 1:640)",),
        wells=("1:80 well: positive AC-3 + AC-22, strong 153 (2 fields)",)))))[0]
    assert "Titre AC-3 centromere: 1:320 (not shown at 1:640)" in titrated
    assert "1:80 well: positive AC-3 + AC-22" in titrated
    negative = _text(_read(render_hep2_pdf(_hep2_case(positive=False, patterns=()))))[0]
    assert "NEG" in negative and "ANA negative (AC-0)" in negative
    unread = _text(_read(render_hep2_pdf(_hep2_case(
        positive=None, patterns=(), reason="no field of the well could be scored",
        fields=()))))[0]
    assert "not scorable" in unread and "no field of the well could be scored" in unread
    assert "No fields recorded in this case." in unread


def test_hep2_report_names_the_slides_other_case_that_checked_a_control() -> None:
    shared = Hep2ReportCheck(1, "AC-0 negative", True, ("reads negative as expected",),
                             "2026-03-01T09:40:00Z", case_id="W-2026-0006")
    data = _hep2_case(slide="SL-0412", checks=(shared,), control_status="incomplete")
    text = _text(_read(render_hep2_pdf(data)))[0]
    assert "slide SL-0412: its wells share the kit controls" in text
    assert "round 1: AC-0 negative - valid (in case W-2026-0006, same slide)" in text
    page = render_hep2_html(data)
    assert "(in case W-2026-0006, same slide)" in page and "slide SL-0412" in page
    none = _hep2_case(slide="SL-0412", checks=(), control_status="not_checked")
    assert "no kit control was checked on this slide" in _text(_read(render_hep2_pdf(none)))[0]
    assert "no kit control was checked on this slide" in render_hep2_html(none)


def test_hep2_report_continues_on_more_pages_and_the_html_escapes() -> None:
    reader = _read(render_hep2_pdf(_hep2_case(30)))
    pages = _text(reader)
    assert len(pages) > 1 and f"page {len(pages)} of {len(pages)}" in pages[-1]
    assert all("W-2026-0007" in p for p in pages)
    page = render_hep2_html(_hep2_case())
    assert "&lt;camera 2&gt;" in page and "<camera 2>" not in page
    assert "KIT CONTROLS INCOMPLETE" in page and page.count("<img") == 4
    with pytest.raises(ValueError, match="kit control status"):
        _hep2_case(control_status="checked")
    with pytest.raises(ValueError, match="role"):
        replace(_hep2_field(2), role="tumour")
