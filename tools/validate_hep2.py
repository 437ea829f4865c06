"""Measure the HEp-2 assay on a lab's own labelled images, as the box reads them.

    python -m tools.validate_hep2 --cells-dir LAB/cells [--um-per-px 0.35]
    python -m tools.validate_hep2 --fields-csv LAB/fields.csv [--wells] [--um-per-px 0.5]
        [--config /etc/eyepiece/config.toml] [--models-dir DIR] [--precision int8]
        [--out-dir build/validate] [--json build/validate/record.json]

Before a lab relies on the box, or on a model it retrained (tools/train_hep2.py), it
measures it on labelled images the model never saw:

* **cells** (``--cells-dir``): a folder per class of single-cell images, the ICPR 2014 /
  I3A layout that the training tool reads (class names through patterns.canonical,
  companion ``*_mask`` files used). Every image goes through the box's own single-cell
  path (`appliance score --assay hep2 --cell`). Figures: mean class accuracy (the mean of
  the per-class recalls), the same at the ICAP competent level (a subtype read as another
  of its group counts as right), recall per class, and the confusion matrix.
* **fields** (``--fields-csv``): whole fields with a CSV of specimen labels,
  ``file,pattern[,pattern2]`` as for training (``negative`` for a negative well). Every
  field is scored as `appliance score --assay hep2` scores it. Figures: pattern accuracy
  (first reported pattern, one-pattern fields), positive / negative agreement, mixed
  fields reporting both patterns (also at the competent level), one-pattern fields given
  a second pattern, fields not scorable. With ``--wells``, the fields of one folder are one
  well's (they must share their label): the same figures for the wells, each called from
  its fields pooled, as `appliance score --assay hep2 --well` calls it, and the fields a
  well names as unlike the others (a field filed in the wrong patient's folder?).

``--um-per-px`` is the scale the images were taken at; without it the config's (or the
objective's) is used, and where none is set the box estimates it, as it would in use.
``--config`` validates the box as the lab configured it. The record (``--json``) names
the model (sha256), the config (sha256), the data (a sha256 over every file's path and
content) and the date: keep it with the lab's validation documents. Nothing is written
into the model's manifest; its ``validated_on`` stays what its maker measured.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.cell_files import IMAGE_SUFFIXES, is_mask_file, load_cell_image
from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import call_well
from appliance.capture.frame import Frame
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import Config, Hep2Config, load_config, with_overrides
from appliance.inference.manifest import ModelError
from tools.eval_hep2 import (
    COMPETENT_LABELS,
    NOT_SCORABLE,
    SPECIMEN_LABELS,
    _labels,
    competent,
    competent_confusion,
    per_class_recall,
    plot_confusion,
    reports_both_competent,
    reports_false_pattern,
    reports_truth,
)
from tools.hep2_dataset import folder_classes, read_specimen_csv
from tools.numbers import write_numbers

UNREADABLE = "unreadable"


@dataclass(frozen=True)
class CellOutcome:
    """One labelled single-cell image, as the box read it."""

    file: str
    truth: str
    called: str  # a class name, or UNREADABLE: not read or refused (error says why)
    confidence: float
    scale_source: str
    mask_source: str
    error: str | None = None


@dataclass(frozen=True)
class FieldOutcome:
    """One labelled field, as the box scored it."""

    file: str
    truth: tuple[str, ...]
    status: str
    reported: tuple[str, ...]
    positive: bool | None
    intensity: float | None
    reason: str | None

    @property
    def kind(self) -> str:
        """``negative``, ``single`` or ``mixed``, from the label."""
        if len(self.truth) > 1:
            return "mixed"
        return "negative" if self.truth[0] == "negative" else "single"

    @property
    def called(self) -> tuple[str, ...]:
        """The reported patterns of a scored field; none for a refused one."""
        return self.reported if self.status == "scored" else ()


# ------------------------------------------------------------------------------ reading


def labelled_cells(root: Path) -> list[tuple[Path, str]]:
    """(image, class name) of every cell image under ``root``; masks left out."""
    out = []
    for folder, name in folder_classes(root).items():
        out += [(p, name) for p in sorted((root / folder).iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask_file(p)]
    if not out:
        raise ValueError(f"{root}: the class folders hold no images "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def validate_cells(assay: Hep2Assay, files: Sequence[tuple[Path, str]], *,
                   progress: bool = False) -> list[CellOutcome]:
    """Every cell image through the box's single-cell path."""
    small = replace(assay.cfg.input, min_side_px=8)  # as `score --cell` reads them
    out = []
    for path, truth in tqdm(files, desc="cells", disable=not progress):
        try:
            image, mask = load_cell_image(path, small)
            call = assay.classify_cell_image(image, str(path), mask=mask)
        except ImageRejected as exc:  # unreadable, or refused by a gate (CellRefused)
            out.append(CellOutcome(str(path), truth, UNREADABLE, 0.0, "", "",
                                   f"{exc.code}: {exc.reason}"))
            continue
        out.append(CellOutcome(str(path), truth, call.pattern, call.confidence,
                               call.um_per_px_source, call.mask_source))
    return out


def validate_fields(assay: Hep2Assay, csv_path: Path, *, progress: bool = False
                    ) -> list[tuple[FieldOutcome, Hep2Result]]:
    """Every labelled field scored as `appliance score --assay hep2` scores it (at the
    scale the assay's config declares, else estimated): its outcome, and the result (the
    cells, for the wells)."""
    out = []
    rows = read_specimen_csv(csv_path)
    for seq, (name, truth) in enumerate(tqdm(rows, desc="fields", disable=not progress), 1):
        path = csv_path.parent / name
        try:
            image = load_still(path, assay.cfg.input, grey_ok=True)
        except ImageRejected as exc:
            result: Hep2Result = assay.refuse_input(str(path), seq, exc.code, exc.reason)
        else:
            result = assay.score_guarded(Frame(image=image, seq=seq, timestamp=0.0,
                                               source=str(path)))
        out.append((FieldOutcome(
            str(path), truth, result.status, tuple(p.name for p in result.patterns),
            result.positive, result.intensity_units, result.reason), result))
    return out


def validate_wells(fields: Sequence[tuple[FieldOutcome, Hep2Result]], cfg: Hep2Config
                   ) -> tuple[list[FieldOutcome], dict[str, list[str]]]:
    """The wells, one per folder of the fields (as `appliance score --assay hep2 --well`
    calls them from their fields pooled), each judged by its fields' label, and the
    fields each well names as unlike the others (by folder; a field of another patient
    filed in the wrong folder shows so). ValueError naming the folder whose fields carry
    different labels."""
    folders: dict[Path, list[tuple[FieldOutcome, Hep2Result]]] = {}
    for outcome, result in fields:
        folders.setdefault(Path(outcome.file).parent, []).append((outcome, result))
    out = []
    odd: dict[str, list[str]] = {}
    for folder, group in folders.items():
        labels = {o.truth for o, _ in group}
        if len(labels) > 1:
            raise ValueError(f"{folder}: its fields carry different labels "
                             f"({', '.join(sorted('+'.join(t) for t in labels))}); with "
                             "--wells a folder is one well, of one label")
        well = call_well([r for _, r in group], cfg)
        out.append(FieldOutcome(str(folder), group[0][0].truth, well.status,
                                tuple(p.name for p in well.patterns), well.positive,
                                well.intensity_units, well.reason))
        if well.odd_fields:
            odd[str(folder)] = list(well.odd_fields)
    return out, odd


def data_digest(paths: Iterable[Path], root: Path) -> str:
    """sha256 over every file's path (relative to ``root``) and content, in path order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.relpath(p, root).encode("utf-8") + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# ------------------------------------------------------------------------------ figures


def cell_confusion(outcomes: Iterable[CellOutcome]) -> list[list[int]]:
    """Rows: truth class (NAMES); columns: NAMES then unreadable."""
    m = [[0] * (len(NAMES) + 1) for _ in NAMES]
    for o in outcomes:
        col = len(NAMES) if o.called == UNREADABLE else NAMES.index(o.called)
        m[NAMES.index(o.truth)][col] += 1
    return m


def cell_summary(outcomes: Sequence[CellOutcome]) -> dict[str, object]:
    """Mean class accuracy and the rest; an unreadable image counts as wrong."""
    full = cell_confusion(outcomes)
    square = [row[:len(NAMES)] for row in full]
    # An unreadable cell is in its row's total but on no diagonal: it counts as wrong.
    recalls = per_class_recall(full)
    present = [r for r in recalls if r is not None]
    # The same at the competent level, the unreadable ones still wrong.
    unread = [0] * len(COMPETENT_LABELS)
    for name, row in zip(NAMES, full, strict=True):
        unread[COMPETENT_LABELS.index(competent(name))] += row[-1]
    by_group = [[*row, u] for row, u in zip(competent_confusion(square), unread, strict=True)]
    group_recalls = [r for r in per_class_recall(by_group) if r is not None]
    return {
        "images": len(outcomes),
        "unreadable": sum(o.called == UNREADABLE for o in outcomes),
        "mean_class_accuracy": float(np.mean(present)) if present else None,
        "competent_mean_class_accuracy": (float(np.mean(group_recalls)) if group_recalls
                                          else None),
        "per_class_recall": {n: r for n, r in zip(NAMES, recalls, strict=True) if r is not None},
        "per_class_images": {n: sum(row) for n, row in zip(NAMES, full, strict=True)
                             if sum(row)},
        "scale_sources": dict(Counter(o.scale_source for o in outcomes if o.scale_source)),
        "mask_sources": dict(Counter(o.mask_source for o in outcomes if o.mask_source)),
        "confusion": full,
    }


def field_summary(outcomes: Sequence[FieldOutcome]) -> dict[str, object]:
    """Specimen-level figures (None where no field of that kind was given)."""
    def rate(hits: int, total: int) -> float | None:
        return hits / total if total else None

    single = [o for o in outcomes if o.kind != "mixed"]
    mixed = [o for o in outcomes if o.kind == "mixed"]
    stained = [o for o in single if o.kind == "single"]
    return {
        "fields": len(outcomes),
        "not_scorable": sum(o.status != "scored" for o in outcomes),
        "pattern_accuracy": rate(sum(reports_truth(o.kind, o.truth, o.called)
                                     for o in single), len(single)),
        "positive_negative_agreement": rate(
            sum(o.positive is not None and o.positive == (o.kind != "negative")
                for o in outcomes), len(outcomes)),
        "mixed_both_reported": rate(sum(reports_truth("mixed", o.truth, o.called)
                                        for o in mixed), len(mixed)),
        "mixed_both_competent": rate(sum(reports_both_competent(o.truth, o.called)
                                         for o in mixed), len(mixed)),
        "single_with_false_second": rate(sum(reports_false_pattern("single", o.truth, o.called)
                                             for o in stained), len(stained)),
    }


def field_confusion(outcomes: Iterable[FieldOutcome]) -> list[list[int]]:
    """Rows: label (one-pattern and negative fields); columns: first reported pattern."""
    m = [[0] * len(SPECIMEN_LABELS) for _ in NAMES]
    for o in outcomes:
        if o.kind == "mixed":
            continue
        first = o.called[0] if o.called else NOT_SCORABLE
        m[NAMES.index(o.truth[0])][SPECIMEN_LABELS.index(first)] += 1
    return m


# ------------------------------------------------------------------------------ report


def _f(v: object) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_cells(s: dict[str, object], outcomes: Sequence[CellOutcome]) -> str:
    """The cell figures as text, with the most confident mistakes."""
    recall = s["per_class_recall"]
    count = s["per_class_images"]
    assert isinstance(recall, dict) and isinstance(count, dict)
    lines = [f"cells: {s['images']} images ({s['unreadable']} unreadable); scale "
             f"{s['scale_sources']}, mask {s['mask_sources']}",
             f"  mean class accuracy            {_f(s['mean_class_accuracy'])}",
             f"  at the ICAP competent level    {_f(s['competent_mean_class_accuracy'])}"]
    lines += [f"  {name:24s} {count[name]:5d} images  recall {recall[name]:.3f}"
              for name in recall]
    wrong = sorted((o for o in outcomes if o.called != o.truth), key=lambda o: -o.confidence)
    if wrong:
        lines.append("  most confident mistakes:")
        lines += [f"    {o.file}: {o.truth} read as {o.called} ({o.confidence:.2f})"
                  + (f" - {o.error}" if o.error else "") for o in wrong[:10]]
    return "\n".join(lines)


def format_fields(s: dict[str, object], outcomes: Sequence[FieldOutcome]) -> str:
    """The field figures as text, with every field the box got wrong."""
    lines = [f"fields: {s['fields']} ({s['not_scorable']} not scorable)"]
    lines += [f"  {k.replace('_', ' '):32s} {_f(s[k])}" for k in (
        "pattern_accuracy", "positive_negative_agreement", "mixed_both_reported",
        "mixed_both_competent", "single_with_false_second")]
    for o in outcomes:
        right = (reports_truth(o.kind, o.truth, o.called)
                 and o.positive == (o.kind != "negative"))
        if not right:
            got = "+".join(o.called) or (o.reason or "no pattern")
            lines.append(f"  {o.file}: labelled {'+'.join(o.truth)}, box: {got}"
                         + ("" if o.intensity is None else f" ({o.intensity:.1f} units)"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: at least one of --cells-dir and --fields-csv."""
    ap = argparse.ArgumentParser(prog="python -m tools.validate_hep2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells-dir", type=Path, help="DIR/<class>/*.png single-cell images")
    ap.add_argument("--fields-csv", type=Path, help="file,pattern[,pattern2] per field")
    ap.add_argument("--wells", action="store_true",
                    help="the fields of one folder (as the CSV names them) are one well's: "
                         "also measure the wells, each called from its fields pooled")
    ap.add_argument("--um-per-px", type=float, default=None,
                    help="the images' scale, cells and fields alike (run them apart when "
                         "theirs differ; default: the config's, else estimated)")
    ap.add_argument("--config", type=Path, default=None, help="the box's config file")
    ap.add_argument("--models-dir", default=None, help="default: the config's (models/)")
    ap.add_argument("--precision", choices=("int8", "fp32"), default=None,
                    help="default: the config's (int8)")
    ap.add_argument("--out-dir", type=Path, default=Path("build/validate"),
                    help="folder for the confusion PNGs")
    ap.add_argument("--json", type=Path, default=None, help="write the validation record")
    args = ap.parse_args(argv)
    if args.cells_dir is None and args.fields_csv is None:
        ap.error("give --cells-dir, --fields-csv or both")
    if args.wells and args.fields_csv is None:
        ap.error("--wells groups the fields of --fields-csv")
    if args.um_per_px is not None and not 0.0 < args.um_per_px < 100.0:
        ap.error(f"--um-per-px {args.um_per_px}: not a scale in µm per pixel")
    return args


