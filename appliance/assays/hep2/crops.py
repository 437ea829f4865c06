"""Normalised cell crops for the HEp-2 cell classifier.

A crop shows one cell and a margin, ``crop_um`` wide at the specimen, resampled to
``crop_px`` pixels: the classifier sees the same geometry whatever the objective.
Channel 0 is the green signal minus the local background, divided by the cell's own
99th percentile: the classifier sees the PATTERN, never the intensity (the intensity is
measured in calibrated units elsewhere, intensity.py). Channel 1 is the cell's mask, so
the classifier knows which of the cells in the crop is meant.

Input ``green`` is the green channel as float32 in 8-bit grey levels (0..255).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from appliance.config import Hep2CellsConfig

CLIP_MAX = 1.5  # signal above the cell's 99th percentile is kept up to this (bright dots)
# Cells whose 99th percentile is below this many grey levels above background are not
# stretched further: a blank cell must stay noise-like, not become a loud pattern.
MIN_SCALE_GREY = 2.0
BACKGROUND_PERCENTILE = 20.0  # of the non-cell pixels around the cell: the dark gaps


def _window(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """``image[y0:y0+side, x0:x0+side]`` with zeros where the window leaves the image."""
    h, w = image.shape[:2]
    out = np.zeros((side, side), dtype=image.dtype)
    ys, ye = max(y0, 0), min(y0 + side, h)
    xs, xe = max(x0, 0), min(x0 + side, w)
    if ys < ye and xs < xe:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = image[ys:ye, xs:xe]
    return out


def _inside(shape: tuple[int, ...], x0: int, y0: int, side: int) -> np.ndarray:
    """Boolean window: True where the window lies inside an image of ``shape``."""
    ones = np.ones(shape[:2], dtype=np.uint8)
    return _window(ones, x0, y0, side).astype(bool)


def _resample(win: np.ndarray, centre: tuple[float, float], step: float, size: int,
              interpolation: int) -> np.ndarray:
    """Sample ``win`` on a ``size`` x ``size`` grid of pitch ``step`` px centred on ``centre``.

    Output pixel (i, j) reads input at centre + (j - (size-1)/2) * step (x likewise), so
    the cell's centroid lands on the crop's centre at sub-pixel precision.
    """
    half = (size - 1) / 2.0
    m = np.array([[step, 0.0, centre[0] - half * step],
                  [0.0, step, centre[1] - half * step]], dtype=np.float64)
    return cv2.warpAffine(win, m, (size, size), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _antialias(win: np.ndarray, step: float) -> np.ndarray:
    """Blur before shrinking by ``step`` so a 40x field and a 20x field give the same crop."""
    if step <= 1.0:
        return win
    # Gaussian matched to the box of one output pixel (sigma ~ 0.4 * step), less the blur
    # the input pixel already carries.
    sigma = 0.4 * math.sqrt(step * step - 1.0)
    if sigma < 0.2:
        return win
    return cv2.GaussianBlur(win, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def _check(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig) -> None:
    if green.ndim != 2:
        raise ValueError(f"green must be one (H, W) channel, got shape {green.shape}")
    if not (um_per_px > 0 and math.isfinite(um_per_px)):
        raise ValueError(f"um_per_px must be a positive number, got {um_per_px!r}")
    if cfg.crop_px < 2 or cfg.crop_um <= 0:
        raise ValueError(f"bad crop geometry: crop_px={cfg.crop_px}, crop_um={cfg.crop_um}")


def _crop_from_window(win: np.ndarray, cell: np.ndarray, background: float,
                      centre: tuple[float, float], step: float, size: int) -> np.ndarray:
    """The (2, size, size) crop from a window of the green image and the cell's window mask."""
    signal = win - np.float32(background)
    values = signal[cell]
    p99 = float(np.percentile(values, 99.0)) if values.size else 0.0
    scale = max(p99, MIN_SCALE_GREY)
    norm = np.clip(signal / np.float32(scale), 0.0, CLIP_MAX).astype(np.float32)
    g = _resample(_antialias(norm, step), centre, step, size, cv2.INTER_LINEAR)
    m = _resample(_antialias(cell.astype(np.float32), step), centre, step, size,
                  cv2.INTER_LINEAR)
    out = np.empty((2, size, size), dtype=np.float32)
    out[0] = np.clip(g, 0.0, CLIP_MAX)
    out[1] = (m >= 0.5).astype(np.float32)
    return out


