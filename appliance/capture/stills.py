"""Decode untrusted still images (files, camera or MQTT snapshots) into 8-bit RGB arrays.

Everything here assumes the bytes are hostile or broken: the size is checked from the
header before any pixel is decoded, the decode is forced in full so truncated data is
caught, and every way Pillow can fail is turned into :class:`ImageRejected` with a
machine-readable ``code`` and one sentence that says what to do. No other exception
escapes for a bad file.

Codes: ``unreadable``, ``empty_file``, ``not_an_image``, ``corrupt_image``,
``unsupported_bit_depth``, ``unsupported_mode``, ``not_colour``, ``too_small``,
``too_large``.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from appliance.config import InputConfig

# Pillow's own decompression-bomb guard warns above MAX_IMAGE_PIXELS and raises above twice
# that, before our check against input.max_megapixels could give a clear reason. Raise it to
# the largest limit a config may set (2000 MP, the key's upper bound), so the configured limit
# decides; the guard stays as a backstop and its error is still mapped to ``too_large``.
_CONFIG_HARD_LIMIT_MP = 2000
Image.MAX_IMAGE_PIXELS = int(_CONFIG_HARD_LIMIT_MP * 1_000_000)

# Modes Pillow converts to RGB without loss of meaning (alpha is dropped, not composited).
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr"})
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
# Raw modes with more than 8 bits per sample; Pillow would silently drop the low byte of a
# 16-bit RGB PNG or TIFF (it reports mode "RGB"), so the tile's raw mode is what tells.
_DEEP_RAWMODE = re.compile(r"^(?:RGBA?|RGBX|CMYK|LA?|I|F)(?:;.*)?(?:16|32|64)")
_DEEP_MODE = re.compile(r"^(?:I|F)(?:;.*)?$")

# File signatures of formats Pillow reads: used to tell "damaged image" from "not an image".
_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"GIF87a",
    b"GIF89a",
    b"BM",
)
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_EXPORT_HINT = "export as 8-bit RGB (PNG, TIFF or JPEG)"


class ImageRejected(Exception):
    """A still image the appliance refuses, with a machine-readable code and a reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def load_still(path: str | Path, cfg: InputConfig, *, grey_ok: bool = False) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array, or raise ImageRejected.

    ``grey_ok``: a grey-scale image is accepted and copied into the three channels (a
    monochrome fluorescence camera); otherwise it is refused (HER2 needs colour).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImageRejected("unreadable", f"{p} is not a regular file")
        if size == 0:
            raise ImageRejected("empty_file", f"{p} is empty (0 bytes)")
        with p.open("rb") as fp:
            return _decode(fp, cfg, str(p), grey_ok)
    except ImageRejected:
        raise
    except OSError as exc:
        # Only file-system errors reach here: _decode maps every decoder error itself.
        raise ImageRejected(
            "unreadable", f"cannot read {p}: {exc.strerror or exc}"
        ) from exc


def decode_image_bytes(data: bytes, cfg: InputConfig) -> np.ndarray:
    """Decode an encoded image held in memory (camera or MQTT snapshot) like load_still."""
    if not data:
        raise ImageRejected("empty_file", "the image data is empty (0 bytes)")
    return _decode(io.BytesIO(data), cfg, "the image data")


# ---------------------------------------------------------------- core


def _decode(fp: IO[bytes], cfg: InputConfig, name: str, grey_ok: bool = False) -> np.ndarray:
    """Open lazily, check the header, then force the full decode and convert to RGB."""
    # A truncated file must be refused, never padded with grey: keep Pillow strict even if
    # some other code in the process relaxed it.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    head = fp.read(16)
    fp.seek(0)
    try:
        im = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning only escapes as an exception when warnings are made errors (-W error).
        raise _too_large_unknown(name, cfg, exc) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(fp, head, name) from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageRejected(
            "corrupt_image", f"{name} has a damaged header ({_short(exc)}); {_EXPORT_HINT}"
        ) from exc
    except Exception as exc:  # any other plugin error on hostile data, named not hidden
        raise ImageRejected(
            "corrupt_image",
            f"{name} could not be opened ({type(exc).__name__}: {_short(exc)})",
        ) from exc
    with im:
        try:
            _check_header(im, cfg, name, grey_ok)
            _force_load(im, name)
            return _to_rgb(im, name)
        except ImageRejected:
            raise
        except Exception as exc:
            # Pillow's plugins raise many kinds on hostile data; none may escape as a
            # traceback, but the reason still names what happened.
            raise ImageRejected(
                "corrupt_image",
                f"{name} could not be decoded ({type(exc).__name__}: {_short(exc)})",
            ) from exc


