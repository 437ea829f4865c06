"""Flat-field correction of the HEp-2 intensity: the light path's unevenness, measured once.

The excitation light and the camera's vignetting make a cell at the edge of the field read
dimmer than the same cell in the centre: with the light falling to half at the corners,
generated specimens read 15 % low on average (docs/hep2.md, "Cameras the generator does
not draw"). A fluorescence field cannot show its own light, as a brightfield one does
(HER2's ``flat_field.py`` follows the glass): the background is dark. So the lab images a
uniformly fluorescent slide (a fluorescent plastic slide, or a well of fluorescein) once
per light path, and the box divides each cell's brightness by the relative light where the
cell lies (docs/hep2-calibration.md, section 2).

The flat is made from several frames of that slide, moved between frames so that dust,
scratches and bubbles fall in different places. Each frame's green channel, less the
camera's dark level, is averaged down to a coarse grid of blocks; the median over the
frames, block by block, drops what moved; divided by its brightest block it is the relative
light, 1 at the brightest and below 1 elsewhere, so the correction only ever brightens.
It is kept as that grid (a small JSON file) and stretched to each frame's size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.config import ConfigError, Hep2IntensityConfig
from appliance.files import write_atomic

FORMAT = "eyepiece-hep2-flat-field"
VERSION = 1
MIN_FRAMES = 3  # the median of three drops a speck that sits in one of them
GRID_LONG = 48  # blocks along the longer side: vignetting changes over tens of blocks
# Brightest block less the dark level: below this the flat is mostly sensor noise.
MIN_LEVEL_GREY = 30.0
# Pixels at or above this 8-bit level clip: the light there is not measured.
CLIPPED_GREY = 250
MAX_CLIPPED_SHARE = 0.001
# Darker than this share of the brightest block is not vignetting but something in the
# light path (the slide's edge, the field diaphragm, a filter holder): not corrected.
MIN_GAIN = 0.25
# A region of one frame this far from the others' median (smoothed over a few blocks) is a
# bubble, a scratch or the slide's edge.
MAX_FRAME_DEVIATION = 0.10
# A median grid this lumpy (against its own smooth version) is not a uniform slide.
MAX_LUMPINESS = 0.08
_LUMP_SIGMA_BLOCKS = 2.0
# Frames whose width / height differs from the flat's by more than this are another
# camera mode or another camera: the flat does not map onto them.
ASPECT_TOLERANCE = 0.02
# Frames at half the exposure must read half the grey (a linear camera); a display tone
# curve of gamma 2.2 reads 0.73. Exposure steps (100 µs on V4L2) keep a linear camera
# well inside this.
HALF_RATIO_TOLERANCE = 0.04
# Blocks dimmer than this above the dark level are left out of the linearity check (noise).
LINEARITY_MIN_GREY = 20.0
# With no dark frame the dark level is taken as 0; a warning when that could be off by
# more than a few per cent of the flat (a black level of 5 grey against this level).
DARK_WARN_BELOW_GREY = 150.0


class FlatFieldError(ValueError):
    """The frames cannot give a flat field, or a flat-field file cannot be used."""


@dataclass(frozen=True)
class FlatField:
    """The relative light of one light path, on a coarse grid of blocks."""

    gains: np.ndarray  # (rows, cols) float32 in [MIN_GAIN, 1], 1 at the brightest block
    width: int  # size of the frames it was made from
    height: int
    frames: int
    dark_grey: float  # the dark level subtracted (0 without a dark frame)
    brightest_grey: float  # the brightest block above the dark level
    made_at: str = ""
    warnings: tuple[str, ...] = ()
    # Half-exposure frames over full-exposure frames, in the dimmest and brightest third of
    # the blocks (0.5 and 0.5 for a linear camera); None when not checked.
    half_exposure_ratio: tuple[float, float] | None = None

    @property
    def corner_light(self) -> float:
        """The dimmest block's light relative to the brightest (1 = perfectly even)."""
        return float(self.gains.min())

    def to_json(self) -> str:
        """The file's text (made_at, sizes and the grid at five decimals)."""
        return json.dumps({
            "format": FORMAT, "version": VERSION, "width": self.width, "height": self.height,
            "frames": self.frames, "dark_grey": round(self.dark_grey, 3),
            "brightest_grey": round(self.brightest_grey, 3), "made_at": self.made_at,
            "half_exposure_ratio": (None if self.half_exposure_ratio is None
                                    else [round(r, 4) for r in self.half_exposure_ratio]),
            "gains": [[round(float(v), 5) for v in row] for row in self.gains],
        }, indent=1) + "\n"


