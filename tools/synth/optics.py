"""Optics of a cheap eyepiece camera, as small composable functions.

Images are float32 arrays scaled so that 1.0 is the sensor's full scale, shaped (H, W) or
(H, W, C). Nothing here knows about stains, so the same functions serve brightfield and
(later) fluorescence fields. Functions that draw random numbers take the generator as an
argument, so a field stays reproducible from its seed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FloatImage = np.ndarray  # float32, (H, W) or (H, W, C), 1.0 = sensor full scale


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale_px: float, *,
                 anisotropy: float = 1.0, angle_deg: float = 0.0) -> np.ndarray:
    """A smooth random field (zero mean, unit standard deviation), float32 (height, width).

    ``scale_px`` is the correlation length; ``anisotropy`` > 1 stretches the blobs along
    ``angle_deg`` (degrees from the x axis), which gives cords, fibres and streaks.
    """
    if height < 1 or width < 1 or scale_px <= 0 or anisotropy < 1:
        raise ValueError(
            f"smooth_noise needs a positive size, scale and anisotropy >= 1, got "
            f"{height}x{width}, scale {scale_px}, anisotropy {anisotropy}"
        )
    if anisotropy == 1.0:
        field = _upsampled_noise(rng, height, width, scale_px, scale_px)
    else:
        # Stretch on a square canvas that covers the field at any angle, then rotate and crop.
        side = math.ceil(math.hypot(height, width)) + 2
        square = _upsampled_noise(rng, side, side, scale_px, scale_px * anisotropy)
        rot = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), angle_deg, 1.0)
        rotated = cv2.warpAffine(square, rot, (side, side), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        y0, x0 = (side - height) // 2, (side - width) // 2
        field = rotated[y0:y0 + height, x0:x0 + width]
    std = float(field.std())
    return ((field - float(field.mean())) / max(std, 1e-6)).astype(np.float32)


def _upsampled_noise(rng: np.random.Generator, height: int, width: int,
                     scale_y: float, scale_x: float) -> np.ndarray:
    """White noise on a coarse grid, cubic-upsampled: cheap smooth noise at any scale."""
    gh = max(2, math.ceil(height / scale_y) + 2)
    gw = max(2, math.ceil(width / scale_x) + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def illumination_field(rng: np.random.Generator, height: int, width: int, *,
                       vignetting: float, unevenness: float) -> np.ndarray:
    """Multiplicative light falloff (max 1): radial vignetting times uneven illumination.

    ``vignetting`` is the relative loss in the field corners (0 = none, 0.4 = 40% darker);
    ``unevenness`` the relative amplitude of a tilt plus a low-frequency blotch, as from a
    decentred lamp or condenser.
    """
    if not (0 <= vignetting < 1 and 0 <= unevenness < 1):
        raise ValueError(f"vignetting and unevenness must be in [0, 1), got "
                         f"{vignetting}, {unevenness}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # The optical axis is rarely centred on a cheap adapter.
    cx = width * (0.5 + rng.uniform(-0.15, 0.15))
    cy = height * (0.5 + rng.uniform(-0.15, 0.15))
    half_diag = 0.5 * math.hypot(height, width)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (half_diag * half_diag)
    vignette = 1.0 - vignetting * np.minimum(r2, 1.6)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    tilt = ((xx - width / 2) * math.cos(angle) + (yy - height / 2) * math.sin(angle)) / half_diag
    blotch = smooth_noise(rng, height, width, 0.6 * max(height, width))
    uneven = 1.0 + unevenness * (0.6 * tilt + 0.4 * blotch)
    light = np.clip(vignette * uneven, 0.05, None)
    return (light / float(light.max())).astype(np.float32)


def apply_gain(img: FloatImage, gain: np.ndarray) -> FloatImage:
    """Multiply by a per-pixel (H, W) or per-channel (C,) gain, broadcasting over channels."""
    if gain.ndim == 2 and img.ndim == 3:
        return (img * gain[:, :, None]).astype(np.float32)
    return (img * gain).astype(np.float32)


def colour_temperature_gains(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-channel (R, G, B) gains of a white-balance error: warm/cool plus a green tint.

    ``strength`` 0 gives (1, 1, 1); 1 gives up to about ±15% red/blue and ±5% green.
    """
    warm = rng.uniform(-1.0, 1.0) * strength
    tint = rng.uniform(-1.0, 1.0) * strength
    gains = np.array([1.0 + 0.15 * warm, 1.0 + 0.05 * tint, 1.0 - 0.15 * warm], np.float32)
    return gains / float(gains.max())


def gaussian_blur(img: FloatImage, sigma_px: float) -> FloatImage:
    """Gaussian blur (a mildly defocused or diffraction-limited objective)."""
    if sigma_px < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma_px}")
    if sigma_px < 0.05:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px,
                            borderType=cv2.BORDER_REFLECT)


def disc_kernel(radius_px: float) -> np.ndarray:
    """Normalised, anti-aliased disc: the geometric point-spread function of defocus."""
    if radius_px <= 0:
        raise ValueError(f"disc radius must be > 0, got {radius_px}")
    r = math.ceil(radius_px) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    kernel = np.clip(radius_px + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return (kernel / float(kernel.sum())).astype(np.float32)


def defocus_blur(img: FloatImage, sigma_px: float, *, disc: bool) -> FloatImage:
    """Blur of RMS width ``sigma_px``: Gaussian for mild blur, a disc for real defocus.

    The disc has radius 2·sigma, which has the same second moment as the Gaussian, so a
    caller can think in one number whichever shape it asks for.
    """
    if not disc or sigma_px < 0.5:
        return gaussian_blur(img, sigma_px)
    return cv2.filter2D(img, -1, disc_kernel(2.0 * sigma_px), borderType=cv2.BORDER_REFLECT)


def lateral_chromatic_aberration(img: FloatImage, scale: float,
                                 offset_px: tuple[float, float]) -> FloatImage:
    """Shift the first and last channels apart: red magnified, blue shrunk about the centre.

    ``scale`` is the relative magnification difference (about 0.001 for a cheap lens);
    ``offset_px`` an extra (dx, dy) shift of red against blue (a tilted adapter).
    """
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"chromatic aberration needs an (H, W, >=3) image, got {img.shape}")
    h, w = img.shape[:2]
    out = img.copy()
    for channel, sign in ((0, 1.0), (img.shape[2] - 1, -1.0)):
        s = 1.0 + sign * scale
        mat = np.array([[s, 0.0, (1 - s) * w / 2 + sign * offset_px[0] / 2],
                        [0.0, s, (1 - s) * h / 2 + sign * offset_px[1] / 2]], np.float32)
        out[:, :, channel] = cv2.warpAffine(img[:, :, channel], mat, (w, h),
                                            flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_REFLECT)
    return out


def sensor_noise(img: FloatImage, rng: np.random.Generator, *, full_well: float,
                 read_noise: float) -> FloatImage:
    """Photon (shot) noise plus Gaussian read noise.

    ``full_well`` is the photo-electron count at full scale; shot noise uses the Gaussian
    approximation of Poisson (variance = mean), exact enough above ~10 electrons and four
    times cheaper than drawing Poisson numbers. ``read_noise`` is in full-scale units.
    """
    if full_well <= 0 or read_noise < 0:
        raise ValueError(f"full_well must be > 0 and read_noise >= 0, got "
                         f"{full_well}, {read_noise}")
    sigma = np.sqrt(np.maximum(img, 0.0) / full_well + read_noise * read_noise)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return (img + sigma * noise).astype(np.float32)


def dust_shadows(rng: np.random.Generator, height: int, width: int, count: int, *,
                 radius_px: tuple[float, float], depth: tuple[float, float]) -> np.ndarray:
    """Multiplicative (H, W) field of blurred dark discs: dust on the camera window."""
    field = np.ones((height, width), np.float32)
    for _ in range(count):
        r = rng.uniform(*radius_px)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        spot = np.zeros((height, width), np.float32)
        cv2.circle(spot, (int(cx), int(cy)), max(1, int(r)), (1.0,), thickness=-1)
        # Dust sits far from the focal plane, so its shadow is soft.
        spot = gaussian_blur(spot, 0.5 * r)
        field *= 1.0 - rng.uniform(*depth) * spot
    return field


def quantise_8bit(img: FloatImage) -> np.ndarray:
    """Full scale 1.0 to uint8 0..255, clipping over- and under-exposure like a sensor."""
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an (H, W, 3) uint8 RGB image as JPEG, as a camera or a share would."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"jpeg_roundtrip needs uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode the JPEG")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("OpenCV failed to decode its own JPEG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
