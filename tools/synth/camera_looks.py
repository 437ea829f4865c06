"""What real eyepiece cameras do to a picture that the HEp-2 field generator does not draw.

The generator (hep2_fields.py) draws a linear colour camera that records every colour at
every pixel, with little read noise, and JPEG only at quality 82-98 with full-resolution
chroma. Real cameras differ, and each function here changes a drawn (H, W, 3) uint8 RGB
picture the way one difference would. tools/stress_hep2.py scores held-out specimens under
each at a fixed strength; :func:`random_camera` draws a mix of them for training crops
(tools/hep2_dataset.py, ``camera_share``), so a classifier can learn to ignore them.
"""

from __future__ import annotations

import cv2
import numpy as np


def monochrome(rgb: np.ndarray) -> np.ndarray:
    """A monochrome camera: its one grey (here the green) in all three channels."""
    return np.ascontiguousarray(np.repeat(rgb[..., 1:2], 3, axis=2))


def colour_mosaic(rgb: np.ndarray) -> np.ndarray:
    """A colour sensor's RGGB mosaic (one colour per pixel: green at half of them, red and
    blue at a quarter), then OpenCV's bilinear demosaic, as a cheap colour camera gives."""
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    # OpenCV names a pattern by the second row's first two pixels: RGGB is its "BG".
    return np.ascontiguousarray(cv2.demosaicing(mosaic, cv2.COLOR_BayerBG2RGB))


def tone_curve(rgb: np.ndarray, gamma: float) -> np.ndarray:
    """A display tone curve, grey ** (1 / gamma), instead of a linear response (1: none)."""
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** (1.0 / gamma)), 0, 255)
    return np.ascontiguousarray(cv2.LUT(rgb, lut.astype(np.uint8)))