def box_config(args: argparse.Namespace) -> Config:
    """The box's config with this run's overrides: the assay, and what the flags set."""
    overrides: dict[str, object] = {"assay": "hep2"}
    if args.models_dir is not None:
        overrides["inference.models_dir"] = args.models_dir
    if args.precision is not None:
        overrides["inference.precision"] = args.precision
    if args.um_per_px is not None:
        overrides["optics.um_per_px"] = args.um_per_px
    return with_overrides(load_config(args.config), overrides)


def _cells_record(assay: Hep2Assay, root: Path, cells: Sequence[tuple[Path, str]],
                  out_dir: Path) -> dict[str, object]:
    """Validate the cell folder: print the figures, draw the confusion, return the record."""
    outcomes = validate_cells(assay, cells, progress=True)
    summary = cell_summary(outcomes)
    print(format_cells(summary, outcomes))
    png = out_dir / "hep2_validate_cells.png"
    full = cell_confusion(outcomes)
    present = [i for i, row in enumerate(full) if sum(row)]
    plot_confusion([full[i] for i in present], _labels([NAMES[i] for i in present]),
                   _labels([*NAMES, UNREADABLE]),
                   f"{assay.model.name} on {root} (mean class acc "
                   f"{_f(summary['mean_class_accuracy'])})", png)
    print(f"plot: {png}")
    masks = [m for m in root.rglob("*") if is_mask_file(m)]
    return {"dir": str(root), "data_sha256": data_digest([p for p, _ in cells] + masks, root),
            **summary, "outcomes": [asdict(o) for o in outcomes]}


