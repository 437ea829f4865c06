"""`appliance capture`: save frames of the configured camera as lossless PNG files.

    appliance capture --out DIR [--count N] [--prompt | --every S] [--settle N]
                      [--name PREFIX] [--config FILE]

The HEp-2 flat field and intensity calibration (`flat-iif`, `calibrate-iif`) need frames
that came through the same source as the frames the box scores, at the pinned exposure and
gain, and were saved without compression. This command takes them: it opens the configured
source, drops the first ``--settle`` frames (a sensor's first frames after a mode change
can be from before its settings took), then keeps ``--count`` frames, ``--every`` seconds
apart or each after Enter (``--prompt``: move the slide, then press Enter). The frames are
written only when all of them were taken, as ``PREFIX-01.png``... with ``PREFIX.json``
recording the source, the settings and what the camera said of them; an existing file is
never overwritten.

Refused (exit 2, nothing written): the camera does not open (is the service running and
holding it?), ends or fails before the count, or does not hold the pinned exposure and
gain (such frames would calibrate nothing). The camera is opened by this command, so stop
the service first (`systemctl stop eyepiece`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from appliance.capture.factory import open_source
from appliance.capture.frame import COMPRESSED_FORMATS, Frame
from appliance.capture.source import EndOfStream, FrameSource, RejectedFrame, SourceFault
from appliance.config import Config
from appliance.files import write_atomic

EXIT_REFUSED = 2
DEFAULT_SETTLE = 5
OPEN_TRIES = 3  # a camera just released by another process can take a moment
OPEN_RETRY_S = 1.0
_log = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """The frames could not be taken; the message says why."""


@dataclass(frozen=True)
class Captured:
    """The frames taken and what to say about them."""

    frames: tuple[Frame, ...]
    warnings: tuple[str, ...]


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the capture subcommand to the `appliance` parser."""
    cp = sub.add_parser(
        "capture", help="save frames of the configured camera as PNG (for flat-iif and "
        "calibrate-iif); stop the service first")
    cp.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="folder for the PNG files (made when missing)")
    cp.add_argument("--count", type=int, default=3, help="frames to keep (default 3)")
    when = cp.add_mutually_exclusive_group()
    when.add_argument("--prompt", action="store_true",
                      help="wait for Enter before each frame (move the slide in between)")
    when.add_argument("--every", type=float, default=0.0, metavar="S",
                      help="seconds between the frames kept (default 0)")
    cp.add_argument("--settle", type=int, default=DEFAULT_SETTLE,
                    help=f"frames dropped after the camera opens (default {DEFAULT_SETTLE})")
    cp.add_argument("--name", default="frame", metavar="PREFIX",
                    help="file names PREFIX-01.png... and PREFIX.json (default: frame)")
    cp.add_argument("--source", help="source.uri (default: the config's camera)")
    common(cp)


