"""The HEp-2 result JSON: one object per field (`appliance score --assay hep2 --json`), and
one per well with ``--well`` (the fields pooled: ``docs/hep2-well.schema.json``).

Schema: ``docs/hep2-result.schema.json`` (JSON Schema 2020-12), documented in
``docs/hep2-json.md``. Single-cell calls (``--cell``) have their own small object,
``cell_call_to_dict``. Like the HER2 contract, non-finite numbers are refused by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.assays.hep2.types import CellCall, Hep2Cell, Hep2Result, PatternCall
from appliance.assays.hep2.well import Hep2WellResult
from appliance.assays.her2.types import ModelRef
from appliance.outputs.result_json import (
    _created_at_now,
    _num,
    is_research_use_only,
    supersedes_from_dict,
    supersedes_to_dict,
)

SCHEMA_VERSION = "1"
SCHEMA_PATH: Path = Path(__file__).resolve().parents[2] / "docs" / "hep2-result.schema.json"
WELL_SCHEMA_PATH: Path = SCHEMA_PATH.with_name("hep2-well.schema.json")


def _check(result: Hep2Result) -> None:
    where = f"HEp-2 result for {result.file!r} (seq {result.seq})"
    if result.status not in ("scored", "not_scorable"):
        raise ValueError(f"{where}: status {result.status!r}")
    if result.scored and (result.positive is None or result.intensity_level is None):
        raise ValueError(f"{where}: scored but positive or intensity missing")
    if result.scored and not result.positive and not result.patterns:
        raise ValueError(f"{where}: negative but no AC-0 pattern")
    if not result.scored and not result.reason:
        raise ValueError(f"{where}: not scorable but no reason given")


def _probabilities(probs: dict[str, float], name: str) -> dict[str, float]:
    return {k: _num(f"{name}.{k}", v, 4) for k, v in probs.items()}


def cell_to_dict(cell: Hep2Cell) -> dict[str, Any]:
    """One cell's JSON object (positions in source-image pixels)."""
    name = f"cells[{cell.cell_id}]"
    return {
        "id": cell.cell_id, "x": _num(f"{name}.x", cell.x, 1), "y": _num(f"{name}.y", cell.y, 1),
        "area_um2": _num(f"{name}.area_um2", cell.area_um2, 1),
        "brightness": _num(f"{name}.brightness", cell.brightness, 2),
        "pattern": cell.pattern, "confidence": _num(f"{name}.confidence", cell.confidence, 4),
        "mitosis": cell.mitosis, "touches_edge": cell.touches_edge,
        "probabilities": _probabilities(cell.probabilities, f"{name}.probabilities"),
        # Only from a model with a region head (hep2-cells-v6 on): an added, optional key.
        **({"regions": _probabilities(cell.regions, f"{name}.regions")} if cell.regions
           else {}),
    }


def result_to_dict(result: Hep2Result, *, include_cells: bool = False) -> dict[str, Any]:
    """The JSON object of one HEp-2 field result, keys in the documented order."""
    _check(result)
    m = result.model
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "file": result.file, "seq": result.seq,
        "assay": result.assay, "status": result.status,
        "positive": result.positive if result.scored else None,
        "intensity": _intensity(result.intensity_level, result.intensity_units,
                                result.intensity_calibrated),
        "patterns": _patterns(result.patterns),
        "cell_counts": {"total": len(result.cells), "interphase": result.cells_interphase,
                        "mitotic": result.cells_mitotic},
        "reason": None if result.scored else result.reason,
        "reason_code": None if result.scored else result.reason_code,
        "warnings": list(result.warnings),
        "um_per_px": None if result.um_per_px is None else _num("um_per_px", result.um_per_px, 4),
        "um_per_px_source": result.um_per_px_source,
        "crop_um_per_px": (None if result.crop_um_per_px is None
                           else _num("crop_um_per_px", result.crop_um_per_px, 4)),
        "sharpness": (None if result.sharpness is None
                      else _num("sharpness", result.sharpness, 3)),
        "image": ({"width": result.image_width, "height": result.image_height}
                  if result.image_width else None),
        "model": _model(m),
        "research_use_only": is_research_use_only(m),
        "timings_ms": {k: _num(f"timings_ms.{k}", v, 1) for k, v in result.timings_ms.items()},
        "created_at": result.created_at or _created_at_now(),
        "supersedes": supersedes_to_dict(result.supersedes),
    }
    if include_cells:
        out["cells"] = [cell_to_dict(c) for c in result.cells]
    return out


def _patterns(patterns: Sequence[PatternCall]) -> list[dict[str, Any]]:
    return [{"name": p.name, "icap": p.icap, "label": p.label,
             "share": _num("patterns.share", p.share, 4),
             "confidence": _num("patterns.confidence", p.confidence, 4),
             "evidence": p.evidence} for p in patterns]


def _intensity(level: str | None, units: float | None, calibrated: bool
               ) -> dict[str, Any] | None:
    return None if level is None else {"level": level,
                                       "value": _num("intensity.value", units or 0.0, 2),
                                       "calibrated": calibrated}


def _model(m: ModelRef) -> dict[str, Any]:
    return {"name": m.name, "sha256": m.sha256, "precision": m.precision,
            "validated_on": m.validated_on}