def green_plane(image: np.ndarray) -> np.ndarray:
    """The FITC (green) channel of an RGB frame, or a monochrome frame itself, as float32."""
    if image.ndim == 3 and image.shape[2] >= 2:
        return image[..., 1].astype(np.float32)
    if image.ndim == 2:
        return image.astype(np.float32)
    raise FlatFieldError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def flat_from_frames(frames: Sequence[np.ndarray], dark: Sequence[np.ndarray] = (),
                     *, half: Sequence[np.ndarray] = (),
                     made_at: str | None = None) -> FlatField:
    """The flat field from frames of a uniformly fluorescent slide (8-bit, same size).

    ``dark``: frames with the light path shut (same exposure and gain); their mean green is
    the dark level subtracted. ``half``: frames of the same slide at half the exposure,
    to check that the camera is linear (:func:`half_exposure_ratio`). Raises
    :class:`FlatFieldError` naming the frame and the reason: too few frames, sizes that
    differ, clipping, too dim, a frame that differs from the others (a bubble or scratch),
    a picture that is not uniform (a specimen), light darker than vignetting, or a camera
    that is not linear.
    """
    if len(frames) < MIN_FRAMES:
        raise FlatFieldError(f"need at least {MIN_FRAMES} frames of the uniform slide, got "
                             f"{len(frames)}: move the slide between frames")
    planes = [green_plane(f) for f in frames]
    h, w = planes[0].shape
    for i, plane in enumerate(planes, start=1):
        if plane.shape != (h, w):
            raise FlatFieldError(f"frame {i} is {plane.shape[1]}x{plane.shape[0]}, frame 1 "
                                 f"{w}x{h}: all frames must come from one camera mode")
        clipped = float(np.mean(plane >= CLIPPED_GREY))
        if clipped > MAX_CLIPPED_SHARE:
            raise FlatFieldError(f"frame {i}: {clipped:.1%} of the pixels clip at the 8-bit "
                                 "ceiling; shorten the exposure or lower the gain")
    dark_grey = _dark_level(dark, (h, w))
    rows, cols = grid_shape(h, w)
    grids = [cv2.resize(p - dark_grey, (cols, rows), interpolation=cv2.INTER_AREA)
             for p in planes]
    # Each frame on its own level first: a slide that bleaches a little between frames,
    # or a lamp that flickers, changes the level, not the shape.
    shapes = [g / max(float(np.median(g)), 1e-6) for g in grids]
    median = np.median(np.stack(shapes), axis=0)
    # The frames' median grid in grey: its brightest block is the flat's level, and the
    # linearity check compares the half-exposure frames with it.
    grey = np.median(np.stack(grids), axis=0)
    level = float(grey.max())
    if level < MIN_LEVEL_GREY:
        raise FlatFieldError(f"the brightest part reads only {level:.1f} grey above the dark "
                             f"level (at least {MIN_LEVEL_GREY:g}): lengthen the exposure or "
                             "use a brighter slide")
    _check_uniform(median)
    for i, shape in enumerate(shapes, start=1):
        # Smoothed: a speck in one block is what the median is for; a frame that differs
        # over a region (a bubble, the slide's edge, the lamp still warming up) is not.
        off = cv2.GaussianBlur((shape / np.maximum(median, 1e-6) - 1.0).astype(np.float32),
                               (0, 0), _LUMP_SIGMA_BLOCKS, borderType=cv2.BORDER_REFLECT)
        worst = np.unravel_index(int(np.argmax(np.abs(off))), off.shape)
        if abs(float(off[worst])) > MAX_FRAME_DEVIATION:
            raise FlatFieldError(
                f"frame {i} differs from the others by {float(off[worst]):+.0%} "
                f"{_where(worst, off.shape)}: a bubble, scratch or dust on the slide; move "
                "the slide and take that frame again")
    gains = (median / median.max()).astype(np.float32)
    dimmest = np.unravel_index(int(np.argmin(gains)), gains.shape)
    if float(gains[dimmest]) < MIN_GAIN:
        raise FlatFieldError(
            f"the light falls to {float(gains[dimmest]):.0%} of the brightest "
            f"{_where(dimmest, gains.shape)}, more than vignetting (at least {MIN_GAIN:.0%}): "
            "is the slide's edge, the field diaphragm or a holder in view?")
    ratio = half_exposure_ratio(grey, half, dark_grey, (h, w)) if half else None
    warnings: tuple[str, ...] = ()
    if not dark and level < DARK_WARN_BELOW_GREY:
        warnings = (f"no dark frame: the camera's dark level is taken as 0, and the flat "
                    f"reads only {level:.0f} grey; a dark frame (light path shut) or a "
                    "brighter flat makes the correction more exact",)
    return FlatField(gains=gains, width=w, height=h, frames=len(frames),
                     dark_grey=dark_grey, brightest_grey=level,
                     made_at=made_at if made_at is not None else _now(), warnings=warnings,
                     half_exposure_ratio=ratio)


