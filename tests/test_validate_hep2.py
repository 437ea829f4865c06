"""tools.validate_hep2: the shipped model measured on a lab-style labelled folder and CSV."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.patterns import NAMES
from tools import validate_hep2
from tools.synth.hep2_cell_folder import write_cell_folder
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.validate_hep2 import (
    UNREADABLE,
    CellOutcome,
    FieldOutcome,
    cell_summary,
    data_digest,
    field_summary,
)

CLASSES = ("homogeneous", "centromere", "cyto_fibrillar")


def test_cell_figures_count_an_unreadable_image_as_wrong() -> None:
    outcomes = [CellOutcome("a", "homogeneous", "homogeneous", 0.9, "config", "file"),
                CellOutcome("b", "homogeneous", UNREADABLE, 0.0, "", "", "corrupt"),
                CellOutcome("c", "fine_speckled", "dense_fine_speckled", 0.6, "config", "file"),
                CellOutcome("d", "fine_speckled", "fine_speckled", 0.8, "config", "file")]
    s = cell_summary(outcomes)
    assert s["per_class_recall"] == {"homogeneous": 0.5, "fine_speckled": 0.5}
    assert s["mean_class_accuracy"] == 0.5 and s["unreadable"] == 1
    # At the competent level AC-2 for AC-4 is right; the unreadable one stays wrong.
    assert s["competent_mean_class_accuracy"] == pytest.approx(0.75)
    assert s["scale_sources"] == {"config": 3}


def test_field_figures_by_kind() -> None:
    def fo(truth: tuple[str, ...], reported: tuple[str, ...], positive: bool) -> FieldOutcome:
        return FieldOutcome("f", truth, "scored", reported, positive, 50.0, None)

    s = field_summary([fo(("centromere",), ("centromere",), True),
                       fo(("homogeneous",), ("homogeneous", "golgi"), True),
                       fo(("negative",), ("negative",), False),
                       fo(("homogeneous", "nucleolar_homogeneous"),
                          ("homogeneous", "nucleolar_clumpy"), True),
                       FieldOutcome("g", ("golgi",), "not_scorable", (), None, None, "blur")])
    assert s["pattern_accuracy"] == 3 / 4  # the refused golgi field is wrong
    assert s["positive_negative_agreement"] == 4 / 5
    assert s["mixed_both_reported"] == 0.0 and s["mixed_both_competent"] == 1.0
    assert s["single_with_false_second"] == 1 / 3 and s["not_scorable"] == 1


def test_data_digest_follows_content_and_names(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "b.png").write_bytes(b"2")
    files = list(tmp_path.iterdir())
    first = data_digest(files, tmp_path)
    assert data_digest(list(reversed(files)), tmp_path) == first
    (tmp_path / "b.png").write_bytes(b"3")
    assert data_digest(files, tmp_path) != first


def test_a_lab_folder_and_csv_are_measured_end_to_end(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cells = tmp_path / "cells"
    counts = write_cell_folder(cells, 3, um_per_px=0.35, classes=CLASSES)
    assert counts == dict.fromkeys(CLASSES, 3)
    (cells / "centromere" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    fields = tmp_path / "fields"
    fields.mkdir()
    for i, name in enumerate(("centromere", "negative")):
        f = generate_hep2_field(Hep2FieldSpec(seed=72_100 + i, width=480, height=360,
                                              um_per_px=0.35, patterns=((name, 1.0),)))
        cv2.imwrite(str(fields / f"{name}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    (fields / "labels.csv").write_text("file,pattern\ncentromere.png,AC-3\n"
                                       "negative.png,negative\n", encoding="utf-8")
    record_path = tmp_path / "record.json"
    code = validate_hep2.main(["--cells-dir", str(cells), "--fields-csv",
                               str(fields / "labels.csv"), "--um-per-px", "0.35",
                               "--out-dir", str(tmp_path / "png"), "--json", str(record_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean class accuracy" in out and "broken.png" in out  # the mistake is named
    record = json.loads(record_path.read_text(encoding="utf-8"))
    c = record["cells"]
    assert c["images"] == 10 and c["unreadable"] == 1
    assert set(c["per_class_recall"]) == set(CLASSES)
    assert c["mask_sources"] == {"file": 9} and c["scale_sources"] == {"config": 9}
    assert c["per_class_recall"]["centromere"] <= 0.75  # its unreadable image is wrong
    assert len(c["confusion"]) == len(NAMES) and len(c["confusion"][0]) == len(NAMES) + 1
    assert len(c["data_sha256"]) == 64 and record["model"]["sha256"]
    fl = record["fields"]
    assert fl["fields"] == 2 and fl["positive_negative_agreement"] is not None
    assert [o["truth"] for o in fl["outcomes"]] == [["centromere"], ["negative"]]
    assert (tmp_path / "png" / "hep2_validate_cells.png").is_file()
    assert (tmp_path / "png" / "hep2_validate_fields.png").is_file()


def test_bad_datasets_are_refused_by_name(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Blobby").mkdir()
    cv2.imwrite(str(tmp_path / "Blobby" / "a.png"), np.zeros((20, 20), np.uint8))
    assert validate_hep2.main(["--cells-dir", str(tmp_path)]) == 2
    assert "Blobby" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("file,pattern\nx.png\n", encoding="utf-8")
    assert validate_hep2.main(["--fields-csv", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        validate_hep2.main([])
    good = tmp_path / "good"
    write_cell_folder(good, 1, um_per_px=0.5, classes=("golgi",))
    assert validate_hep2.main(["--cells-dir", str(good), "--models-dir",
                               str(tmp_path / "no-models")]) == 3
    assert "manifest" in capsys.readouterr().err


def write_field(path: Path, seed: int, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=480, height=360, um_per_px=0.35,
                                          patterns=((name, 1.0),), camera_seed=72_200))
    cv2.imwrite(str(path), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))


def test_a_folder_of_fields_is_measured_as_one_well(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["file,pattern"]
    for well, name in (("patient1", "centromere"), ("patient2", "negative")):
        for k in range(2):
            write_field(tmp_path / well / f"f{k}.png", 72_210 + 10 * len(rows) + k, name)
            rows.append(f"{well}/f{k}.png,{name}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    record_path = tmp_path / "record.json"
    assert validate_hep2.main(["--fields-csv", str(csv), "--wells", "--um-per-px", "0.35",
                               "--out-dir", str(tmp_path / "png"),
                               "--json", str(record_path)]) == 0
    assert "wells: 2 (0 not scorable)" in capsys.readouterr().out
    wells = json.loads(record_path.read_text(encoding="utf-8"))["fields"]["wells"]
    assert wells["wells"] == 2
    assert [(Path(o["file"]).name, o["truth"]) for o in wells["outcomes"]] == [
        ("patient1", ["centromere"]), ("patient2", ["negative"])]
    assert wells["outcomes"][0]["reported"][:1] == ["centromere"]
    assert wells["outcomes"][1]["positive"] is False
    assert wells["odd_fields"] == {}
    # A Golgi field filed and labelled with patient1's centromere fields: the well
    # names it, so the lab can look at how it was filed.
    write_field(tmp_path / "patient1" / "f2.png", 72_290, "golgi")
    csv.write_text("\n".join([*rows, "patient1/f2.png,centromere"]) + "\n", encoding="utf-8")
    assert validate_hep2.main(["--fields-csv", str(csv), "--wells", "--um-per-px", "0.35",
                               "--out-dir", str(tmp_path / "png"),
                               "--json", str(record_path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 wells name a field unlike the others" in out
    odd = json.loads(record_path.read_text(encoding="utf-8"))["fields"]["wells"]["odd_fields"]
    assert list(odd) == [str(tmp_path / "patient1")]
    assert str(tmp_path / "patient1" / "f2.png") in odd[str(tmp_path / "patient1")]
    # A folder is one well of one label: a field labelled otherwise is refused by name.
    csv.write_text("\n".join([*rows[:2], "patient1/f1.png,golgi", *rows[3:]]) + "\n",
                   encoding="utf-8")
    assert validate_hep2.main(["--fields-csv", str(csv), "--wells", "--um-per-px", "0.35",
                               "--out-dir", str(tmp_path / "png")]) == 2
    assert "patient1: its fields carry different labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        validate_hep2.main(["--cells-dir", str(tmp_path), "--wells"])
