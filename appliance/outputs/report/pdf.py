"""A minimal PDF 1.4 writer: pages, Helvetica text, rectangles, lines, JPEG pictures.

Only what the case report needs, written with the standard library so the appliance
carries no PDF dependency. Text uses the standard Type 1 fonts Helvetica and
Helvetica-Bold with WinAnsiEncoding, which every PDF reader has built in, so no font
is embedded; characters WinAnsi cannot show are replaced visibly (``≥`` -> ``>=``,
anything else -> ``?``) rather than dropped. Pictures are JPEG passed through as
``/DCTDecode`` image XObjects. Coordinates are PDF points from the bottom-left corner.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

# A4 portrait in points (210 x 297 mm at 72 pt per inch).
A4_WIDTH = 595.28
A4_HEIGHT = 841.89

Colour = tuple[float, float, float]
BLACK: Colour = (0.0, 0.0, 0.0)

FONT_REGULAR = "F1"
FONT_BOLD = "F2"
_BASE_FONTS = {FONT_REGULAR: "Helvetica", FONT_BOLD: "Helvetica-Bold"}


class PdfError(ValueError):
    """A drawing request the writer cannot turn into a valid PDF (named reason)."""


# Advance widths (1/1000 em) of WinAnsi codes 32..255, from Adobe's core-14 font metrics
# (Helvetica.afm / Helvetica-Bold.afm, as shipped in matplotlib's mpl-data/fonts/afm);
# 0 marks the five codes WinAnsi leaves undefined and DEL, which are never written.
_HELVETICA: tuple[int, ...] = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  # 32..47
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,  # 48..63
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,  # 64..79
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,  # 80..95
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,  # 96..111
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 0,  # 112..127
    556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0,  # 128..143
    0, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667,  # 144..159
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333,  # 160..175
    400, 584, 333, 333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611,  # 176..191
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278,  # 192..207
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611,  # 208..223
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278,  # 224..239
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500,  # 240..255
)
_HELVETICA_BOLD: tuple[int, ...] = (
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,  # 32..47
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,  # 48..63
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,  # 64..79
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,  # 80..95
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,  # 96..111
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584, 0,  # 112..127
    556, 0, 278, 556, 500, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0,  # 128..143
    0, 278, 278, 500, 500, 350, 556, 1000, 333, 1000, 556, 333, 944, 0, 500, 667,  # 144..159
    278, 333, 556, 556, 556, 556, 280, 556, 333, 737, 370, 556, 584, 333, 737, 333,  # 160..175
    400, 584, 333, 333, 333, 611, 556, 278, 333, 333, 365, 556, 834, 834, 834, 611,  # 176..191
    722, 722, 722, 722, 722, 722, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278,  # 192..207
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611,  # 208..223
    556, 556, 556, 556, 556, 556, 889, 556, 556, 556, 556, 556, 278, 278, 278, 278,  # 224..239
    611, 611, 611, 611, 611, 611, 611, 584, 611, 611, 611, 611, 611, 556, 611, 556,  # 240..255
)

_WIDTHS = {FONT_REGULAR: _HELVETICA, FONT_BOLD: _HELVETICA_BOLD}

# Characters outside WinAnsi that have a readable ASCII spelling.
_REPLACEMENTS = {
    "≥": ">=", "≤": "<=", "≠": "!=", "≈": "~", "→": "->", "←": "<-", "↑": "^", "↓": "v",
    "−": "-", "‐": "-", "‑": "-", "μ": "µ", "✓": "yes", "✔": "yes", "✗": "no", "✘": "no",
    "\t": " ", "\r": " ", "\n": " ",
}


def to_winansi(text: str) -> str:
    """``text`` with every character Helvetica/WinAnsi cannot show replaced visibly.

    Known symbols get an ASCII spelling (``≥`` -> ``>=``); other unprintable
    characters become ``?`` so a reader sees something was there.
    """
    out: list[str] = []
    for ch in text:
        if ch in _REPLACEMENTS:
            out.append(_REPLACEMENTS[ch])
        elif _printable_winansi(ch):
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _printable_winansi(ch: str) -> bool:
    """Whether ``ch`` has a WinAnsi code with a glyph (control characters have none)."""
    try:
        code = ch.encode("cp1252")[0]
    except UnicodeEncodeError:
        return False
    return code >= 32 and _HELVETICA[code - 32] > 0


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width in points of ``text`` (after :func:`to_winansi`) set in Helvetica at ``size``."""
    widths = _WIDTHS[FONT_BOLD if bold else FONT_REGULAR]
    encoded = to_winansi(text).encode("cp1252")
    return sum(widths[b - 32] for b in encoded) * size / 1000.0