def half_exposure_ratio(full: np.ndarray, half: Sequence[np.ndarray], dark_grey: float,
                        shape: tuple[int, int]) -> tuple[float, float]:
    """How a camera's grey follows the light: frames at half the exposure over the
    full-exposure block grid ``full`` (dark level subtracted), in the dimmest and the
    brightest third of the blocks. A linear camera reads 0.5 in both.

    The intensity calibration is one point, so it holds at other intensities only on a
    linear camera: a display tone curve (gamma 2.2) reads 0.73, and read specimens at
    0.85-1.87 times their value (docs/hep2.md). Raises :class:`FlatFieldError` when
    either ratio is more than HALF_RATIO_TOLERANCE from 0.5, or the half frames are not
    of the flat frames' ``shape`` (height, width).
    """
    rows, cols = full.shape
    grids = [cv2.resize(plane - dark_grey, (cols, rows), interpolation=cv2.INTER_AREA)
             for plane in _planes_of(half, shape, "half-exposure frame")]
    halves = np.median(np.stack(grids), axis=0)
    usable = full >= LINEARITY_MIN_GREY
    if usable.sum() < 3:
        raise FlatFieldError("the flat is too dim to check the camera's linearity")
    levels, ratios = full[usable], halves[usable] / full[usable]
    low, high = np.percentile(levels, [100 / 3, 200 / 3])
    dim = float(np.median(ratios[levels <= low]))
    bright = float(np.median(ratios[levels >= high]))
    for ratio in (dim, bright):
        if abs(ratio - 0.5) > HALF_RATIO_TOLERANCE:
            gamma = math.log(0.5) / math.log(min(max(ratio, 1e-3), 0.999))
            raise FlatFieldError(
                f"the camera is not linear: half the exposure reads {dim:.2f} of the grey "
                f"where the light is dimmer and {bright:.2f} where it is brighter (a linear "
                f"camera reads 0.50; this is like a tone curve of gamma {gamma:.1f}); turn "
                "off the camera's tone curve (docs/hep2-calibration.md, section 1), or check "
                "the half frames were taken at exactly half the exposure and the same gain")
    return dim, bright