def well_to_dict(well: Hep2WellResult) -> dict[str, Any]:
    """The JSON object of one well's pooled call (``docs/hep2-well.schema.json``)."""
    if well.scored and (well.positive is None or well.intensity_level is None):
        raise ValueError("HEp-2 well result: scored but positive or intensity missing")
    if not well.scored and not well.reason:
        raise ValueError("HEp-2 well result: not scorable but no reason given")
    return {
        "schema_version": SCHEMA_VERSION, "assay": "hep2", "kind": "well",
        "status": well.status, "positive": well.positive if well.scored else None,
        "intensity": _intensity(well.intensity_level, well.intensity_units,
                                well.intensity_calibrated),
        "patterns": _patterns(well.patterns),
        "cell_counts": {"total": well.cells_interphase + well.cells_mitotic,
                        "interphase": well.cells_interphase, "mitotic": well.cells_mitotic},
        "fields": list(well.fields), "fields_refused": list(well.fields_refused),
        **({"stored_fields": [{"file": f, "row": row} for f, row in well.stored_fields]}
           if well.stored_fields else {}),
        "reason": None if well.scored else well.reason,
        "reason_code": None if well.scored else well.reason_code,
        "warnings": list(well.warnings),
        "um_per_px": None if well.um_per_px is None else _num("um_per_px", well.um_per_px, 4),
        "model": _model(well.model), "research_use_only": is_research_use_only(well.model),
        "created_at": _created_at_now(),
    }


def cell_call_to_dict(call: CellCall) -> dict[str, Any]:
    """One single-cell image's JSON object."""
    m = call.model
    return {"schema_version": SCHEMA_VERSION, "file": call.file, "assay": "hep2",
            "kind": "cell", "pattern": call.pattern, "icap": call.icap,
            "confidence": _num("confidence", call.confidence, 4), "mitosis": call.mitosis,
            "probabilities": _probabilities(call.probabilities, "probabilities"),
            **({"regions": _probabilities(call.regions, "regions")} if call.regions else {}),
            "um_per_px": None if call.um_per_px is None else _num("um_per_px", call.um_per_px, 4),
            "um_per_px_source": call.um_per_px_source, "mask": call.mask_source,
            "warnings": list(call.warnings),
            "model": _model(m), "research_use_only": is_research_use_only(m)}


def result_from_dict(doc: Mapping[str, Any]) -> Hep2Result:
    """A field result back from its stored JSON (``result_to_dict(..., include_cells=True)``),
    as a case pools its fields after a restart. What the JSON does not keep stays empty:
    the cells' outlines, and their mitosis confidence (NaN; no rule reads it).

    Raises KeyError or ValueError for a document that is not a HEp-2 field result.
    """
    if doc.get("assay") != "hep2" or "cells" not in doc:
        raise ValueError("not a stored HEp-2 field result with its cells")
    intensity = doc.get("intensity") or {}
    m = doc["model"]
    counts = doc["cell_counts"]
    image = doc.get("image") or {}
    return Hep2Result(
        file=str(doc["file"]), seq=int(doc["seq"]), status=str(doc["status"]),
        model=ModelRef(str(m["name"]), str(m["sha256"]), str(m["precision"]),
                       str(m["validated_on"])),
        image_width=int(image.get("width", 0)), image_height=int(image.get("height", 0)),
        reason=doc.get("reason"), reason_code=doc.get("reason_code"),
        positive=doc.get("positive"), intensity_level=intensity.get("level"),
        intensity_units=None if not intensity else float(intensity["value"]),
        intensity_calibrated=bool(intensity.get("calibrated", False)),
        patterns=tuple(PatternCall(str(p["name"]), str(p["icap"]), str(p["label"]),
                                   float(p["share"]), float(p["confidence"]),
                                   str(p["evidence"])) for p in doc["patterns"]),
        cells=tuple(_cell_from_dict(c) for c in doc["cells"]),
        cells_interphase=int(counts["interphase"]), cells_mitotic=int(counts["mitotic"]),
        warnings=tuple(str(w) for w in doc.get("warnings", ())),
        um_per_px=None if doc.get("um_per_px") is None else float(doc["um_per_px"]),
        um_per_px_source=str(doc.get("um_per_px_source", "unknown")),
        crop_um_per_px=(None if doc.get("crop_um_per_px") is None
                        else float(doc["crop_um_per_px"])),
        sharpness=None if doc.get("sharpness") is None else float(doc["sharpness"]),
        timings_ms={str(k): float(v) for k, v in (doc.get("timings_ms") or {}).items()},
        created_at=str(doc.get("created_at", "")),
        supersedes=supersedes_from_dict(doc.get("supersedes")))


def _cell_from_dict(c: Mapping[str, Any]) -> Hep2Cell:
    return Hep2Cell(
        cell_id=int(c["id"]), x=float(c["x"]), y=float(c["y"]), area_um2=float(c["area_um2"]),
        brightness=float(c["brightness"]), pattern=str(c["pattern"]),
        confidence=float(c["confidence"]),
        probabilities={str(k): float(v) for k, v in c["probabilities"].items()},
        mitosis=str(c["mitosis"]), mitosis_confidence=math.nan,
        touches_edge=bool(c["touches_edge"]),
        regions={str(k): float(v) for k, v in (c.get("regions") or {}).items()})


def to_json(doc: dict[str, Any]) -> str:
    """One line of JSON (UTF-8 kept)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The JSON Schema of the HEp-2 field result (or ``WELL_SCHEMA_PATH``'s, of a well)."""
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema
