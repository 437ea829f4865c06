"""`appliance flat-iif` and `appliance calibrate-iif`: the HEp-2 intensity's light path.

    appliance flat-iif IMAGE... --save FLAT [--dark IMAGE...] [--half IMAGE...]
                       [--write CONFIG] [--config FILE]
    appliance calibrate-iif IMAGE... --reference-units U [--write CONFIG | --check [PERCENT]]
                            [--config FILE]

flat-iif: each IMAGE is a frame of a uniformly fluorescent slide (moved between frames);
the flat field (flat_field.py) is saved to FLAT and the command prints the line that names
it in the config. With ``--half``, frames of the slide at half the exposure, it also checks
that the camera is linear, which the one-point calibration needs.

calibrate-iif: each IMAGE is a field of the reference slide taken at the camera's pinned
exposure and gain (``source.exposure_us``, ``source.gain``), after the flat field. The
fields are scored with the HEp-2 assay, their intensity in grey levels gives
``units_per_grey`` (the median field, at most 20 % spread), and the command prints the
``[hep2.intensity]`` lines to put in the config. With ``--check`` it measures the same
fields against the calibration in use instead, the lab's periodic check (a lamp dims with
age): exit 1 when the reference reads further from its value than the tolerance.

With ``--write`` either writes the config (``--config``'s text, or an empty one) with its
keys changed and every other byte kept, atomically. Procedure: docs/hep2-calibration.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.calibration import (
    Calibration,
    CalibrationError,
    intensity_is_calibrated,
    reference_drift,
    units_per_grey_from_reference,
)
from appliance.assays.hep2.flat_field import (
    FlatField,
    FlatFieldError,
    configured_flat,
    flat_from_frames,
    flat_picture,
    gain_map,
    save_flat,
)
from appliance.assays.hep2.patterns import pattern
from appliance.assays.hep2.types import Hep2Cell
from appliance.capture.frame import Frame
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import Config, ConfigError, SourceConfig, config_from_dict
from appliance.files import write_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

TABLE = "hep2.intensity"
KEYS = ("exposure_ms", "gain", "units_per_grey", "flat_field_sha256")
FLAT_KEY = "flat_field_file"
EXIT_REFUSED = 2  # the calibration or flat field was refused: nothing written
EXIT_DRIFTED = 1  # --check: the reference reads beyond the tolerance
DEFAULT_DRIFT_PERCENT = 10.0


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the flat-iif and calibrate-iif subcommands to the `appliance` parser."""
    fl = sub.add_parser(
        "flat-iif", help="HEp-2 flat field of the light path from frames of a uniformly "
        "fluorescent slide (before calibrate-iif)")
    fl.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                    help="frames of the uniform slide, moved between frames (at least 3)")
    fl.add_argument("--save", type=Path, required=True, metavar="FLAT",
                    help="write the flat field (JSON) to this file")
    fl.add_argument("--dark", nargs="+", type=Path, default=[], metavar="IMAGE",
                    help="frames with the light path shut, at the same exposure and gain")
    fl.add_argument("--half", nargs="+", type=Path, default=[], metavar="IMAGE",
                    help="frames of the slide at half the exposure (same gain): checks that "
                         "the camera is linear")
    fl.add_argument("--write", type=Path, metavar="CONFIG",
                    help="write the config (--config's text) naming the flat field to this "
                         "file")
    common(fl)
    ci = sub.add_parser(
        "calibrate-iif", help="HEp-2 intensity calibration from fields of a reference slide "
        "(at the pinned exposure and gain)")
    ci.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                    help="reference-slide fields (at least 3)")
    ci.add_argument("--reference-units", type=float, required=True, metavar="U",
                    help="the reference slide's intensity in the lab's units")
    what = ci.add_mutually_exclusive_group()
    what.add_argument("--write", type=Path, metavar="CONFIG",
                      help="write the config (--config's text) with the calibration to this "
                           "file")
    what.add_argument("--check", type=float, nargs="?", const=DEFAULT_DRIFT_PERCENT,
                      metavar="PERCENT",
                      help="check the calibration in use instead: exit 1 when the reference "
                           f"reads more than PERCENT (default {DEFAULT_DRIFT_PERCENT:g}) off")
    common(ci)


def cmd_calibrate_iif(args: argparse.Namespace, cfg: Config) -> int:
    """Score the reference fields, print the calibration, and write it when asked.

    Raises ConfigError when the camera's exposure or gain is not pinned; returns 2 (and
    writes nothing) when the fields refuse a calibration, 0 when done.
    """
    require_pinned(cfg.source)
    _, flat_sha = configured_flat(cfg.hep2.intensity)
    if args.check is not None:
        return check_calibration(args, cfg, flat_sha)
    try:
        readings = measure_reference_fields(cfg, args.images)
        cal = units_per_grey_from_reference([r.grey for r in readings], args.reference_units)
        lines = calibration_lines(cfg.source, cal, flat_sha)
        new_text = None
        if args.write is not None:
            old_text = _read_text(args.config) if args.config is not None else ""
            new_text = update_config_text(old_text,
                                          calibration_values(cfg.source, cal, flat_sha))
    except CalibrationError as exc:
        print(f"error: calibration refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for reading in readings:
        print(reading.line())
    print(f"median {cal.median_grey:.2f} grey over {cal.fields} fields (spread {cal.cv:.1%}); "
          f"reference {cal.reference_units:g} units -> {cal.units_per_grey:.6g} units per grey")
    for warning in cal.warnings:
        print(f"warning: {warning}")
    print("\n".join(lines))
    if args.write is not None and new_text is not None:
        try:
            write_atomic(args.write, new_text.encode("utf-8"))
        except OSError as exc:
            print(f"error: could not write {args.write}: {exc.strerror or exc} (the config is "
                  "as it was; put the printed lines in it by hand)", file=sys.stderr)
            return EXIT_REFUSED
        print(f"written to {args.write}")
    return 0


def check_calibration(args: argparse.Namespace, cfg: Config, flat_sha: str) -> int:
    """``calibrate-iif --check``: the reference read at the calibration in use.

    Returns 0 within the tolerance, 1 beyond it (recalibrate), 2 when there is no
    calibration to check or the fields refuse a measurement.
    """
    intensity = cfg.hep2.intensity
    calibrated, why = intensity_is_calibrated(cfg.source, intensity, flat_sha)
    if not calibrated:
        print(f"error: no calibration to check: {why}", file=sys.stderr)
        return EXIT_REFUSED
    tolerance = float(args.check)
    if not (math.isfinite(tolerance) and tolerance > 0):
        print(f"error: --check needs a positive tolerance in per cent, got {args.check}",
              file=sys.stderr)
        return EXIT_REFUSED
    try:
        readings = measure_reference_fields(cfg, args.images)
        drift = reference_drift([r.grey for r in readings], args.reference_units,
                                intensity.units_per_grey)
    except CalibrationError as exc:
        print(f"error: check refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for reading in readings:
        print(reading.line(intensity.units_per_grey))
    within = abs(drift.percent) <= tolerance
    print(f"the reference reads {drift.units:.2f} units (median of {drift.fields} fields, "
          f"spread {drift.cv:.1%}) against its {drift.reference_units:g}: "
          f"{drift.percent:+.1f}%, {'within' if within else 'beyond'} the {tolerance:g}% "
          "tolerance")
    if not within:
        print("recalibrate: run calibrate-iif on these fields with --write (and check the "
              "lamp, the light path and the focus first)")
    return 0 if within else EXIT_DRIFTED


def cmd_flat_iif(args: argparse.Namespace, cfg: Config) -> int:
    """Make the flat field from the uniform slide's frames, save it, print (and write) the
    config line. Returns 2 (nothing written) when the frames refuse a flat field."""
    try:
        frames = [_read_frame(path, cfg) for path in args.images]
        dark = [_read_frame(path, cfg) for path in args.dark]
        half = [_read_frame(path, cfg) for path in args.half]
        flat = flat_from_frames(frames, dark, half=half)
        new_text = None
        if args.write is not None:
            old_text = _read_text(args.config) if args.config is not None else ""
            new_text = update_config_text(old_text, {FLAT_KEY: str(args.save)})
    except (FlatFieldError, CalibrationError) as exc:
        print(f"error: flat field refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        sha, previous = _save_keeping_previous(flat, args.save)
    except OSError as exc:
        print(f"error: could not save the flat field to {args.save}: {exc.strerror or exc} "
              "(the flat field in use, if any, is as it was)", file=sys.stderr)
        return EXIT_REFUSED
    if previous is not None:
        print(f"the flat field that was in {args.save} is kept as {previous}")
    picture = args.save.with_name(args.save.name + ".png")
    ok, png = cv2.imencode(".png", flat_picture(flat))
    try:
        if ok:
            write_atomic(picture, png.tobytes())
            print(f"picture of the light: {picture}")
    except OSError as exc:  # the flat is saved; the picture is only for looking at
        print(f"warning: could not write {picture}: {exc.strerror or exc}")
    print(flat_summary(flat))
    for warning in flat.warnings:
        print(f"warning: {warning}")
    print(f"saved to {args.save} (sha256 {sha[:16]})")
    print(f"[{TABLE}]\n{FLAT_KEY} = {toml_value(str(args.save))}")
    if cfg.hep2.intensity.units_per_grey != 1.0 or cfg.hep2.intensity.exposure_ms > 0:
        print("note: the intensity calibration holds only with the flat field it was made "
              "with: run `appliance calibrate-iif` again once this flat field is in the config")
    if args.write is not None and new_text is not None:
        try:
            write_atomic(args.write, new_text.encode("utf-8"))
        except OSError as exc:
            print(f"error: could not write {args.write}: {exc.strerror or exc} (the flat field "
                  f"is saved in {args.save}; name it in the config by hand)", file=sys.stderr)
            return EXIT_REFUSED
        print(f"written to {args.write}")
    return 0


def _save_keeping_previous(flat: FlatField, path: Path) -> tuple[str, Path | None]:
    """Save the flat field; one already at ``path`` is kept as ``path.previous`` (and put
    back when the new one cannot be written). Returns the new file's sha256 and where the
    previous one went."""
    previous = path.with_name(path.name + ".previous") if path.exists() else None
    if previous is not None:
        os.replace(path, previous)
    try:
        return save_flat(flat, path), previous
    except OSError:
        if previous is not None:
            os.replace(previous, path)
        raise


def flat_summary(flat: FlatField) -> str:
    """What the flat field measured, in one line."""
    dark = f"dark level {flat.dark_grey:.1f} grey" if flat.dark_grey else "no dark frame"
    linear = ("linearity not checked (--half)" if flat.half_exposure_ratio is None else
              "half the exposure reads {:.3f} and {:.3f} of the grey (dim and bright parts; "
              "linear: 0.5)".format(*flat.half_exposure_ratio))
    return (f"flat field from {flat.frames} frames of {flat.width}x{flat.height}: the light "
            f"falls to {flat.corner_light:.0%} of the brightest at its dimmest; brightest "
            f"{flat.brightest_grey:.1f} grey, {dark}; {linear}")


def _read_frame(path: Path, cfg: Config) -> Any:
    """A frame of the flat field's slide, or FlatFieldError naming the file."""
    try:
        return load_still(path, cfg.input, grey_ok=True)
    except ImageRejected as exc:
        raise FlatFieldError(f"{path}: not read: {exc.reason}") from exc


def require_pinned(source: SourceConfig) -> None:
    """A calibration needs the camera's exposure and gain pinned: ConfigError otherwise."""
    if source.exposure_us <= 0:
        raise ConfigError("source.exposure_us", "calibrate-iif needs the camera exposure "
                          "pinned (auto exposure off): set source.exposure_us in µs")
    if source.gain <= 0:
        raise ConfigError("source.gain", "calibrate-iif needs the camera gain pinned: set "
                          "source.gain")


@dataclass(frozen=True)
class ReferenceReading:
    """One reference field as the assay read it."""

    path: Path
    grey: float  # specimen intensity, grey levels above background
    cells: int  # interphase cells measured
    pattern: str  # the pattern most cells read as, for the lab's record

    def line(self, units_per_grey: float | None = None) -> str:
        """The field's printed line: grey levels, or units at ``units_per_grey``."""
        value = (f"{self.grey:.2f} grey levels above background" if units_per_grey is None
                 else f"{self.grey * units_per_grey:.2f} units")
        return f"{self.path}: {value} ({self.cells} cells; {self.pattern})"


def cells_read_as(cells: Sequence[Hep2Cell]) -> str:
    """The pattern most whole interphase cells read as, and their share: "homogeneous
    AC-1, 92% of cells". Not the specimen call, which before a calibration may be
    "negative" for a cut-off serum read a little low."""
    names = [c.pattern for c in cells if not c.mitotic and not c.touches_edge]
    if not names:
        return "no whole interphase cell"
    top, count = Counter(names).most_common(1)[0]
    return f"{top} {pattern(top).icap}, {count / len(names):.0%} of cells"


def measure_reference_fields(cfg: Config, images: Sequence[Path]) -> list[ReferenceReading]:
    """Each field's specimen intensity in grey levels above background, scored by Hep2Assay,
    the interphase cells it was measured on, and the pattern most whole cells read as.

    Raises CalibrationError naming the first field that could not be measured.
    """
    out: list[ReferenceReading] = []
    with Hep2Assay.from_config(cfg) as assay:
        for seq, path in enumerate(images, start=1):
            try:
                image = load_still(path, cfg.input, grey_ok=True)
            except ImageRejected as exc:
                raise CalibrationError(f"{path}: not read: {exc.reason}") from exc
            if assay.flat is not None:
                try:
                    gain_map(assay.flat, image.shape[0], image.shape[1])
                except FlatFieldError as exc:
                    raise CalibrationError(f"{path}: {exc}") from exc
            frame = Frame(image=image, seq=seq, timestamp=time.monotonic(), source=str(path))
            result = assay.score(frame)
            if result.intensity_units is None:
                raise CalibrationError(f"{path}: not measured: {result.reason}")
            if result.cells_interphase == 0:
                raise CalibrationError(f"{path}: no interphase cell found: not a field of a "
                                       "stained reference slide")
            # The assay reports units at the config's current calibration: undo it.
            out.append(ReferenceReading(
                path, result.intensity_units / cfg.hep2.intensity.units_per_grey,
                result.cells_interphase, cells_read_as(result.cells)))
    return out


def calibration_values(source: SourceConfig, cal: Calibration,
                       flat_sha256: str = "") -> dict[str, float | str]:
    """The [hep2.intensity] keys a calibration sets (with the flat field it was made with)."""
    return {"exposure_ms": source.exposure_us / 1000.0, "gain": source.gain,
            "units_per_grey": float(f"{cal.units_per_grey:.6g}"),
            "flat_field_sha256": flat_sha256}


def calibration_lines(source: SourceConfig, cal: Calibration,
                      flat_sha256: str = "") -> list[str]:
    """The TOML lines to put in the config."""
    values = calibration_values(source, cal, flat_sha256)
    return [f"[{TABLE}]"] + [f"{k} = {toml_value(values[k])}" for k in KEYS]


def toml_value(value: float | str) -> str:
    """A TOML literal for a float or a string (JSON's string escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else toml_float(value)


def toml_float(value: float) -> str:
    """A finite float as a TOML float literal (always with a point or an exponent)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    text = repr(float(value))
    return text if any(c in text for c in ".eE") else text + ".0"


_TABLE_LINE = re.compile(r"^\s*\[")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]#]+?)\s*\]\s*(#.*)?$")


def update_config_text(text: str, values: Mapping[str, float | str]) -> str:
    """``text`` with the [hep2.intensity] ``values`` set; every other byte kept.

    Keys present in a ``[hep2.intensity]`` table are changed in place (a trailing comment
    kept); missing ones are added at the end of that table; a missing table is appended.
    The result is parsed and compared with the original, so a config written in a form this
    editor does not follow (inline tables, dotted keys) is refused with CalibrationError,
    never damaged.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    start = _find_table(lines, TABLE)
    if start is None:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        block = [f"[{TABLE}]{newline}"] + [f"{k} = {toml_value(v)}{newline}"
                                          for k, v in values.items()]
        lines += ([newline] if lines else []) + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if _TABLE_LINE.match(lines[i])),
                   len(lines))
        missing = dict(values)
        for i in range(start + 1, end):
            for key in list(missing):
                changed = _set_value(lines[i], key, missing[key])
                if changed is not None:
                    lines[i] = changed
                    del missing[key]
        last = max((i for i in range(start, end) if lines[i].strip()), default=start)
        if not lines[last].endswith(("\n", "\r")):
            lines[last] += newline
        lines[last + 1:last + 1] = [f"{k} = {toml_value(v)}{newline}"
                                    for k, v in missing.items()]
    new_text = "".join(lines)
    _verify_update(text, new_text, values)
    return new_text


def _find_table(lines: Sequence[str], name: str) -> int | None:
    """Index of the ``[name]`` header line (spaces around the dots allowed)."""
    for i, line in enumerate(lines):
        m = _HEADER.match(line.rstrip("\r\n"))
        if m and re.sub(r"\s*\.\s*", ".", m.group(1)) == name:
            return i
    return None


def _set_value(line: str, key: str, value: float | str) -> str | None:
    """``line`` with ``key``'s value replaced, or None when the line does not set ``key``."""
    m = re.match(rf"^(\s*{re.escape(key)}\s*=\s*)([^#\r\n]*?)(\s*#[^\r\n]*)?(\r?\n)?$", line)
    if m is None:
        return None
    return f"{m.group(1)}{toml_value(value)}{m.group(3) or ''}{m.group(4) or ''}"


def _verify_update(old: str, new: str, values: Mapping[str, float | str]) -> None:
    """The edited text parses, holds ``values`` and is otherwise the same config."""
    try:
        before, after = tomllib.loads(old), tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(
            f"the config could not be updated automatically ({exc}): it sets {TABLE} in a "
            "form this command does not edit; put the printed lines in it by hand") from exc
    table = after.get("hep2", {}).get("intensity", {})
    if any(table.get(k) != v for k, v in values.items()):
        raise CalibrationError(f"the updated config does not hold the calibration in "
                               f"[{TABLE}]: put the printed lines in it by hand")
    for data in (before, after):
        for key in values:
            data.get("hep2", {}).get("intensity", {}).pop(key, None)
        hep2 = data.get("hep2", {})
        if hep2.get("intensity") == {}:
            del hep2["intensity"]
        if data.get("hep2") == {}:
            del data["hep2"]
    if before != after:
        raise CalibrationError("updating the config would change other keys: put the printed "
                               "lines in it by hand")
    try:
        config_from_dict(tomllib.loads(new))
    except ConfigError as exc:
        raise CalibrationError(f"the updated config is not valid: {exc}") from exc


def _read_text(path: Path) -> str:
    """The file's text with its line endings as they are (read_text would translate them)."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise CalibrationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path} is not UTF-8 text: {exc}") from exc