def grid_shape(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the block grid for a frame: GRID_LONG along the longer side."""
    if height <= 0 or width <= 0:
        raise FlatFieldError(f"frame size {width}x{height} is empty")
    scale = GRID_LONG / max(height, width)
    return max(2, min(height, round(height * scale))), max(2, min(width, round(width * scale)))


def gain_map(flat: FlatField, height: int, width: int) -> np.ndarray:
    """The flat's relative light at every pixel of a ``height`` x ``width`` frame.

    The grid is stretched to the frame (block centres onto the frames' block centres), so
    a frame of the same camera at another resolution (a still at full size, the preview
    binned) maps too. Raises :class:`FlatFieldError` when the frame's aspect differs from
    the flat's: another camera mode or camera, where the flat does not hold.
    """
    aspect, flat_aspect = width / height, flat.width / flat.height
    if abs(aspect / flat_aspect - 1.0) > ASPECT_TOLERANCE:
        raise FlatFieldError(
            f"the flat field was made on {flat.width}x{flat.height} frames, this image is "
            f"{width}x{height} (another shape): intensity not flat-field corrected")
    rows, cols = flat.gains.shape
    # A block's mean stands for its centre; the outer half-blocks continue the slope, so
    # the grid is padded by one block extrapolated linearly before it is interpolated.
    padded = np.pad(flat.gains.astype(np.float32), 1, mode="reflect", reflect_type="odd")
    u = ((np.arange(width, dtype=np.float32) + 0.5) * cols / width + 0.5)
    v = ((np.arange(height, dtype=np.float32) + 0.5) * rows / height + 0.5)
    map_x = np.broadcast_to(u[None, :], (height, width))
    map_y = np.broadcast_to(v[:, None], (height, width))
    stretched = cv2.remap(padded, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y),
                          interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(stretched, MIN_GAIN, 1.0).astype(np.float32)


def flat_picture(flat: FlatField, width: int = 640) -> np.ndarray:
    """A false-colour picture of the flat's relative light (BGR, for cv2.imwrite), with
    contour lines every 10 % and the dimmest light written on it: what the lab looks at
    before trusting the flat field."""
    height = max(1, round(width * flat.height / flat.width))
    light = gain_map(flat, flat.height, flat.width)
    light = cv2.resize(light, (width, height), interpolation=cv2.INTER_AREA)
    lo = min(0.4, float(light.min()))
    scaled = np.clip((light - lo) / (1.0 - lo) * 255.0, 0, 255).astype(np.uint8)
    picture = cv2.applyColorMap(scaled, cv2.COLORMAP_VIRIDIS)
    for level in np.arange(0.9, lo, -0.1):
        mask = (light >= level).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    text = f"relative light, a line every 10%; dimmest {float(light.min()):.0%}"
    cv2.putText(picture, text, (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return picture


def save_flat(flat: FlatField, path: Path) -> str:
    """Write the flat's JSON file atomically; returns its sha256 (what calibrations record)."""
    data = flat.to_json().encode("utf-8")
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def load_flat(path: Path) -> tuple[FlatField, str]:
    """The flat field in ``path`` and the file's sha256.

    Raises :class:`FlatFieldError` naming what is wrong: a missing or unreadable file, not
    JSON, another format or version, sizes or a grid that are not numbers in range.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlatFieldError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlatFieldError(f"{path} is not a flat-field JSON file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FlatFieldError(f"{path} is not a flat-field file (format is not '{FORMAT}'; "
                             "make one with `appliance flat-iif`)")
    if doc.get("version") != VERSION:
        raise FlatFieldError(f"{path}: flat-field version {doc.get('version')!r}, this box "
                             f"reads version {VERSION}")
    width, height, frames = (_positive_int(doc, k, path) for k in ("width", "height", "frames"))
    gains = _grid(doc.get("gains"), path)
    flat = FlatField(gains=gains, width=width, height=height, frames=frames,
                     dark_grey=_number(doc, "dark_grey", path),
                     brightest_grey=_number(doc, "brightest_grey", path),
                     made_at=str(doc.get("made_at", "")),
                     half_exposure_ratio=_ratio(doc.get("half_exposure_ratio"), path))
    return flat, hashlib.sha256(data).hexdigest()


def configured_flat(cfg: Hep2IntensityConfig) -> tuple[FlatField | None, str]:
    """The flat field ``hep2.intensity.flat_field_file`` names and its sha256; (None, '')
    when none is set. A file that cannot be used is a ConfigError naming the key."""
    if not cfg.flat_field_file:
        return None, ""
    try:
        return load_flat(Path(cfg.flat_field_file))
    except FlatFieldError as exc:
        raise ConfigError("hep2.intensity.flat_field_file", str(exc)) from exc


def _dark_level(dark: Sequence[np.ndarray], shape: tuple[int, int]) -> float:
    """The mean green of the dark frames (0 without any)."""
    levels = [float(plane.mean()) for plane in _planes_of(dark, shape, "dark frame")]
    return float(np.mean(levels)) if levels else 0.0


def _planes_of(frames: Sequence[np.ndarray], shape: tuple[int, int],
               what: str) -> list[np.ndarray]:
    """The green planes of extra frames (dark, half exposure), each of the flat frames'
    ``shape`` (height, width), or FlatFieldError naming the one that is not."""
    planes = []
    for i, frame in enumerate(frames, start=1):
        plane = green_plane(frame)
        if plane.shape != shape:
            raise FlatFieldError(f"{what} {i} is {plane.shape[1]}x{plane.shape[0]}, the flat "
                                 f"frames {shape[1]}x{shape[0]}")
        planes.append(plane)
    return planes


def _check_uniform(median: np.ndarray) -> None:
    """Refuse a grid with structure finer than vignetting (cells, a pattern, text)."""
    smooth = cv2.GaussianBlur(median.astype(np.float32), (0, 0), _LUMP_SIGMA_BLOCKS,
                              borderType=cv2.BORDER_REFLECT)
    # The border blocks are left out: there a blur of a sloping light bends the level.
    edge = math.ceil(1.5 * _LUMP_SIGMA_BLOCKS)
    inner = (slice(edge, -edge), slice(edge, -edge))
    if median[inner].size == 0:
        return
    lumps = np.abs(median[inner] / np.maximum(smooth[inner], 1e-6) - 1.0)
    spot = np.unravel_index(int(np.argmax(lumps)), lumps.shape)
    worst = float(lumps[spot])
    if worst > MAX_LUMPINESS:
        raise FlatFieldError(
            f"the frames are not uniform (light varies by {worst:.0%} between neighbouring "
            f"parts of the field {_where(spot, lumps.shape)}, more than vignetting does): image "
            "a uniformly fluorescent slide, not a specimen, with no edge of the slide or of "
            "the field diaphragm in view; if it is one, dust or a scratch sits there in most "
            "frames: clean the slide, or take more frames moving it")


def _where(index: tuple[Any, ...], shape: tuple[int, ...]) -> str:
    """A grid position in words ("near the upper left corner", "in the centre")."""
    row, col = (index[0] + 0.5) / shape[0], (index[1] + 0.5) / shape[1]
    vertical = "upper" if row < 1 / 3 else "lower" if row > 2 / 3 else ""
    horizontal = "left" if col < 1 / 3 else "right" if col > 2 / 3 else ""
    if vertical and horizontal:
        return f"near the {vertical} {horizontal} corner"
    if vertical:
        return f"at the {'top' if vertical == 'upper' else 'bottom'} edge"
    if horizontal:
        return f"at the {horizontal} side"
    return "in the centre"


def _positive_int(doc: dict[str, object], key: str, path: Path) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FlatFieldError(f"{path}: '{key}' must be a positive whole number, got {value!r}")
    return value


def _number(doc: dict[str, object], key: str, path: Path) -> float:
    value = doc.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise FlatFieldError(f"{path}: '{key}' must be a number, got {value!r}")
    return float(value)


def _ratio(value: object, path: Path) -> tuple[float, float] | None:
    """The recorded linearity check: absent, or two numbers."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) for v in value)):
        raise FlatFieldError(f"{path}: 'half_exposure_ratio' must be two numbers or null, "
                             f"got {value!r}")
    return float(value[0]), float(value[1])


def _grid(value: object, path: Path) -> np.ndarray:
    """The gains grid: a rectangular list of rows, at least 2 x 2, in [MIN_GAIN, 1], max 1."""
    rows = value if isinstance(value, list) else None
    if (not rows or len(rows) < 2 or not all(isinstance(r, list) for r in rows)
            or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2):
        raise FlatFieldError(f"{path}: 'gains' must be a grid of at least 2 x 2 numbers "
                             "(a list of equally long rows)")
    try:
        gains = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FlatFieldError(f"{path}: 'gains' holds something that is not a number") from exc
    if not np.all(np.isfinite(gains)):
        raise FlatFieldError(f"{path}: 'gains' holds a value that is not a finite number")
    if gains.min() < MIN_GAIN or gains.max() > 1.0 + 1e-6 or gains.max() < 1.0 - 1e-3:
        raise FlatFieldError(f"{path}: 'gains' must lie in [{MIN_GAIN}, 1] with the brightest "
                             f"at 1, got {gains.min():.3f}..{gains.max():.3f}")
    return gains.astype(np.float32)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