def _fields_record(assay: Hep2Assay, csv_path: Path, names: Sequence[str],
                   out_dir: Path, *, wells: bool = False) -> dict[str, object]:
    """Validate the labelled fields (and, with ``wells``, their folders as wells): print,
    draw, return the record. ValueError for a folder of mixed labels."""
    scored = validate_fields(assay, csv_path, progress=True)
    fields = [o for o, _ in scored]
    summary = field_summary(fields)
    print(format_fields(summary, fields))
    well_record: dict[str, object] = {}
    if wells:
        pooled, odd = validate_wells(scored, assay.cfg.hep2)
        well_summary = field_summary(pooled)
        print(format_fields(well_summary, pooled).replace("fields:", "wells:", 1))
        if odd:
            print(f"{len(odd)} of {len(pooled)} wells name a field unlike the others (of "
                  "another well? check how these files were filed and labelled):")
            for folder, files in odd.items():
                print(f"  {folder}: {', '.join(files)}")
        counted = {("wells" if k == "fields" else k): v for k, v in well_summary.items()}
        well_record = {"wells": {**counted, "outcomes": [asdict(o) for o in pooled],
                                 "odd_fields": odd}}
    png = out_dir / "hep2_validate_fields.png"
    plot_confusion(field_confusion(fields), _labels(NAMES), _labels(SPECIMEN_LABELS),
                   f"{assay.model.name} on {csv_path.name}", png)
    print(f"plot: {png}")
    paths = [csv_path] + [csv_path.parent / n for n in names if (csv_path.parent / n).is_file()]
    return {"csv": str(csv_path), "data_sha256": data_digest(paths, csv_path.parent),
            **summary, "outcomes": [asdict(o) for o in fields], **well_record}


def main(argv: Sequence[str] | None = None) -> int:
    """Validate; print the figures, write the PNGs and the record. Exit 2 on a bad dataset
    or config, 3 when the model is missing or does not match its manifest."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = box_config(args)
        cells = labelled_cells(args.cells_dir) if args.cells_dir else []
        rows = read_specimen_csv(args.fields_csv) if args.fields_csv else []
    except (ValueError, OSError) as exc:
        print(f"validate_hep2: {exc}", file=sys.stderr)
        return 2
    record: dict[str, object] = {"tool": "tools/validate_hep2.py",
                                 "date": date.today().isoformat(),
                                 "config_sha256": cfg.sha256(), "um_per_px": args.um_per_px}
    try:
        assay = Hep2Assay.from_config(cfg)
    except ModelError as exc:
        print(f"validate_hep2: {exc}", file=sys.stderr)
        return 3
    with assay:
        record["model"] = asdict(assay.model)
        print(f"model {assay.model.name} {assay.model.precision} {assay.model.sha256[:16]}")
        if cells:
            record["cells"] = _cells_record(assay, args.cells_dir, cells, args.out_dir)
        if rows:
            try:
                record["fields"] = _fields_record(assay, args.fields_csv,
                                                  [n for n, _ in rows], args.out_dir,
                                                  wells=args.wells)
            except ValueError as exc:
                print(f"validate_hep2: {exc}", file=sys.stderr)
                return 2
    if args.json is not None:
        write_numbers(args.json, record)
        print(f"record: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
