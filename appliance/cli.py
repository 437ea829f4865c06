"""The `appliance` command: score still images, run the scoring loop, check a config.

    appliance score [--assay her2|hep2] [--json] IMAGE...
    appliance score --assay hep2 --cell [--json] CELL_IMAGE...
    appliance score --assay hep2 --well [--json] FIELD...
    appliance run [--source URI] [--display SINK] [--config FILE] [--store PATH]
    appliance config --defaults | --validate FILE
    appliance case start|end|control start|control end|status|list ...
    appliance report CASE_ID
    appliance audit export|verify
    appliance capture --out DIR [--count N] [--prompt | --every S]
    appliance flat-iif IMAGE... --save FLAT
    appliance calibrate-iif IMAGE... --reference-units U [--write CONFIG | --check]

Exit codes: 0 done; 1 an image hit an internal error; 2 bad command line or
config; 3 the model is missing or refused.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance import __version__, cli_capture, cli_cases, cli_hep2
from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.cell_files import is_mask_file, load_cell_image
from appliance.assays.hep2.well import call_well
from appliance.assays.her2.assay import Her2Assay
from appliance.assays.shell import INTERNAL_ERROR
from appliance.capture.frame import Frame
from appliance.capture.source import SourceError
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import Config, ConfigError, describe_defaults, load_config, with_overrides
from appliance.inference.manifest import ModelError
from appliance.outputs import hep2_json
from appliance.outputs.display.sinks import DisplayError
from appliance.outputs.store import ResultStore, StoreError
from appliance.outputs.table import format_hep2_well_row
from appliance.service import runner
from appliance.service.cases import CaseWorkflow, mqtt_case_messages
from appliance.service.logs import configure_logging
from appliance.service.recorder import Recorder


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (defaults for every key)")
    p.add_argument("--store", help="results store path (store.path)")
    p.add_argument("--overlay-dir", help="folder for overlay PNGs (overlay.dir)")
    p.add_argument("--precision", choices=("int8", "fp32"), help="inference.precision")
    p.add_argument("--threads", type=int, help="inference.threads")
    p.add_argument("--objective", help="optics.objective, e.g. 40x")
    p.add_argument("--um-per-px", type=float, help="optics.um_per_px (camera pixel at specimen)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="logging.level")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    ap = argparse.ArgumentParser(
        prog="appliance",
        description="Eyepiece: AI-assisted scoring at the microscope (HER2 IHC, HEp-2 IIF)")
    ap.add_argument("--version", action="version", version=f"eyepiece {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    sc = sub.add_parser("score", help="score still images (PNG/JPEG/TIFF, 8-bit RGB)")
    sc.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    sc.add_argument("--assay", choices=("her2", "hep2"),
                    help="assay (default: the config's, her2)")
    sc.add_argument("--cell", action="store_true",
                    help="hep2: each image is one cell (a crop): its pattern and probabilities")
    sc.add_argument("--well", action="store_true",
                    help="hep2: the images are fields of one well: after the fields, the "
                         "well's call from their cells pooled")
    sc.add_argument("--json", action="store_true", help="one JSON object per image")
    sc.add_argument("--cells", action="store_true", help="include per-cell results in the JSON")
    sc.add_argument("--no-overlay", action="store_true", help="write no overlay pictures")
    sc.add_argument("--no-store", action="store_true", help="do not add results to the store")
    _common(sc)

    rn = sub.add_parser("run", help="score frames from a source until SIGINT/SIGTERM")
    rn.add_argument("--source", help="source.uri: replay:PATH, synthetic[:SEED], v4l2:/dev/video0, "
                    "gstreamer:PIPELINE, picamera2[:N]")
    rn.add_argument("--fps", type=float, help="source.fps (replay pace or camera rate; 0 = as "
                    "fast as possible / the driver's default)")
    rn.add_argument("--loop", action="store_true", default=None, help="source.loop")
    rn.add_argument("--hold", type=float, help="source.hold_s: seconds each replayed still stays "
                    "in view")
    rn.add_argument("--mqtt", metavar="URL", help="mqtt.url: mqtt://HOST[:PORT] or "
                    "mqtts://HOST[:PORT] (TLS)")
    rn.add_argument("--device-id", help="mqtt.device_id (default: the host name)")
    rn.add_argument("--display", choices=("kmsdrm", "window", "offscreen", "picamera2", "file",
                                          "none"), help="display.sink")
    _common(rn)

    cli_cases.add_parsers(sub, _common)
    cli_capture.add_parser(sub, _common)
    cli_hep2.add_parsers(sub, _common)

    cf = sub.add_parser("config", help="print the defaults or validate a config file")
    group = cf.add_mutually_exclusive_group(required=True)
    group.add_argument("--defaults", action="store_true", help="print the default config")
    group.add_argument("--validate", type=Path, metavar="FILE", help="check a config file")
    return ap


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as dotted config keys (flags override the file)."""
    mapping = {
        "store": "store.path", "overlay_dir": "overlay.dir", "precision": "inference.precision",
        "threads": "inference.threads", "objective": "optics.objective",
        "um_per_px": "optics.um_per_px", "log_level": "logging.level", "source": "source.uri",
        "fps": "source.fps", "loop": "source.loop", "hold": "source.hold_s",
        "display": "display.sink", "assay": "assay", "mqtt": "mqtt.url",
        "device_id": "mqtt.device_id",
    }
    return {key: getattr(args, name) for name, key in mapping.items()
            if getattr(args, name, None) is not None}


def _load(args: argparse.Namespace) -> Config:
    cfg = with_overrides(load_config(args.config), _overrides(args))
    configure_logging(cfg.logging.level)
    return cfg


def cmd_score(args: argparse.Namespace) -> int:
    """Score each image once; print a table row or a JSON line per image."""
    cfg = _load(args)
    if args.cell and cfg.assay != "hep2":
        raise ConfigError("assay", "--cell classifies single HEp-2 cells: use --assay hep2")
    if args.well and (cfg.assay != "hep2" or args.cell):
        raise ConfigError("assay", "--well pools whole HEp-2 fields: use --assay hep2 "
                                   "without --cell")
    if cfg.assay == "hep2" and args.cell:
        return _classify_cells(args, cfg)
    overlay = None if args.no_overlay or not cfg.overlay.enabled else Path(cfg.overlay.dir)
    store = None if args.no_store else ResultStore(cfg.store.path)
    if cfg.assay == "hep2":
        try:
            return _score_hep2(args, cfg, overlay, store)
        finally:
            if store is not None:
                store.close()
    failures = 0
    try:
        with Her2Assay.from_config(cfg) as assay:
            cases = None
            if store is not None:
                # Stills scored while a case is open join it, as the service's fields do.
                cases = CaseWorkflow(cfg, store, case_message=mqtt_case_messages(
                    cfg, socket.gethostname()))
                assay.field_context = cases.context
            recorder = Recorder(
                store=store, config_sha256=cfg.sha256(), overlay_dir=overlay, out=sys.stdout,
                as_json=args.json, with_cells=args.cells,
                companion_for=(None if cases is None else
                               lambda result, image: cases.companion(result, image,
                                                                     source="score")))
            for seq, path in enumerate(args.images, start=1):
                try:
                    image = load_still(path, cfg.input)
                except ImageRejected as exc:
                    recorder.record(assay.refuse_input(str(path), seq, exc.code, exc.reason),
                                    None)
                    continue
                frame = Frame(image=image, seq=seq, timestamp=time.monotonic(), source=str(path))
                result = assay.score_guarded(frame)
                failures += result.reason_code == INTERNAL_ERROR
                recorder.record(result, image)
    finally:
        if store is not None:
            store.close()
    return 1 if failures else 0


def _score_hep2(args: argparse.Namespace, cfg: Config, overlay: Path | None,
                store: ResultStore | None) -> int:
    """`score --assay hep2`: whole IIF fields (and, with ``--well``, their pooled call)."""
    failures = 0
    results = []
    rows: list[tuple[str, int | None]] = []  # each field's store row, for the well
    with Hep2Assay.from_config(cfg) as assay:
        # Fields scored while a HEp-2 case is open join it, as the service's fields do.
        cases = (None if store is None else CaseWorkflow(
            cfg, store, case_message=mqtt_case_messages(cfg, socket.gethostname())))
        recorder = Recorder(store=store, config_sha256=cfg.sha256(), overlay_dir=overlay,
                            out=sys.stdout, as_json=args.json, with_cells=args.cells,
                            companion_for=(None if cases is None else
                                           lambda result, image: cases.companion(
                                               result, image, source="score")))
        for seq, path in enumerate(args.images, start=1):
            try:
                image = load_still(path, cfg.input, grey_ok=True)
            except ImageRejected as exc:
                refusal = assay.refuse_input(str(path), seq, exc.code, exc.reason)
                results.append(refusal)
                rows.append((refusal.file, recorder.record(refusal, None)))
                continue
            frame = Frame(image=image, seq=seq, timestamp=time.monotonic(), source=str(path))
            result = assay.score_guarded(frame)
            failures += result.reason_code == INTERNAL_ERROR
            results.append(result)
            rows.append((result.file, recorder.record(result, image)))
    if args.well:
        well = call_well(results, cfg.hep2)
        if all(row is not None for _, row in rows):  # every field is in the store
            well = replace(well, stored_fields=tuple((f, r) for f, r in rows if r is not None))
        recorder.record_well(well)
        print(hep2_json.to_json(hep2_json.well_to_dict(well)) if args.json
              else format_hep2_well_row(well))
    return 1 if failures else 0


def _classify_cells(args: argparse.Namespace, cfg: Config) -> int:
    """`score --assay hep2 --cell`: one cell per image, as the public cell datasets are.

    A companion mask beside an image (``CELL_mask.png``, the ICPR 2014 / I3A layout) is
    used as the cell's mask; mask files given as images themselves are skipped.
    """
    bad = 0
    small = replace(cfg.input, min_side_px=8)
    cells = [p for p in args.images if not is_mask_file(p)]
    for path in args.images:
        if is_mask_file(path):
            print(f"{path}: a companion mask (*_mask), not a cell: skipped", file=sys.stderr)
    if not cells:
        raise ConfigError("images", "every file given is a companion mask (*_mask): give the "
                          "cell images; their masks are found beside them")
    with Hep2Assay.from_config(cfg) as assay:
        for path in cells:
            try:
                image, mask = load_cell_image(path, small)
                call = assay.classify_cell_image(image, str(path), mask=mask)
            except ImageRejected as exc:  # unreadable, or refused by a gate (CellRefused)
                bad += 1
                print(json.dumps({"file": str(path), "assay": "hep2", "kind": "cell",
                                  "error": exc.reason, "reason_code": exc.code})
                      if args.json else f"{path}: not classified: {exc.reason}")
                continue
            if args.json:
                print(hep2_json.to_json(hep2_json.cell_call_to_dict(call)))
            else:
                top = sorted(call.probabilities.items(), key=lambda kv: -kv[1])[:3]
                print(f"{path}: {call.icap} {call.pattern} ({call.confidence:.2f}); "
                      + ", ".join(f"{n} {p:.2f}" for n, p in top[1:])
                      + "".join(f"\n  warning: {w}" for w in call.warnings))
    return 2 if bad == len(cells) else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the real-time pipeline until the source ends or SIGINT/SIGTERM, then drain."""
    cfg = _load(args)
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())  # re-read the config (systemd reload)
    counts = runner.run(cfg, stop=stop, out=sys.stdout, config_path=args.config, reload=reload)
    print(f"{counts['fields']} fields reported: {counts['scored']} scored, "
          f"{counts['not_scorable']} not scorable; results in {cfg.store.path}"
          + (f", overlays in {cfg.overlay.dir}" if cfg.overlay.enabled else ""))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the defaults, or validate a file and print its hash."""
    if args.defaults:
        print(describe_defaults(), end="")
        return 0
    cfg = load_config(args.validate)
    print(f"{args.validate}: valid (sha256 {cfg.sha256()[:16]})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `appliance` command."""
    args = build_parser().parse_args(argv)
    handlers = {"score": cmd_score, "run": cmd_run, "config": cmd_config,
                "case": lambda a: cli_cases.cmd_case(a, _load(a)),
                "report": lambda a: cli_cases.cmd_report(a, _load(a)),
                "audit": lambda a: cli_cases.cmd_audit(a, _load(a)),
                "calibrate-iif": lambda a: cli_hep2.cmd_calibrate_iif(a, _load(a)),
                "flat-iif": lambda a: cli_hep2.cmd_flat_iif(a, _load(a)),
                "capture": lambda a: cli_capture.cmd_capture(a, _load(a))}
    try:
        return handlers[args.command](args)
    except (ConfigError, SourceError, DisplayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"error: model refused: {exc}", file=sys.stderr)
        return 3
    except StoreError as exc:
        print(f"error: results store: {exc}", file=sys.stderr)
        return 2