def escape_string(text: str) -> bytes:
    """A PDF literal string ``(...)`` holding ``text`` in WinAnsi.

    ``\\``, ``(`` and ``)`` are backslash-escaped; bytes outside printable ASCII are
    written as octal escapes so the content stream stays 7-bit clean.
    """
    parts = [b"("]
    for byte in to_winansi(text).encode("cp1252"):
        if byte in (0x5C, 0x28, 0x29):
            parts.append(b"\\" + bytes([byte]))
        elif 32 <= byte < 127:
            parts.append(bytes([byte]))
        else:
            parts.append(b"\\%03o" % byte)
    parts.append(b")")
    return b"".join(parts)


@dataclass(frozen=True)
class JpegInfo:
    """What the PDF image dictionary needs from a JPEG's frame header."""

    width: int
    height: int
    components: int


def jpeg_info(data: bytes) -> JpegInfo:
    """Size and colour components from a JPEG's SOF marker; PdfError if it is no JPEG."""
    if data[:2] != b"\xff\xd8":
        raise PdfError("image is not a JPEG (no SOI marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise PdfError(f"JPEG is corrupt: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return JpegInfo(width, height, data[pos + 9])
        pos += 2 + length
    raise PdfError("JPEG is corrupt: no frame header (SOF) found")


def _num(value: float) -> bytes:
    """A PDF number: at most 3 decimals, no exponent, no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").encode("ascii")


def _colour(colour: Colour, op: bytes) -> bytes:
    """A ``rg`` / ``RG`` colour operator, checking the components are 0..1."""
    if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
        raise PdfError(f"colour {colour!r} is not three components in 0..1")
    return b" ".join(_num(c) for c in colour) + b" " + op


@dataclass
class PdfPage:
    """One page's content stream and the pictures it uses."""

    width: float
    height: float
    _ops: list[bytes] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def text(self, x: float, y: float, text: str, *, size: float = 10.0, bold: bool = False,
             colour: Colour = BLACK) -> None:
        """Draw one line of text with its baseline starting at (x, y)."""
        if size <= 0:
            raise PdfError(f"font size {size} is not positive")
        font = FONT_BOLD if bold else FONT_REGULAR
        self._ops.append(
            b"q " + _colour(colour, b"rg") + b" BT /" + font.encode() + b" " + _num(size)
            + b" Tf " + _num(x) + b" " + _num(y) + b" Td " + escape_string(text) + b" Tj ET Q"
        )

    def rect(self, x: float, y: float, w: float, h: float, *, fill: Colour | None = None,
             stroke: Colour | None = None, line_width: float = 0.5) -> None:
        """Draw a rectangle with lower-left corner (x, y), filled and/or outlined."""
        if fill is None and stroke is None:
            raise PdfError("rectangle with neither fill nor stroke draws nothing")
        ops = [b"q", _num(line_width), b"w"]
        if fill is not None:
            ops.append(_colour(fill, b"rg"))
        if stroke is not None:
            ops.append(_colour(stroke, b"RG"))
        paint = (b"B" if stroke is not None else b"f") if fill is not None else b"S"
        ops += [_num(x), _num(y), _num(w), _num(h), b"re", paint, b"Q"]
        self._ops.append(b" ".join(ops))

    def line(self, x1: float, y1: float, x2: float, y2: float, *, colour: Colour = BLACK,
             width: float = 0.5) -> None:
        """Draw a straight line from (x1, y1) to (x2, y2)."""
        self._ops.append(
            b"q " + _num(width) + b" w " + _colour(colour, b"RG") + b" " + _num(x1) + b" "
            + _num(y1) + b" m " + _num(x2) + b" " + _num(y2) + b" l S Q"
        )

    def image(self, name: str, x: float, y: float, w: float, h: float) -> None:
        """Paint the picture ``name`` (from :meth:`PdfWriter.add_jpeg`) into a box."""
        if w <= 0 or h <= 0:
            raise PdfError(f"image box {w} x {h} is empty")
        if name not in self.images:
            self.images.append(name)
        self._ops.append(
            b"q " + _num(w) + b" 0 0 " + _num(h) + b" " + _num(x) + b" " + _num(y)
            + b" cm /" + name.encode("ascii") + b" Do Q"
        )

    def content(self) -> bytes:
        """The page's uncompressed content stream."""
        return b"\n".join(self._ops) + b"\n"


@dataclass
class _Image:
    data: bytes
    info: JpegInfo


class PdfWriter:
    """Collects pages and pictures, then serialises a PDF 1.4 file with :meth:`to_bytes`."""

    def __init__(self, *, title: str = "", producer: str = "Eyepiece") -> None:
        self.title = title
        self.producer = producer
        self.pages: list[PdfPage] = []
        self._images: dict[str, _Image] = {}

    def add_page(self, width: float = A4_WIDTH, height: float = A4_HEIGHT) -> PdfPage:
        """Append an empty page (A4 portrait by default) and return it for drawing."""
        page = PdfPage(width, height)
        self.pages.append(page)
        return page

    def add_jpeg(self, data: bytes) -> str:
        """Register a JPEG picture once; returns the name pages draw it by."""
        info = jpeg_info(data)
        if info.components not in (1, 3):
            raise PdfError(f"JPEG has {info.components} colour components; only grey or RGB")
        name = f"Im{len(self._images) + 1}"
        self._images[name] = _Image(data, info)
        return name

    def to_bytes(self) -> bytes:
        """The whole document: header, numbered objects, cross-reference table, trailer."""
        if not self.pages:
            raise PdfError("a PDF needs at least one page")
        objects = self._objects()
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets: list[int] = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
        xref_at = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        for offset in offsets:
            out += b"%010d 00000 n \n" % offset
        info_number = len(objects)  # the info dictionary is written last
        out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
            len(objects) + 1, info_number, xref_at)
        return bytes(out)

    def _objects(self) -> list[bytes]:
        """Object bodies in number order: catalog, page tree, fonts, images, pages, info."""
        fonts_at = 3
        image_numbers = {name: fonts_at + len(_BASE_FONTS) + i
                         for i, name in enumerate(self._images)}
        first_page = fonts_at + len(_BASE_FONTS) + len(self._images)
        page_numbers = [first_page + 2 * i for i in range(len(self.pages))]
        kids = b" ".join(b"%d 0 R" % n for n in page_numbers)
        objects = [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(self.pages),
        ]
        for base in _BASE_FONTS.values():
            objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /" + base.encode()
                           + b" /Encoding /WinAnsiEncoding >>")
        for image in self._images.values():
            objects.append(_image_object(image))
        for page, number in zip(self.pages, page_numbers, strict=True):
            objects += _page_objects(page, number, image_numbers)
        objects.append(b"<< /Title " + escape_string(self.title) + b" /Producer "
                       + escape_string(self.producer) + b" >>")
        return objects


