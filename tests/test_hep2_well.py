"""A well's call from several fields: pooled cells, one run of the specimen rules."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import jsonschema
import pytest
import referencing

from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.specimen import call_specimen
from appliance.assays.hep2.types import Hep2Cell, Hep2Result
from appliance.assays.hep2.well import (
    ODD_INTENSITY_RATIO,
    Hep2WellResult,
    call_well,
    field_warnings,
)
from appliance.assays.her2.types import ModelRef
from appliance.config import Hep2Config
from appliance.outputs import hep2_json
from appliance.outputs.store import ResultStore, well_file
from appliance.outputs.table import format_hep2_well_row
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

CFG = Hep2Config()
MODEL = ModelRef(name="hep2-cells-test", sha256="ab" * 32, precision="int8",
                 validated_on="generated data only")
REPO = Path(__file__).resolve().parents[1]
HAVE_MODEL = (REPO / "models" / "hep2" / "manifest.json").exists()
QUALITY = "the declared scale 0.25 um/px (frame) disagrees with the cells' size"


def cell(name: str, *, p: float = 0.9, runner_up: str = "negative", brightness: float = 80.0,
         mitosis: str = "interphase", edge: bool = False) -> Hep2Cell:
    probs = dict.fromkeys(NAMES, 0.0)
    probs[name] = p
    probs[runner_up] += 1.0 - p
    return Hep2Cell(cell_id=0, x=0.0, y=0.0, area_um2=200.0, brightness=brightness,
                    pattern=name, confidence=p, probabilities=probs, mitosis=mitosis,
                    mitosis_confidence=0.9, touches_edge=edge)


def field(cells: list[Hep2Cell], name: str = "f.png", *, um_per_px: float = 0.5,
          extra: tuple[str, ...] = (), calibrated: bool = True,
          model: ModelRef = MODEL) -> Hep2Result:
    """A field result as the assay's finish makes it: its own warnings, then the rules'."""
    whole = [c.brightness for c in cells if not c.mitotic and not c.touches_edge]
    units = sorted(whole)[len(whole) // 2] if whole else 5.0
    call = call_specimen(cells, units, specimen=CFG.specimen, intensity=CFG.intensity,
                         um_per_px=um_per_px)
    return Hep2Result(file=name, seq=1, status="scored", model=model, image_width=800,
                      image_height=600, positive=call.positive,
                      intensity_level=call.intensity_level, intensity_units=units,
                      intensity_calibrated=calibrated, patterns=call.patterns,
                      cells=tuple(cells), cells_interphase=sum(not c.mitotic for c in cells),
                      cells_mitotic=sum(c.mitotic for c in cells),
                      warnings=(*extra, *call.warnings), um_per_px=um_per_px)


def refused(name: str) -> Hep2Result:
    return Hep2Result(file=name, seq=2, status="not_scorable", model=MODEL, image_width=800,
                      image_height=600, reason="out of focus", reason_code="out_of_focus")


def test_fields_too_small_for_a_pattern_give_one_together() -> None:
    """Each 40x field holds 6 cells (under min_cells 8): the well holds 18."""
    fields = [field([cell("centromere")] * 6, f"f{i}.png") for i in range(3)]
    assert all(not f.patterns for f in fields)
    assert all(any("look at more fields" in w for w in f.warnings) for f in fields)
    well = call_well(fields, CFG)
    assert well.scored and well.positive is True
    assert [(p.icap, p.share) for p in well.patterns] == [("AC-3", 1.0)]
    assert well.fields == ("f0.png", "f1.png", "f2.png") and well.cells_interphase == 18
    # The fields' "look at more fields" is theirs; the well's own rules warn only of few
    # voters (18 < few_cells 20).
    assert not any("not determinable" in w for w in well.warnings)
    assert any("only 18 cells" in w for w in well.warnings)


def test_the_metaphases_of_all_fields_decide_ac1_against_ac4() -> None:
    """One dark plate per field says nothing (mitotic_min_cells 2); three of them flip
    a homogeneous-looking interphase call to fine speckled, as in one field with three."""
    interphase = [cell("homogeneous", p=0.6, runner_up="fine_speckled")] * 25
    plate = cell("homogeneous", mitosis="mitotic_plate_unstained")
    fields = [field([*interphase, plate], f"f{i}.png") for i in range(3)]
    assert all(f.patterns[0].icap == "AC-1" for f in fields)
    well = call_well(fields, CFG)
    assert (well.patterns[0].name, well.patterns[0].icap) == ("fine_speckled", "AC-4")
    assert "metaphase plates stain in 0 of 3" in well.patterns[0].evidence
    assert well.cells_mitotic == 3


def test_intensity_is_the_median_of_every_whole_interphase_cell() -> None:
    a = field([cell("homogeneous", brightness=b) for b in (30, 31, 32, 33, 34, 35, 36, 37)]
              + [cell("homogeneous", brightness=500.0, edge=True)], "a.png")
    b = field([cell("homogeneous", brightness=b) for b in (60, 61, 62, 63, 64, 65, 66, 67)]
              + [cell("homogeneous", brightness=900.0, mitosis="mitotic_plate_stained")],
              "b.png")
    well = call_well([a, b], CFG)
    # 16 whole interphase cells 30..37 and 60..67: the median lies between 37 and 60.
    assert well.intensity_units == pytest.approx((37 + 60) / 2)
    assert well.intensity_level == "weak" and well.positive is True
    # A well of negative fields without cells reads the fields' own whole-field values.
    empty = [replace(field([], f"n{i}.png"), intensity_units=v) for i, v in enumerate((4, 8, 6))]
    negative = call_well(empty, CFG)
    assert negative.intensity_units == 6.0 and negative.positive is False
    assert [p.icap for p in negative.patterns] == ["AC-0"]


def test_refused_fields_are_listed_and_left_out() -> None:
    good = field([cell("golgi")] * 30, "good.png")
    well = call_well([refused("blurred.png"), good], CFG)
    assert well.scored and well.fields == ("good.png",)
    assert well.fields_refused == ("blurred.png: out of focus",)
    assert "1 of 2 fields could not be scored and are left out" in well.warnings
    nothing = call_well([refused("a.png"), refused("b.png")], CFG)
    assert not nothing.scored and nothing.reason_code == "no_scorable_field"
    assert nothing.positive is None and len(nothing.fields_refused) == 2
    with pytest.raises(ValueError, match="at least one field"):
        call_well([], CFG)


def test_field_warnings_are_kept_once_and_rule_warnings_made_again() -> None:
    few = [cell("centromere")] * 6
    a = field(few, "a.png", extra=(QUALITY,))
    b = field(few, "b.png", extra=(QUALITY, "relative units"), calibrated=False)
    assert field_warnings(a, CFG) == [QUALITY]
    assert field_warnings(b, CFG) == [QUALITY, "relative units"]
    assert field_warnings(refused("c.png"), CFG) == []
    well = call_well([a, b], CFG)
    assert well.warnings.count(QUALITY) == 1 and "relative units" in well.warnings
    assert not well.intensity_calibrated  # one field was not


def test_the_coarsest_field_decides_the_subtype_rules() -> None:
    dots = [cell("few_nuclear_dots")] * 30
    fine = call_well([field(dots, "a.png", um_per_px=0.3), field(dots, "b.png", um_per_px=0.5)],
                     CFG)
    coarse = call_well([field(dots, "a.png", um_per_px=0.3),
                        field(dots, "b.png", um_per_px=0.95)], CFG)
    assert fine.um_per_px == 0.5 and coarse.um_per_px == 0.95
    assert not any("20x or higher" in w for w in fine.warnings)
    assert any("20x or higher" in w for w in coarse.warnings)


def test_fields_of_different_models_do_not_pool() -> None:
    other = replace(MODEL, name="hep2-cells-other", sha256="cd" * 32)
    with pytest.raises(ValueError, match="different models"):
        call_well([field([cell("golgi")] * 10, "a.png"),
                   field([cell("golgi")] * 10, "b.png", model=other)], CFG)


# ------------------------------------------------------------------------ JSON and table


def test_a_field_unlike_the_others_is_named_and_the_call_stands() -> None:
    """A field of another well given by mistake: far brighter or dimmer than the pooled
    cells, or a pattern of its own that the well does not report."""
    ours = [field([cell("centromere", brightness=60.0)] * 30, f"f{i}.png") for i in range(2)]
    alike = call_well([*ours, field([cell("centromere", brightness=70.0)] * 30, "g.png")], CFG)
    assert not any("another well" in w for w in alike.warnings)
    brighter = 60.0 * (ODD_INTENSITY_RATIO + 1.0)
    bright = call_well([*ours, field([cell("centromere", brightness=brighter)] * 10,
                                     "bright.png")], CFG)
    assert bright.patterns[0].icap == "AC-3"  # the call stands, with a warning
    assert any(w.startswith(f"bright.png reads {brighter:.0f} units") and "another well" in w
               for w in bright.warnings)
    golgi = call_well([*ours, field([cell("golgi", brightness=60.0)] * 30, "golgi.png")], CFG)
    # A third of the cells: the well reports AC-22 as a mixed pattern, and names the field.
    assert [p.icap for p in golgi.patterns] == ["AC-3", "AC-22"]
    assert any(w.startswith("golgi.png reads AC-22") and "no other field" in w
               for w in golgi.warnings)
    # A true mix shows in every field: no field is named for it.
    both = [field([cell("centromere", brightness=60.0)] * 15
                  + [cell("golgi", brightness=60.0)] * 15, f"m{i}.png") for i in range(3)]
    assert not any("another well" in w for w in call_well(both, CFG).warnings)
    # A look-alike of a reported pattern is doubt, not another well (rule 5).
    speckled = [field([cell("fine_speckled", brightness=60.0)] * 30, f"s{i}.png")
                for i in range(2)]
    coarse = field([cell("coarse_speckled", brightness=60.0)] * 12, "coarse.png")
    assert not any("another well" in w for w in call_well([*speckled, coarse], CFG).warnings)
    # A negative well's fields differ a lot in proportion, all under the cut-off: no warning.
    dim = [replace(field([], f"n{i}.png"), intensity_units=v) for i, v in enumerate((2, 9, 5))]
    assert not any("another well" in w for w in call_well(dim, CFG).warnings)
    # ... but with a positive field among them the fields disagree, and are named (the
    # pooled intensity is the cells', here the positive field's alone).
    mixed = call_well([*dim, field([cell("golgi", brightness=90.0)] * 12, "pos.png")], CFG)
    assert any(w.startswith("n0.png reads 2 units, 0.022 times the well's 90")
               for w in mixed.warnings)


def test_a_well_with_no_field_scored_is_named_by_its_refused_fields() -> None:
    assert well_file(["a.png", "b.png"], ["c.png: out of focus"]) == "well: a.png + b.png"
    assert well_file([], ["c.png: out of focus", "d.png: wrong stain: x: y"]) == \
        "well: c.png + d.png"


def validator() -> jsonschema.Draft202012Validator:
    field_schema = hep2_json.load_schema()
    registry = referencing.Registry().with_resource(
        field_schema["$id"], referencing.Resource.from_contents(field_schema))
    return jsonschema.Draft202012Validator(hep2_json.load_schema(hep2_json.WELL_SCHEMA_PATH),
                                           registry=registry)


def test_the_well_json_follows_its_schema() -> None:
    scored = call_well([field([cell("homogeneous")] * 12, "a.png"), refused("b.png")], CFG)
    doc = hep2_json.well_to_dict(scored)
    validator().validate(doc)
    assert doc["kind"] == "well" and doc["fields"] == ["a.png"]
    assert doc["patterns"][0]["icap"] == "AC-1" and doc["cell_counts"]["total"] == 12
    not_scored = hep2_json.well_to_dict(call_well([refused("b.png")], CFG))
    validator().validate(not_scored)
    assert not_scored["positive"] is None and not_scored["reason"]
    # The schema refuses what the contract forbids.
    with pytest.raises(jsonschema.ValidationError):
        validator().validate({**doc, "fields": []})
    with pytest.raises(ValueError, match="no reason"):
        hep2_json.well_to_dict(Hep2WellResult(fields=(), fields_refused=(),
                                              status="not_scorable", model=MODEL))


def test_the_well_line_sits_under_the_field_lines() -> None:
    well = call_well([field([cell("golgi")] * 30, "a.png"), refused("b.png")], CFG)
    line = format_hep2_well_row(well)
    assert line.startswith("well  well of 1 field (+1 left out)")
    assert "positive" in line and "AC-22 golgi 100%" in line


# ------------------------------------------------------------------- the command, for real


@pytest.mark.skipif(not HAVE_MODEL, reason="models/hep2 is not built yet")
def test_score_well_pools_the_fields_it_is_given(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        f = generate_hep2_field(Hep2FieldSpec(
            seed=83_100 + i, width=640, height=480, um_per_px=0.5,
            patterns=(("centromere", 1.0),), intensity=60.0, camera_seed=83_100))
        path = tmp_path / f"f{i}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    command = [sys.executable, "-m", "appliance", "score", "--assay", "hep2", "--well",
               "--um-per-px", "0.5", "--no-store", "--no-overlay", *paths, str(broken)]
    env = {"PYTHONPATH": str(REPO)}
    db = tmp_path / "results.db"
    stored = [a if a != "--no-store" else f"--store={db}" for a in command]
    proc = subprocess.run([*stored, "--json"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(docs) == 4 and docs[-1]["kind"] == "well"
    validator().validate(docs[-1])
    # The store keeps every field, then the well's call as a row of its own.
    with ResultStore(db) as store:
        rows = store.recent()
    assert [r["file"] for r in rows] == [
        f"well: {paths[0]} + {paths[1]}", str(broken), *reversed(paths)]
    well_row = rows[0]
    assert well_row["seq"] == 0 and well_row["result"]["kind"] == "well"
    # The well names the rows of its fields, the refused one too, in the order given.
    assert well_row["result"]["stored_fields"] == [
        {"file": r["file"], "row": r["id"]} for r in reversed(rows[1:])]
    assert docs[-1]["stored_fields"] == well_row["result"]["stored_fields"]
    assert well_row["score"] == "AC-3" and well_row["tumour_cells"] == \
        docs[-1]["cell_counts"]["total"]
    validator().validate(well_row["result"])
    well, fields = docs[-1], docs[:2]
    assert well["fields"] == paths and well["fields_refused"][0].startswith(str(broken))
    assert well["cell_counts"]["total"] == sum(d["cell_counts"]["total"] for d in fields)
    assert well["patterns"][0]["icap"] == "AC-3" and well["positive"] is True
    table = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                           check=False)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1].startswith("well  well of 2 fields (+1 left out)")
    her2 = subprocess.run([sys.executable, "-m", "appliance", "score", "--assay", "her2",
                           "--well", *paths], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert her2.returncode != 0 and "--well pools whole HEp-2 fields" in her2.stderr