def _geometry(centroid: tuple[float, float], um_per_px: float,
              cfg: Hep2CellsConfig) -> tuple[int, int, int, float]:
    """Window origin (x0, y0), window side and sampling step (input px per crop px)."""
    step = cfg.crop_um / cfg.crop_px / um_per_px
    side_in = cfg.crop_um / um_per_px
    # A margin of a few pixels beyond the crop keeps the blur and interpolation honest.
    pad = math.ceil(2.0 * max(step, 1.0)) + 2
    x0 = math.floor(centroid[0] - side_in / 2.0) - pad
    y0 = math.floor(centroid[1] - side_in / 2.0) - pad
    side = math.ceil(side_in) + 2 * pad + 1
    return x0, y0, side, step


def cell_crop(green: np.ndarray, mask: np.ndarray, centroid: tuple[float, float],
              um_per_px: float, cfg: Hep2CellsConfig, *,
              background: float | None = None) -> np.ndarray:
    """The normalised (2, crop_px, crop_px) float32 crop of one cell.

    ``green``: (H, W) green channel in grey levels; ``mask``: (H, W) bool, True inside this
    one cell; ``centroid``: (x, y) in pixels, the crop's centre. ``background``: the local
    background grey level; None estimates it from the non-cell pixels around the cell
    (their 20th percentile, so neighbouring cells in the window do not lift it).
    Zero padding where the crop leaves the image.
    """
    _check(green, um_per_px, cfg)
    if mask.shape != green.shape:
        raise ValueError(f"mask shape {mask.shape} differs from green shape {green.shape}")
    if not mask.any():
        raise ValueError("the cell mask is empty")
    x0, y0, side, step = _geometry(centroid, um_per_px, cfg)
    win = _window(green.astype(np.float32, copy=False), x0, y0, side)
    cell = _window(mask.astype(bool, copy=False), x0, y0, side)
    if background is None:
        around = _inside(green.shape, x0, y0, side) & ~cell
        background = _background(win, around)
    centre = (centroid[0] - x0, centroid[1] - y0)
    return _crop_from_window(win, cell, background, centre, step, cfg.crop_px)


def _background(win: np.ndarray, around: np.ndarray) -> float:
    """Low percentile of the pixels that are not cells: the local dark background."""
    if not around.any():
        return 0.0
    return float(np.percentile(win[around], BACKGROUND_PERCENTILE))


def crops_for(green: np.ndarray, labels: np.ndarray, um_per_px: float,
              cfg: Hep2CellsConfig, only: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Crops of every labelled cell: ((N, 2, S, S) float32, (N,) int32 cell ids, ascending).

    ``labels``: (H, W) integer label image, 0 background. The background of each cell is
    estimated from the pixels of its window that belong to no cell at all. ``only``: the
    cell ids to cut (the others still count as cells, not background).
    """
    _check(green, um_per_px, cfg)
    if labels.shape != green.shape:
        raise ValueError(f"labels shape {labels.shape} differs from green shape {green.shape}")
    size = cfg.crop_px
    ys, xs = np.nonzero(labels)
    if ys.size == 0:
        return np.zeros((0, 2, size, size), np.float32), np.zeros((0,), np.int32)
    ids = labels[ys, xs].astype(np.int64)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    cx = np.bincount(inverse, weights=xs) / counts
    cy = np.bincount(inverse, weights=ys) / counts
    if only is not None:
        keep = np.isin(uniq, only)
        uniq, cx, cy = uniq[keep], cx[keep], cy[keep]
    g = green.astype(np.float32, copy=False)
    out = np.empty((len(uniq), 2, size, size), dtype=np.float32)
    for i, cell_id in enumerate(uniq):
        x0, y0, side, step = _geometry((float(cx[i]), float(cy[i])), um_per_px, cfg)
        lab = _window(labels, x0, y0, side)
        win = _window(g, x0, y0, side)
        around = _inside(green.shape, x0, y0, side) & (lab == 0)
        centre = (float(cx[i]) - x0, float(cy[i]) - y0)
        out[i] = _crop_from_window(win, lab == cell_id, _background(win, around), centre,
                                   step, size)
    return out, uniq.astype(np.int32)