def _image_object(image: _Image) -> bytes:
    """A ``/DCTDecode`` image XObject carrying the JPEG bytes unchanged."""
    space = b"/DeviceGray" if image.info.components == 1 else b"/DeviceRGB"
    return (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace " % (
        image.info.width, image.info.height) + space
        + b" /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n" % len(image.data)
        + image.data + b"\nendstream")


def _page_objects(page: PdfPage, number: int, image_numbers: dict[str, int]) -> list[bytes]:
    """The page dictionary (object ``number``) and its compressed content stream."""
    fonts = b" ".join(b"/" + key.encode() + b" %d 0 R" % (3 + i)
                      for i, key in enumerate(_BASE_FONTS))
    xobjects = b" ".join(b"/" + name.encode() + b" %d 0 R" % image_numbers[name]
                         for name in page.images)
    resources = b"<< /Font << " + fonts + b" >>"
    if xobjects:
        resources += b" /XObject << " + xobjects + b" >>"
    resources += b" >>"
    page_dict = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 " + _num(page.width) + b" "
                 + _num(page.height) + b"] /Resources " + resources
                 + b" /Contents %d 0 R >>" % (number + 1))
    stream = zlib.compress(page.content())
    content = (b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream
               + b"\nendstream")
    return [page_dict, content]