def _check_header(im: ImageFile.ImageFile, cfg: InputConfig, name: str,
                  grey_ok: bool = False) -> None:
    """Refuse on what the header says (size, bit depth, colour) before decoding pixels."""
    width, height = im.size
    megapixels = width * height / 1e6
    if megapixels > cfg.max_megapixels:
        raise ImageRejected(
            "too_large",
            f"{name} is {width}x{height} = {megapixels:.1f} megapixels, above the limit of "
            f"{cfg.max_megapixels:g} megapixels (config key input.max_megapixels)",
        )
    if min(width, height) < cfg.min_side_px:
        raise ImageRejected(
            "too_small",
            f"{name} is {width}x{height} pixels; each side must be at least "
            f"{cfg.min_side_px} pixels (config key input.min_side_px)",
        )
    if _is_deep(im):
        raise ImageRejected(
            "unsupported_bit_depth",
            f"{name} has more than 8 bits per sample or floating-point samples "
            f"(mode {im.mode}); {_EXPORT_HINT}",
        )
    if im.mode in _GREY_MODES and not grey_ok:
        raise ImageRejected(
            "not_colour",
            f"{name} is a grey-scale or 1-bit image (mode {im.mode}); HER2 scoring needs a "
            "colour brightfield image of the H-DAB stain",
        )
    if im.mode not in _COLOUR_MODES and not (grey_ok and im.mode in _GREY_MODES):
        raise ImageRejected(
            "unsupported_mode",
            f"{name} uses the colour mode {im.mode}, which cannot be read as RGB; "
            f"{_EXPORT_HINT}",
        )


def _is_deep(im: ImageFile.ImageFile) -> bool:
    """True when samples have more than 8 bits (16-bit, 32-bit integer or float)."""
    if _DEEP_MODE.match(im.mode):
        return True
    for tile in im.tile:
        args = tile[3]  # (rawmode, ...) or the raw mode itself
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and _DEEP_RAWMODE.match(rawmode):
            return True
    return False


def _force_load(im: Image.Image, name: str) -> None:
    """Decode every pixel now, so truncated or corrupt data fails here with a reason."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:  # a frame larger than the header said
        raise ImageRejected(
            "too_large", f"{name} decodes to more pixels than allowed ({_short(exc)})"
        ) from exc
    except MemoryError as exc:
        raise ImageRejected(
            "too_large", f"{name} does not fit in memory when decoded"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        raise ImageRejected(
            "corrupt_image",
            f"{name} is truncated or corrupt and cannot be fully decoded ({_short(exc)})",
        ) from exc


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Apply the EXIF orientation and convert to a contiguous (H, W, 3) uint8 RGB array."""
    try:
        upright = ImageOps.exif_transpose(im)
        rgb = upright.convert("RGB")
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error) as exc:
        raise ImageRejected(
            "corrupt_image",
            f"{name} could not be converted to RGB ({_short(exc)}); {_EXPORT_HINT}",
        ) from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # a Pillow conversion bug, not a bad file
        raise ImageRejected("unsupported_mode", f"{name} did not convert to 3-channel RGB")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------- reasons


def _unidentified(fp: IO[bytes], head: bytes, name: str) -> ImageRejected:
    """Why Pillow could not identify the data: not an image, a deep TIFF, or damage."""
    if head.startswith(_TIFF_SIGNATURES) and _tiff_is_deep(fp, head):
        return ImageRejected(
            "unsupported_bit_depth",
            f"{name} is a TIFF with more than 8 bits per sample or floating-point samples; "
            f"{_EXPORT_HINT}",
        )
    if head.startswith(_SIGNATURES) or head[8:12] == b"WEBP":
        return ImageRejected(
            "corrupt_image",
            f"{name} looks like an image but its header is damaged or of an unsupported "
            f"variant; {_EXPORT_HINT}",
        )
    return ImageRejected(
        "not_an_image", f"{name} is not an image file Pillow can read (PNG, JPEG, TIFF, ...)"
    )


def _tiff_is_deep(fp: IO[bytes], head: bytes) -> bool:
    """Read the first TIFF directory and tell whether samples are > 8 bits or float."""
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=head[:8])
        fp.seek(ifd.next)
        ifd.load(fp)
        bits = ifd.get(258, (8,))
        sample_format = ifd.get(339, (1,))
    except Exception:  # a damaged directory only means "not known to be deep"
        return False
    bits_t = bits if isinstance(bits, tuple) else (bits,)
    fmt_t = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return any(int(b) > 8 for b in bits_t) or any(int(f) == 3 for f in fmt_t)


def _too_large_unknown(name: str, cfg: InputConfig, exc: Exception) -> ImageRejected:
    """Pillow's decompression-bomb guard fired at open: far beyond any configurable limit."""
    return ImageRejected(
        "too_large",
        f"{name} is far above the limit of {cfg.max_megapixels:g} megapixels "
        f"(config key input.max_megapixels): {_short(exc)}",
    )


def _short(exc: BaseException) -> str:
    """The exception's message, bounded so a hostile file cannot flood the log."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
