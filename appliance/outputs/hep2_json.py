"""The HEp-2 result JSON: one object per field (`appliance score --assay hep2 --json`).

Schema: ``docs/hep2-result.schema.json`` (JSON Schema 2020-12), documented in
``docs/hep2-json.md``. Single-cell calls (``--cell``) have their own small object,
``cell_call_to_dict``. Like the HER2 contract, non-finite numbers are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.assays.hep2.types import CellCall, Hep2Cell, Hep2Result
from appliance.outputs.result_json import _created_at_now, _num, is_research_use_only

SCHEMA_VERSION = "1"
SCHEMA_PATH: Path = Path(__file__).resolve().parents[2] / "docs" / "hep2-result.schema.json"


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
        "intensity": (None if result.intensity_level is None else {
            "level": result.intensity_level,
            "value": _num("intensity.value", result.intensity_units or 0.0, 2),
            "calibrated": result.intensity_calibrated}),
        "patterns": [{"name": p.name, "icap": p.icap, "label": p.label,
                      "share": _num("patterns.share", p.share, 4),
                      "confidence": _num("patterns.confidence", p.confidence, 4),
                      "evidence": p.evidence} for p in result.patterns],
        "cell_counts": {"total": len(result.cells), "interphase": result.cells_interphase,
                        "mitotic": result.cells_mitotic},
        "reason": None if result.scored else result.reason,
        "reason_code": None if result.scored else result.reason_code,
        "warnings": list(result.warnings),
        "um_per_px": None if result.um_per_px is None else _num("um_per_px", result.um_per_px, 4),
        "um_per_px_source": result.um_per_px_source,
        "crop_um_per_px": (None if result.crop_um_per_px is None
                           else _num("crop_um_per_px", result.crop_um_per_px, 4)),
        "image": ({"width": result.image_width, "height": result.image_height}
                  if result.image_width else None),
        "model": {"name": m.name, "sha256": m.sha256, "precision": m.precision,
                  "validated_on": m.validated_on},
        "research_use_only": is_research_use_only(m),
        "timings_ms": {k: _num(f"timings_ms.{k}", v, 1) for k, v in result.timings_ms.items()},
        "created_at": result.created_at or _created_at_now(),
    }
    if include_cells:
        out["cells"] = [cell_to_dict(c) for c in result.cells]
    return out


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
            "model": {"name": m.name, "sha256": m.sha256, "precision": m.precision,
                      "validated_on": m.validated_on},
            "research_use_only": is_research_use_only(m)}


def to_json(doc: dict[str, Any]) -> str:
    """One line of JSON (UTF-8 kept)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the HEp-2 field result."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema
