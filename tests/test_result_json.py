"""The result JSON contract: built from the real dataclasses, checked against the schema."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import replace
from typing import Any

import jsonschema
import pytest

from appliance.assays.her2.rules import classify_cell, score_field
from appliance.assays.her2.types import (
    CellMeasurement,
    FieldResult,
    FieldScore,
    MembraneClass,
    ModelRef,
    NotScorable,
    QualityReport,
    Supersedes,
)
from appliance.config import MeasureConfig, RulesConfig
from appliance.outputs.result_json import (
    SCHEMA_PATH,
    load_schema,
    result_to_dict,
    result_to_json,
)

GENERATED = ModelRef(name="her2-cells-unet", sha256="ab" * 32, precision="int8",
                     validated_on="generated data (synthetic H-DAB fields), v1")
CLINICAL = ModelRef(name="her2-cells-unet", sha256="cd" * 32, precision="fp32",
                    validated_on="412 annotated fields from 3 hospitals")
QUALITY = QualityReport(tissue_fraction=0.71234, focus=0.45678, saturated_fraction=0.0123,
                        dark_fraction=0.0, stain_residual=0.0456, brightness=201.26)


def make_cells(ods: list[float], completeness: list[float]) -> tuple[CellMeasurement, ...]:
    """Cells classified by the real rule engine, with square outlines."""
    cfg = MeasureConfig()
    cells = []
    for i, (od, comp) in enumerate(zip(ods, completeness, strict=True)):
        intensity, cls = classify_cell(od, comp, cfg)
        x, y = 20.0 + 13.37 * i, 40.0 + 7.891 * i
        outline = ((int(x) - 5, int(y) - 5), (int(x) + 5, int(y) - 5), (int(x) + 5, int(y) + 5),
                   (int(x) - 5, int(y) + 5))
        cells.append(CellMeasurement(cell_id=i, x=x, y=y, nucleus_area_um2=31.4159,
                                     completeness=comp, intensity_od=od, intensity=intensity,
                                     membrane_class=cls, outline=outline))
    return tuple(cells)


def result_from_cells(cells: tuple[CellMeasurement, ...], *, model: ModelRef = GENERATED,
                      **extra: Any) -> FieldResult:
    """A FieldResult the way the pipeline makes one: rule engine over the cells."""
    verdict = score_field([c.membrane_class for c in cells], RulesConfig())
    common: dict[str, Any] = dict(
        file="samples/her2/field-07.png", seq=7, assay="her2", model=model,
        image_width=640, image_height=480, cells=cells, um_per_px=0.5,
        um_per_px_source="objective", quality=QUALITY,
        timings_ms={"decode": 3.21, "inference": 41.049, "total": 60.0},
        created_at="2025-01-31T14:05:09.123+00:00",
    )
    common.update(extra)
    if isinstance(verdict, FieldScore):
        return FieldResult(status="scored", score=verdict.score, category=verdict.category,
                           rule=verdict.rule, tumour_cells=verdict.tumour_cells,
                           percent=verdict.percent, **common)
    assert isinstance(verdict, NotScorable)
    return FieldResult(status="not_scorable", reason=verdict.reason, reason_code=verdict.code,
                       tumour_cells=verdict.tumour_cells, **common)


def scored_3plus() -> FieldResult:
    # 30 cells: 5 complete intense (16.7% > 10%), 10 faint incomplete, 15 unstained.
    ods = [0.8] * 5 + [0.25] * 10 + [0.05] * 15
    comp = [1.0] * 5 + [0.5] * 10 + [0.0] * 15
    return result_from_cells(make_cells(ods, comp), warnings=("scale from the objective",))


def not_scorable_few_cells() -> FieldResult:
    return result_from_cells(make_cells([0.3] * 4, [0.95] * 4), model=CLINICAL, quality=None)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_schema_path_is_the_docs_file() -> None:
    assert SCHEMA_PATH.name == "score-result.schema.json"
    assert SCHEMA_PATH.parent.name == "docs"
    assert load_schema()["additionalProperties"] is False


@pytest.mark.parametrize("include_cells", [False, True])
def test_scored_result_validates(validator: jsonschema.Draft202012Validator,
                                 include_cells: bool) -> None:
    result = scored_3plus()
    assert result.score is not None and result.score.value == "3+"
    doc = result_to_dict(result, include_cells=include_cells)
    assert errors(validator, doc) == []
    assert ("cells" in doc) is include_cells


def test_not_scorable_result_validates(validator: jsonschema.Draft202012Validator) -> None:
    doc = result_to_dict(not_scorable_few_cells(), include_cells=True)
    assert errors(validator, doc) == []
    assert doc["status"] == "not_scorable"
    assert doc["score"] is None and doc["category"] is None
    assert doc["reason_code"] == "too_few_tumour_cells"
    assert "too few tumour cells" in doc["reason"]
    assert doc["tumour_cells"] == 4
    assert doc["quality"] is None
    assert doc["research_use_only"] is False


def test_every_score_from_the_rule_engine_validates(
        validator: jsonschema.Draft202012Validator) -> None:
    # One field per ASCO/CAP branch: the score/category pairing in the schema must
    # accept everything the rule engine can say.
    fields = {
        "3+": ([0.8] * 5 + [0.0] * 25, [1.0] * 5 + [0.0] * 25),
        "2+": ([0.45] * 6 + [0.0] * 24, [1.0] * 6 + [0.0] * 24),
        "1+": ([0.25] * 6 + [0.0] * 24, [0.5] * 6 + [0.0] * 24),
        "0 ultralow": ([0.25] * 2 + [0.0] * 28, [0.5] * 2 + [0.0] * 28),
        "0 null": ([0.0] * 30, [0.0] * 30),
    }
    seen = set()
    for ods, comp in fields.values():
        doc = result_to_dict(result_from_cells(make_cells(ods, comp)))
        assert errors(validator, doc) == []
        seen.add((doc["score"], doc["category"]))
    assert seen == {("3+", "positive"), ("2+", "equivocal"), ("1+", "HER2-low"),
                    ("0", "HER2-ultralow"), ("0", "HER2-null")}


def test_values_are_rounded_and_complete() -> None:
    doc = result_to_dict(scored_3plus(), include_cells=True)
    assert set(doc["percent"]) == {c.value for c in MembraneClass}
    assert doc["percent"]["complete_intense"] == 16.7  # 5 of 30
    assert doc["percent"]["incomplete_faint"] == 33.3
    assert doc["timings_ms"] == {"decode": 3.2, "inference": 41.0, "total": 60.0}
    assert doc["quality"]["tissue_fraction"] == 0.7123
    assert doc["quality"]["brightness"] == 201.3
    cell = doc["cells"][1]
    assert cell == {"id": 1, "x": 33.4, "y": 47.9, "nucleus_area_um2": 31.4,
                    "completeness": 1.0,
                    "intensity_od": 0.8, "intensity": "strong",
                    "membrane_class": "complete_intense"}
    assert doc["image"] == {"width": 640, "height": 480}
    assert doc["schema_version"] == "1"
    assert doc["research_use_only"] is True


def test_missing_classes_are_zero_not_absent() -> None:
    result = result_from_cells(make_cells([0.0] * 3, [0.0] * 3))  # not scorable, 3 cells
    doc = result_to_dict(replace(result, percent={}))
    assert doc["percent"] == {c.value: 0.0 for c in MembraneClass}


def test_json_is_one_line_utf8_and_round_trips() -> None:
    result = scored_3plus()
    text = result_to_json(result, include_cells=True)
    assert "\n" not in text
    assert result.rule is not None and result.rule in text  # kept as written, not escaped
    assert json.loads(text) == result_to_dict(result, include_cells=True)
    with_newline = replace(result, warnings=("two\nlines µm ≤",))
    text = result_to_json(with_newline)
    assert "\n" not in text and "µm ≤" in text


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("score",), "4+"),
        (("category",), "HER2-high"),
        (("status",), "maybe"),
        (("percent", "complete_intense"), 120.0),
        (("model", "sha256"), "not-a-hash"),
        (("schema_version",), 1),
        (("tumour_cells",), -1),
        (("created_at",), "yesterday"),
        (("um_per_px_source",), "guess"),
        (("research_use_only",), False),  # the model says generated data
        (("category",), "HER2-low"),  # 3+ must be positive
        (("reason",), "scored fields have no reason"),
        (("unexpected_key",), 1),
    ],
)
def test_wrong_values_fail(validator: jsonschema.Draft202012Validator,
                           path: tuple[str, ...], value: Any) -> None:
    doc = copy.deepcopy(result_to_dict(scored_3plus()))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(validator, doc), f"{path}={value!r} should fail validation"


def test_missing_percent_key_and_cell_field_fail(
        validator: jsonschema.Draft202012Validator) -> None:
    doc = result_to_dict(scored_3plus(), include_cells=True)
    bad = copy.deepcopy(doc)
    del bad["percent"]["none"]
    assert errors(validator, bad)
    bad = copy.deepcopy(doc)
    del bad["cells"][0]["membrane_class"]
    assert errors(validator, bad)
    bad = copy.deepcopy(doc)
    bad["score"] = None  # scored without a score
    assert errors(validator, bad)


def test_not_scorable_with_score_fails(validator: jsonschema.Draft202012Validator) -> None:
    doc = result_to_dict(not_scorable_few_cells())
    doc["score"], doc["category"] = "0", "HER2-null"
    assert errors(validator, doc)


def test_inconsistent_results_are_refused_by_name() -> None:
    good = scored_3plus()
    with pytest.raises(ValueError, match="status 'done'"):
        result_to_dict(replace(good, status="done"))
    with pytest.raises(ValueError, match="score or category is missing"):
        result_to_dict(replace(good, score=None))
    bad = not_scorable_few_cells()
    with pytest.raises(ValueError, match="no reason"):
        result_to_dict(replace(bad, reason=None))
    with pytest.raises(ValueError, match=r"timings_ms\.total"):
        result_to_dict(replace(good, timings_ms={"total": math.nan}))
    with pytest.raises(ValueError, match="um_per_px_source"):
        result_to_dict(replace(good, um_per_px_source="guess"))


def test_missing_created_at_is_filled_with_now(
        validator: jsonschema.Draft202012Validator) -> None:
    doc = result_to_dict(replace(scored_3plus(), created_at=""))
    assert errors(validator, doc) == []
    assert doc["created_at"].startswith("20")


def test_docs_examples_validate(validator: jsonschema.Draft202012Validator) -> None:
    # The dashboard team copies from docs/score-json.md: its examples must stay valid.
    text = (SCHEMA_PATH.parent / "score-json.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        assert errors(validator, json.loads(block)) == []


def test_a_superseding_report_names_the_one_it_replaces(
        validator: jsonschema.Draft202012Validator) -> None:
    plain = result_to_dict(scored_3plus())
    assert plain["supersedes"] is None and errors(validator, plain) == []
    again = result_to_dict(replace(scored_3plus(), supersedes=Supersedes(
        "camera", 41, "settings_changed")))
    assert again["supersedes"] == {"file": "camera", "seq": 41, "reason": "settings_changed"}
    assert errors(validator, again) == []
    # A result stored before the key existed still validates.
    assert errors(validator, {k: v for k, v in plain.items() if k != "supersedes"}) == []
    for bad in ({"file": "camera", "seq": 41}, {"file": "camera", "seq": -1,
                                                 "reason": "now_scorable"},
                {"file": "camera", "seq": 41, "reason": "better"}):
        assert errors(validator, {**again, "supersedes": bad}), bad
    with pytest.raises(ValueError, match=r"supersedes\.reason"):
        Supersedes("camera", 41, "better")