def mjpg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip with 4:2:0 chroma (half the colour resolution each way), as USB
    cameras send MJPG."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError("OpenCV could not encode and decode a JPEG")
    return np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def read_noise(rgb: np.ndarray, sigma_grey: float, rng: np.random.Generator) -> np.ndarray:
    """More sensor read noise (Gaussian, ``sigma_grey`` grey levels), as at a high gain."""
    out = rgb.astype(np.float32) + rng.normal(0.0, sigma_grey, rgb.shape).astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def defocus(rgb: np.ndarray, um_per_px: float, blur_um: float) -> np.ndarray:
    """A Gaussian blur of ``blur_um`` micrometres more (a field a little off focus)."""
    blurred = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), blur_um / um_per_px)
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def vignetting(rgb: np.ndarray, corner_light: float) -> np.ndarray:
    """Light falling smoothly (quadratically in the radius) from the centre to
    ``corner_light`` of it at the corners."""
    h, w = rgb.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    half_w, half_h = max((w - 1) / 2, 0.5), max((h - 1) / 2, 0.5)
    r2 = ((x - half_w) ** 2 + (y - half_h) ** 2) / (half_w**2 + half_h**2)
    out = rgb.astype(np.float32) * (1.0 - (1.0 - corner_light) * r2)[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def long_pass(rgb: np.ndarray, red_share: float) -> np.ndarray:
    """A long-pass emission filter (or a wide band-pass) in place of a narrow one: the
    FITC emission's red tail reaches the red pixels, ``red_share`` of the green."""
    out = rgb.astype(np.float32)
    out[..., 0] += red_share * out[..., 1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def red_counterstain(rgb: np.ndarray, cell_labels: np.ndarray, nucleus_labels: np.ndarray,
                     um_per_px: float, red_grey: float, green_leak: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A red counterstain (Evans blue in the conjugate) seen through a long-pass emission
    filter: every cell glows red whatever its antibodies, ``red_grey`` grey in the red
    pixels over the cytoplasm (each cell 0.7-1.3 times that, its nucleus at 0.6 of its
    cytoplasm: an assumption, not a measured spectrum), and the camera's green pixels
    record ``green_leak`` of that red (their response far in the red). Blurred by 0.3 µm,
    as the objective blurs the rest of the picture."""
    ids = int(cell_labels.max())
    factor = np.concatenate([[0.0], rng.uniform(0.7, 1.3, ids)]).astype(np.float32)
    body = factor[cell_labels] * np.where(nucleus_labels > 0, 0.6, 1.0).astype(np.float32)
    body = cv2.GaussianBlur(body, (0, 0), max(0.3 / um_per_px, 0.3))
    out = rgb.astype(np.float32)
    out[..., 0] += red_grey * body
    out[..., 1] += green_leak * red_grey * body
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def monochrome_sum(rgb: np.ndarray, red_response: float) -> np.ndarray:
    """A monochrome camera behind a long-pass filter: one grey recording the green light
    and ``red_response`` of the red (its sensitivity there against its sensitivity in
    the green), in all three channels."""
    grey = rgb[..., 1].astype(np.float32) + red_response * rgb[..., 0].astype(np.float32)
    grey8 = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))


def stray_light(rgb: np.ndarray, grey: float) -> np.ndarray:
    """Room light leaking in at the eyepiece: white (the same in every channel), rising
    from half of ``grey`` at the left edge to ``grey`` at the right."""
    w = rgb.shape[1]
    ramp = grey * (0.5 + 0.5 * np.arange(w, dtype=np.float32) / max(w - 1, 1))
    out = rgb.astype(np.float32) + ramp[None, :, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def uniform_slide(height: int, width: int, rng: np.random.Generator, level: float = 170.0,
                  specks: int = 4) -> np.ndarray:
    """A frame of a uniformly fluorescent slide as a camera with no vignetting sees it:
    green at ``level``, a little red and blue, read noise, and a few dark specks of dust
    that fall elsewhere in every frame (what the flat field's median over frames drops)."""
    rgb = np.empty((height, width, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.12 * level, level, 0.1 * level
    for _ in range(specks):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(2, 7))
        cv2.circle(rgb, centre, radius, (0.04 * level, 0.4 * level, 0.04 * level), -1)
    rgb += rng.normal(0.0, 2.0, rgb.shape).astype(np.float32)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


# How often random_camera applies each difference, and how strongly. Wider than the stress
# tool's fixed looks on purpose: a camera is all of these at once, each to its own degree.
MOSAIC_SHARE = 0.5
MONOCHROME_SHARE = 0.15  # of the cameras without a mosaic
TONE_SHARE, TONE_GAMMA = 0.35, (1.3, 2.4)
NOISE_SHARE, NOISE_GREY = 0.5, (1.0, 6.0)
MJPG_SHARE, MJPG_QUALITY = 0.35, (60, 95)


def random_camera(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``rgb`` as one randomly drawn real camera would give it, and what was drawn.

    In the order a camera works: the sensor (a colour mosaic, or monochrome), its read
    noise, the tone curve, then MJPG compression. Each part is drawn on its own share.
    """
    out, parts = rgb, list[str]()
    if rng.random() < MOSAIC_SHARE:
        out, parts = colour_mosaic(out), [*parts, "mosaic"]
    elif rng.random() < MONOCHROME_SHARE:
        out, parts = monochrome(out), [*parts, "monochrome"]
    if rng.random() < NOISE_SHARE:
        sigma = float(rng.uniform(*NOISE_GREY))
        out, parts = read_noise(out, sigma, rng), [*parts, f"noise {sigma:.1f}"]
    if rng.random() < TONE_SHARE:
        gamma = float(rng.uniform(*TONE_GAMMA))
        out, parts = tone_curve(out, gamma), [*parts, f"gamma {gamma:.2f}"]
    if rng.random() < MJPG_SHARE:
        quality = int(rng.integers(MJPG_QUALITY[0], MJPG_QUALITY[1] + 1))
        out, parts = mjpg(out, quality), [*parts, f"mjpg q{quality}"]
    return out, ", ".join(parts) or "as drawn"
