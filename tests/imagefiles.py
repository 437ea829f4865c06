"""Builders for image files the tests feed to the appliance, good and bad."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import tifffile


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def write_rgb(path: Path, rgb: np.ndarray, **params: int) -> Path:
    """Write an RGB array with OpenCV (PNG, JPEG or TIFF by suffix)."""
    flags = [v for kv in params.items() for v in (getattr(cv2, kv[0]), kv[1])]
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), flags):
        raise OSError(f"could not write {path}")
    return path


def fluorescence_image(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A fluorescence-like picture: black background, bright green nuclei."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*size, 3), np.uint8)
    for _ in range(60):
        c = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
        cv2.circle(img, c, int(rng.integers(8, 16)), (20, int(rng.integers(120, 250)), 30), -1)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


def bad_inputs(directory: Path, good: np.ndarray) -> dict[str, Path]:
    """Every kind of bad input the issue names, written into ``directory``."""
    d = directory
    files: dict[str, Path] = {}
    files["empty"] = d / "empty.png"
    files["empty"].write_bytes(b"")
    files["text"] = d / "notes.jpg"
    files["text"].write_text("patient slide 12, see report\n", encoding="utf-8")
    jpeg = write_rgb(d / "whole.jpg", good)
    files["truncated_jpeg"] = d / "truncated.jpg"
    files["truncated_jpeg"].write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    jpeg.unlink()
    files["tiff16"] = d / "deep.tif"
    tifffile.imwrite(files["tiff16"], (good.astype(np.uint16) * 257))
    files["grayscale"] = d / "gray.png"
    cv2.imwrite(str(files["grayscale"]), cv2.cvtColor(good, cv2.COLOR_RGB2GRAY))
    files["one_pixel"] = write_rgb(d / "one.png", good[:1, :1])
    files["huge"] = d / "huge.png"
    files["huge"].write_bytes(png_header_only(20000, 20000))
    files["fluorescence"] = write_rgb(d / "fluo.png", fluorescence_image())
    return files
