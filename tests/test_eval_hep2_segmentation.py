"""The segmentation measurement tool: its counts on constructed segmentations, and a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2.segmentation import describe
from tools import eval_hep2_segmentation as tool
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field


@pytest.fixture(scope="module")
def field() -> Hep2Field:
    return generate_hep2_field(Hep2FieldSpec(seed=12, width=320, height=240,
                                             patterns=(("homogeneous", 1.0),)))


def _whole(field: Hep2Field) -> list[int]:
    return [c.cell_id for c in field.cells if not c.touches_edge]


def test_the_truth_itself_finds_and_outlines_every_cell(field: Hep2Field) -> None:
    seg = describe(field.cell_labels.astype(np.int32), np.zeros(field.cell_labels.shape))
    t = tool.tally_field(field, seg)
    assert t.cells == len(_whole(field)) > 3
    assert (t.found, t.outlined, t.split, t.merged, t.missed) == (t.cells, t.cells, 0, 0, 0)
    assert t.objects == len(field.cells) and t.false_objects == 0


def test_an_empty_segmentation_misses_every_cell(field: Hep2Field) -> None:
    seg = describe(np.zeros(field.cell_labels.shape, np.int32),
                   np.zeros(field.cell_labels.shape))
    t = tool.tally_field(field, seg)
    assert (t.found, t.missed, t.outlined, t.objects) == (0, t.cells, 0, 0)


def test_two_cells_in_one_object_count_one_found_one_merged(field: Hep2Field) -> None:
    a, b = _whole(field)[:2]
    labels = field.cell_labels.astype(np.int32).copy()
    labels[labels == b] = a  # one object over both cells
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    t = tool.tally_field(field, describe(labels, np.zeros(labels.shape)))
    assert t.merged + t.found == t.cells and t.merged >= 1
    assert t.missed == 0 and t.outlined <= t.cells - 1


def test_a_cell_cut_in_two_is_found_once_and_counted_split(field: Hep2Field) -> None:
    cid = _whole(field)[0]
    labels = field.cell_labels.astype(np.int32).copy()
    ys, xs = np.nonzero(labels == cid)
    left = xs < np.median(xs)
    labels[ys[left], xs[left]] = labels.max() + 1  # its left half is another object
    t = tool.tally_field(field, describe(labels, np.zeros(labels.shape)))
    assert (t.found, t.split, t.merged, t.missed) == (t.cells, 1, 0, 0)
    assert t.objects == len(field.cells) + 1 and t.false_objects == 0


def test_a_false_object_on_the_background_is_counted(field: Hep2Field) -> None:
    labels = field.cell_labels.astype(np.int32).copy()
    ys, xs = np.nonzero(field.cell_labels == 0)
    labels[ys[0], xs[0]] = labels.max() + 1  # one pixel on the glass
    t = tool.tally_field(field, describe(labels, np.zeros(labels.shape)))
    assert t.false_objects == 1 and t.objects == len(field.cells) + 1


def test_outline_ious_is_the_best_overlap_of_each_truth_cell() -> None:
    truth = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4], truth[6:10, 6:10] = 1, 2
    seg = np.zeros((10, 10), np.int32)
    seg[0:4, 0:2] = 1  # half of cell 1
    assert tool.outline_ious(seg, truth) == pytest.approx([0.5, 0.0])
    assert tool.outline_ious(np.zeros_like(truth), truth) == pytest.approx([0.0, 0.0])
    assert tool.outline_ious(seg, np.zeros_like(truth)).size == 0


def test_rates_are_shares_and_none_when_nothing_was_counted() -> None:
    t = tool.SegTally(cells=10, found=8, split=2, merged=1, missed=1, outlined=5, objects=9,
                      false_objects=1, fields=2, seconds=0.1)
    r = t.rates()
    assert (r["found"], r["split"], r["merged"], r["missed"], r["outlined"]) == (
        0.8, 0.2, 0.1, 0.1, 0.5)
    assert r["false_objects"] == pytest.approx(1 / 9, abs=1e-4) and r["ms_per_field"] == 50.0
    assert tool.SegTally().rates()["found"] is None


def test_a_run_prints_the_table_and_writes_numbers_and_a_chart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tool, "PATTERNS", ("homogeneous", "cyto_reticular"))
    out = tmp_path / "seg.json"
    assert tool.main(["--fields", "1", "--quiet", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["by_pattern"]) == {"homogeneous", "cyto_reticular"}
    assert doc["by_pattern"]["homogeneous"]["cells"] > 0
    assert sum(b["cells"] for b in doc["by_band"].values()) == sum(
        p["cells"] for p in doc["by_pattern"].values())
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "cyto_reticular" in printed and "by objective" in printed and "all" in printed


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        tool.main(["--fields", "0"])
