"""The result JSON contract: one object per field, as `appliance score --json` prints it.

The schema lives in ``docs/score-result.schema.json`` (JSON Schema 2020-12) and is
documented key by key in ``docs/score-json.md``. This module only builds the object;
it checks the few invariants the dashboard relies on (status, score when scored, a
reason when not) and refuses non-finite numbers, because ``NaN`` is not JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.assays.her2.types import (
    CaseTag,
    CellMeasurement,
    FieldResult,
    MembraneClass,
    ModelRef,
    QualityReport,
    Supersedes,
)

SCHEMA_VERSION = "1"
SCHEMA_PATH: Path = Path(__file__).resolve().parents[2] / "docs" / "score-result.schema.json"

STATUSES = ("scored", "not_scorable")
UM_PER_PX_SOURCES = ("frame", "config", "objective", "estimated", "unknown")


def is_research_use_only(model: ModelRef) -> bool:
    """True while the model is validated on generated (synthetic) data only."""
    return "generated" in model.validated_on.casefold()


def _num(name: str, value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` decimals; refuses NaN and infinities by name."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"result field {name} is not a finite number: {value!r}")
    # round() can give -0.0, which reads oddly in a dashboard.
    return round(v, digits) + 0.0


def _check_invariants(result: FieldResult) -> None:
    """Raise ValueError when the result breaks what the schema promises."""
    where = f"result for {result.file!r} (seq {result.seq})"
    if result.status not in STATUSES:
        raise ValueError(f"{where}: status {result.status!r} is not one of {STATUSES}")
    if result.scored and (result.score is None or result.category is None):
        raise ValueError(f"{where}: status is scored but score or category is missing")
    if not result.scored and not result.reason:
        raise ValueError(f"{where}: status is not_scorable but no reason is given")
    if result.um_per_px_source not in UM_PER_PX_SOURCES:
        raise ValueError(
            f"{where}: um_per_px_source {result.um_per_px_source!r} is not one of "
            f"{UM_PER_PX_SOURCES}"
        )
    if result.tumour_cells < 0:
        raise ValueError(f"{where}: negative cell count")
    # An input that never decoded (empty, corrupt, too large) has no size: 0 x 0.
    decoded = result.image_width >= 1 and result.image_height >= 1
    if (result.scored or result.image_width or result.image_height) and not decoded:
        raise ValueError(f"{where}: empty image size {result.image_width}x{result.image_height}")


def _percent(percent: dict[MembraneClass, float]) -> dict[str, float]:
    # Every class is present so the dashboard never has to guess; a class without
    # cells is 0. Rounding means the values may sum to 99.9 or 100.1.
    return {c.value: _num(f"percent.{c.value}", percent.get(c, 0.0), 1) for c in MembraneClass}


def _quality(q: QualityReport | None) -> dict[str, float] | None:
    if q is None:
        return None
    return {
        "tissue_fraction": _num("quality.tissue_fraction", q.tissue_fraction, 4),
        "focus": _num("quality.focus", q.focus, 4),
        "saturated_fraction": _num("quality.saturated_fraction", q.saturated_fraction, 4),
        "dark_fraction": _num("quality.dark_fraction", q.dark_fraction, 4),
        "stain_residual": _num("quality.stain_residual", q.stain_residual, 4),
        "brightness": _num("quality.brightness", q.brightness, 1),
    }


def _case(tag: CaseTag | None) -> dict[str, Any] | None:
    if tag is None:
        return None
    return {"case_id": tag.case_id, "role": tag.role, "control": tag.control,
            "calibration_factor": _num("case.calibration_factor", tag.calibration_factor, 4)}


def supersedes_to_dict(ref: Supersedes | None) -> dict[str, Any] | None:
    """The ``supersedes`` object of a result (shared by the assays' contracts)."""
    if ref is None:
        return None
    return {"file": ref.file, "seq": ref.seq, "reason": ref.reason}


def supersedes_from_dict(doc: Mapping[str, Any] | None) -> Supersedes | None:
    """A stored result's ``supersedes`` back (None when absent: results stored before it
    existed have no key). Raises KeyError, TypeError or ValueError for a malformed one."""
    if doc is None:
        return None
    return Supersedes(str(doc["file"]), int(doc["seq"]), str(doc["reason"]))


def cell_to_dict(cell: CellMeasurement) -> dict[str, Any]:
    """One tumour cell as its JSON object (positions in source-image pixels)."""
    name = f"cells[{cell.cell_id}]"
    return {
        "id": cell.cell_id,
        "x": _num(f"{name}.x", cell.x, 1),
        "y": _num(f"{name}.y", cell.y, 1),
        "nucleus_area_um2": _num(f"{name}.nucleus_area_um2", cell.nucleus_area_um2, 1),
        "completeness": _num(f"{name}.completeness", cell.completeness, 3),
        "intensity_od": _num(f"{name}.intensity_od", cell.intensity_od, 3),
        "intensity": cell.intensity.value,
        "membrane_class": cell.membrane_class.value,
    }


def _created_at(result: FieldResult) -> str:
    # A result should carry the time it was made; if a caller forgot, the time the
    # JSON is made is the closest honest value (never an empty string).
    if result.created_at:
        return result.created_at
    return _created_at_now()


def _created_at_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def result_to_dict(result: FieldResult, *, include_cells: bool = False) -> dict[str, Any]:
    """The JSON object of one field result, keys in the documented order.

    Raises ValueError (naming the field) when the result is inconsistent or holds
    a non-finite number.
    """
    _check_invariants(result)
    m = result.model
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "file": result.file,
        "seq": result.seq,
        "assay": result.assay,
        "status": result.status,
        "score": result.score.value if result.scored and result.score else None,
        "category": result.category.value if result.scored and result.category else None,
        "reason": None if result.scored else result.reason,
        "reason_code": None if result.scored else result.reason_code,
        "rule": result.rule,
        "tumour_cells": result.tumour_cells,
        "percent": _percent(result.percent),
        "warnings": list(result.warnings),
        "um_per_px": (None if result.um_per_px is None
                      else _num("um_per_px", result.um_per_px, 4)),
        "um_per_px_source": result.um_per_px_source,
        "image": ({"width": result.image_width, "height": result.image_height}
                  if result.image_width else None),
        "quality": _quality(result.quality),
        "model": {"name": m.name, "sha256": m.sha256, "precision": m.precision,
                  "validated_on": m.validated_on},
        "research_use_only": is_research_use_only(m),
        "timings_ms": {k: _num(f"timings_ms.{k}", v, 1) for k, v in result.timings_ms.items()},
        "created_at": _created_at(result),
        "thresholds": (None if result.intensity_thresholds is None else
                       [_num("thresholds", t, 4) for t in result.intensity_thresholds]),
        "case": _case(result.case),
        "supersedes": supersedes_to_dict(result.supersedes),
    }
    if include_cells:
        out["cells"] = [cell_to_dict(c) for c in result.cells]
    return out


def result_to_json(result: FieldResult, *, include_cells: bool = False) -> str:
    """The result as one line of JSON (UTF-8 text: µ and ≤ are kept, not escaped)."""
    return json.dumps(
        result_to_dict(result, include_cells=include_cells),
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the result object (for validation in tools and tests)."""
    try:
        schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OSError(f"cannot read the result schema {SCHEMA_PATH}: {exc}") from exc
    return schema
