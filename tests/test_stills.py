"""Still-image decoding: every refusal has its code, good images come back as uint8 RGB."""

from __future__ import annotations

import io
import random
import resource
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from appliance.capture.stills import ImageRejected, decode_image_bytes, load_still
from appliance.config import InputConfig
from tests.imagefiles import png_header_only

CFG = InputConfig()


def _field(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A small colourful image with structure (so JPEG has real data to truncate)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (200, 40, 30)
    return img


def _rejected(path: Path, cfg: InputConfig = CFG) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        load_still(path, cfg)
    assert info.value.reason and info.value.code in str(info.value)
    return info.value


# ---------------------------------------------------------------- accepted


def test_rgb_png_round_trip_and_bytes_api_agree(tmp_path: Path) -> None:
    img = _field()
    path = tmp_path / "f.png"
    Image.fromarray(img).save(path)
    out = load_still(path, CFG)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes(), CFG), img)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    img = _field()
    rgba = np.dstack([img, np.full(img.shape[:2], 77, np.uint8)])
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_still(path, CFG)
    np.testing.assert_array_equal(out, img)


def test_palette_png_is_expanded_to_rgb(tmp_path: Path) -> None:
    img = _field()
    pal = Image.fromarray(img).quantize(colors=16)
    path = tmp_path / "p.png"
    pal.save(path)
    assert Image.open(path).mode == "P"
    out = load_still(path, CFG)
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    img = np.zeros((80, 80, 3), np.uint8)
    img[:] = (180, 60, 40)
    path = tmp_path / "c.jpg"
    Image.fromarray(img).convert("CMYK").save(path, quality=95)
    out = load_still(path, CFG)
    assert out.shape == (80, 80, 3)
    assert np.abs(out.reshape(-1, 3).mean(0) - (180, 60, 40)).max() < 12


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.full((80, 120, 3), 255, np.uint8)
    img[:20, :20] = (255, 0, 0)  # red marker stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "o.jpg"
    Image.fromarray(img).save(path, quality=95, exif=exif)
    out = load_still(path, CFG)
    assert out.shape == (120, 80, 3)
    # After a clockwise quarter turn the stored top-left corner is shown top-right.
    top_right = out[:20, -20:].reshape(-1, 3).mean(0)
    top_left = out[:20, :20].reshape(-1, 3).mean(0)
    assert top_right[0] > 200 and top_right[1] < 60
    assert top_left.min() > 200


def test_tiff_8bit_rgb_accepted(tmp_path: Path) -> None:
    img = _field()
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, photometric="rgb")
    np.testing.assert_array_equal(load_still(path, CFG), img)


# ---------------------------------------------------------------- refused: the file


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert _rejected(tmp_path / "nope.png").code == "unreadable"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    assert _rejected(tmp_path).code == "unreadable"


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e.png"
    path.write_bytes(b"")
    assert _rejected(path).code == "empty_file"
    with pytest.raises(ImageRejected) as info:
        decode_image_bytes(b"", CFG)
    assert info.value.code == "empty_file"


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("patient slide 12, field 3\n" * 20)
    assert _rejected(path).code == "not_an_image"


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_field(200, 200)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "t.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert _rejected(path).code == "corrupt_image"


def test_truncated_jpeg_refused_even_if_pillow_was_relaxed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buf = io.BytesIO()
    Image.fromarray(_field(200, 200)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with pytest.raises(ImageRejected) as info:
        decode_image_bytes(data[: len(data) // 2], CFG)
    assert info.value.code == "corrupt_image"


def test_damaged_png_header_is_corrupt_not_unknown(tmp_path: Path) -> None:
    path = tmp_path / "h.png"
    Image.fromarray(_field()).save(path)
    path.write_bytes(path.read_bytes()[:20])
    assert _rejected(path).code == "corrupt_image"


# ---------------------------------------------------------------- refused: the pixels


@pytest.mark.parametrize("kind", ["tiff16_rgb", "tiff_float_rgb", "tiff_float_grey",
                                  "png16_rgb", "png16_grey"])
def test_deep_images_are_refused(tmp_path: Path, kind: str) -> None:
    rgb16 = (np.random.default_rng(1).random((80, 80, 3)) * 65535).astype(np.uint16)
    path = tmp_path / (kind + (".tif" if kind.startswith("tiff") else ".png"))
    if kind == "tiff16_rgb":
        tifffile.imwrite(path, rgb16, photometric="rgb")
    elif kind == "tiff_float_rgb":
        tifffile.imwrite(path, rgb16.astype(np.float32) / 65535, photometric="rgb")
    elif kind == "tiff_float_grey":
        tifffile.imwrite(path, rgb16[..., 0].astype(np.float32))
    elif kind == "png16_rgb":
        assert cv2.imwrite(str(path), rgb16)  # Pillow would silently read it as 8-bit
    else:
        assert cv2.imwrite(str(path), rgb16[..., 0])
    err = _rejected(path)
    assert err.code == "unsupported_bit_depth"
    assert "export as 8-bit RGB" in err.reason


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grey_and_bilevel_are_not_colour(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"g_{mode}.png"
    Image.fromarray(_field()).convert(mode).save(path)
    err = _rejected(path)
    assert err.code == "not_colour"
    assert "colour brightfield" in err.reason


@pytest.mark.parametrize("size", [(1, 1), (63, 500), (500, 63)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "s.png"
    Image.new("RGB", size, (200, 100, 50)).save(path)
    err = _rejected(path)
    assert err.code == "too_small"
    assert "64" in err.reason


def test_min_side_follows_config(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    Image.new("RGB", (40, 40), (200, 100, 50)).save(path)
    assert load_still(path, InputConfig(min_side_px=32)).shape == (40, 40, 3)
    assert _rejected(path, InputConfig(min_side_px=48)).code == "too_small"


def test_huge_image_refused_from_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(20000, 20000))  # 400 MP claimed, a few bytes on disk

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _rejected(path)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert err.code == "too_large"
    assert "input.max_megapixels" in err.reason and "120" in err.reason
    assert rss_growth_mb < 100  # decoding would have needed 1.2 GB


def test_decompression_bomb_beyond_pillow_guard_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(70000, 70000))  # past Pillow's own bomb limit
    claimed = 70000 * 70000
    assert Image.MAX_IMAGE_PIXELS is not None
    assert claimed > 2 * Image.MAX_IMAGE_PIXELS
    assert _rejected(path).code == "too_large"


def test_max_megapixels_follows_config(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.new("RGB", (400, 300), (200, 100, 50)).save(path)
    assert load_still(path, InputConfig(max_megapixels=0.12)).shape == (300, 400, 3)
    err = _rejected(path, InputConfig(max_megapixels=0.1))
    assert err.code == "too_large" and "0.1 megapixels" in err.reason


# ---------------------------------------------------------------- robustness


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken EXIF
def test_mutated_files_never_raise_anything_but_image_rejected() -> None:
    # Flip bytes of real PNG, JPEG and TIFF files: each must decode or be refused cleanly.
    rng = random.Random(7)
    sources = []
    for fmt in ("PNG", "JPEG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(_field(72, 72)).save(buf, fmt)
        sources.append(buf.getvalue())
    for data in sources:
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            cut = rng.choice([len(mutated), rng.randrange(1, len(mutated))])
            try:
                out = decode_image_bytes(bytes(mutated[:cut]), CFG)
            except ImageRejected as exc:
                assert exc.code in {"corrupt_image", "not_an_image", "too_large",
                                    "too_small", "unsupported_bit_depth", "not_colour",
                                    "unsupported_mode"}
            else:
                assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