def cmd_capture(args: argparse.Namespace, cfg: Config, *,
                ask: Callable[[str], str] = input,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Take the frames and write them; 0 when written, 2 when refused (nothing written)."""
    problem = _argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_REFUSED
    paths = [args.out / f"{args.name}-{i:02d}.png" for i in range(1, args.count + 1)]
    record = args.out / f"{args.name}.json"
    taken = [p for p in [*paths, record] if p.exists()]
    if taken:
        print(f"error: {taken[0]} exists: choose another --name or --out (nothing is "
              "overwritten)", file=sys.stderr)
        return EXIT_REFUSED

    def before(i: int) -> None:
        if args.prompt:
            ask(f"frame {i} of {args.count}: move the slide to a new place, then press Enter ")
        elif args.every > 0 and i > 1:
            sleep(args.every)

    source = open_source(cfg.source, cfg.input)
    try:
        captured = capture(source, args.count, args.settle, before, cfg, sleep=sleep)
    except CaptureError as exc:
        print(f"error: capture refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        write_capture(captured, paths, record, cfg)
    except OSError as exc:
        print(f"error: could not write the frames: {exc.strerror or exc} (nothing is kept; a "
              "full disk or a folder this user cannot write?)", file=sys.stderr)
        return EXIT_REFUSED
    for path in [*paths, record]:
        print(path)
    for warning in captured.warnings:
        print(f"warning: {warning}")
    return 0


def write_capture(captured: Captured, paths: Sequence[Path], record: Path, cfg: Config) -> None:
    """Write the PNGs and the record, all or none: on OSError (a full disk) the files this
    call wrote are removed again before it is raised."""
    written: list[Path] = []
    try:
        for frame, path in zip(captured.frames, paths, strict=True):
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"could not encode {path}")
            write_atomic(path, png.tobytes())
            written.append(path)
        write_atomic(record, (json.dumps(capture_record(captured, paths, cfg), indent=1)
                              + "\n").encode("utf-8"))
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def capture(source: FrameSource, count: int, settle: int, before: Callable[[int], None],
            cfg: Config, *, sleep: Callable[[float], None] = time.sleep) -> Captured:
    """Open ``source``, drop ``settle`` frames, keep ``count`` (``before(i)`` runs before
    frame i, 1-based), close it. Raises CaptureError for a camera that does not open,
    ends, fails, or does not hold the pinned exposure and gain."""
    try:
        _open(source, sleep)
        for _ in range(settle):
            _read(source)
        frames = []
        for i in range(1, count + 1):
            before(i)
            frames.append(_read(source))
    finally:
        source.close()
    return Captured(tuple(frames), tuple(_check(frames, cfg)))


def capture_record(captured: Captured, paths: Sequence[Path], cfg: Config) -> dict[str, Any]:
    """What PREFIX.json records: the files, the source and its settings, the camera's word."""
    first = captured.frames[0]
    return {
        "taken_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": first.source, "width": first.width, "height": first.height,
        "pixel_format": first.pixel_format,
        "exposure_us": cfg.source.exposure_us, "gain": cfg.source.gain,
        "auto_white_balance": cfg.source.auto_white_balance,
        "exposure_pinned": [f.exposure_pinned for f in captured.frames],
        "config_sha256": cfg.sha256(), "files": [p.name for p in paths],
        "warnings": list(captured.warnings),
    }


def _argument_problem(args: argparse.Namespace) -> str:
    if args.count < 1:
        return f"--count must be at least 1, got {args.count}"
    if args.settle < 0:
        return f"--settle must be 0 or more, got {args.settle}"
    if not args.every >= 0:
        return f"--every must be 0 or more seconds, got {args.every}"
    if not args.name or "/" in args.name or args.name.startswith("."):
        return f"--name must be a plain file-name prefix, got {args.name!r}"
    return ""


def _open(source: FrameSource, sleep: Callable[[float], None]) -> None:
    for attempt in range(1, OPEN_TRIES + 1):
        try:
            source.open()
            return
        except SourceFault as exc:
            if attempt == OPEN_TRIES:
                raise CaptureError(
                    f"{source.source_id} did not open: {exc} (is the eyepiece service "
                    "running and holding the camera? `systemctl stop eyepiece` first)") from exc
            sleep(OPEN_RETRY_S)


def _read(source: FrameSource) -> Frame:
    try:
        got = source.read()
    except EndOfStream as exc:
        raise CaptureError(f"{source.source_id} ended before all frames were taken") from exc
    except SourceFault as exc:
        raise CaptureError(f"{source.source_id} failed: {exc}") from exc
    if isinstance(got, RejectedFrame):
        raise CaptureError(f"{got.source}: {got.reason}")
    return got


def _check(frames: Sequence[Frame], cfg: Config) -> list[str]:
    """Warnings about the frames; CaptureError when the camera did not hold the pinned
    exposure and gain, or when the frames differ in size."""
    if len({f.image.shape for f in frames}) > 1:
        raise CaptureError("the frames differ in size: the camera changed mode while capturing")
    pinned = cfg.source.exposure_us > 0 and cfg.source.gain > 0
    if pinned and any(f.exposure_pinned is False for f in frames):
        raise CaptureError(
            f"the camera does not hold the pinned exposure ({cfg.source.exposure_us:g} us) "
            "and gain (the service log's WARNING says which and why): these frames would "
            "calibrate nothing")
    warnings = []
    if not pinned:
        warnings.append("the exposure or gain is automatic (source.exposure_us / gain = 0): "
                        "these frames are not for flat-iif or calibrate-iif")
    elif any(f.exposure_pinned is None for f in frames):
        warnings.append("the source cannot say whether the camera holds the pinned exposure "
                        "and gain (a GStreamer pipeline or a replay): check it pins them")
    if cfg.source.auto_white_balance and cfg.source.kind in ("v4l2", "picamera2"):
        warnings.append("the camera's automatic white balance is on (source."
                        "auto_white_balance = true): it changes the colour of fluorescence "
                        "light; set it false for HEp-2")
    if any(f.pixel_format in COMPRESSED_FORMATS for f in frames):
        warnings.append("the camera sent JPEG-compressed frames (MJPG): grey levels shift and "
                        "fine detail blurs; set source.fourcc = \"YUYV\" for calibration")
    return warnings
