"""The HEp-2 evaluation and benchmark tools: cell matching, figures, specimen plans, smoke runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.segmentation import describe
from appliance.assays.hep2.types import Hep2Cell, Hep2Result
from appliance.assays.her2.types import ModelRef
from tools import bench_hep2, eval_hep2
from tools.eval_hep2 import (
    CellTally,
    SpecimenOutcome,
    add_cells,
    match_cells,
    mean_class_accuracy,
    per_class_recall,
    specimen_cases,
    specimen_summary,
    target_results,
)
from tools.hep2_dataset import CALIBRATION_SEEDS, TRAIN_SEEDS, VAL_SEEDS
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

ROOT = Path(__file__).resolve().parents[1]
HAVE_MODEL = (ROOT / "models" / "hep2" / "manifest.json").is_file()
MODEL = ModelRef(name="test", sha256="0" * 64, precision="int8", validated_on="none")


def disks(shape: tuple[int, int], centres: list[tuple[int, int, int]]) -> np.ndarray:
    """A label image with disk i + 1 at (x, y, radius) centres[i]."""
    labels = np.zeros(shape, np.int32)
    for i, (x, y, r) in enumerate(centres):
        cv2.circle(labels, (x, y), r, i + 1, thickness=-1)
    return labels


def centroids(labels: np.ndarray) -> np.ndarray:
    n = int(labels.max())
    return np.array([[np.nonzero(labels == k)[1].mean(), np.nonzero(labels == k)[0].mean()]
                     for k in range(1, n + 1)])


# ------------------------------------------------------------------------------ matching


def test_matching_by_overlap_centroid_and_not_at_all() -> None:
    truth = disks((120, 160), [(30, 30, 15), (100, 60, 20), (130, 100, 10)])
    seg = np.zeros_like(truth)
    # A much too large outline around the second truth cell (IoU < 0.5, centroid inside).
    cv2.circle(seg, (100, 60), 40, 1, thickness=-1)
    # The first truth cell, shifted by 2 px (IoU well above 0.5), labelled 3 here.
    cv2.circle(seg, (32, 30), 15, 3, thickness=-1)
    # Debris on the background, where nothing is drawn.
    cv2.circle(seg, (10, 110), 5, 2, thickness=-1)
    got = match_cells(seg, centroids(seg), truth)
    overlap = np.sum((seg == 1) & (truth == 2))
    iou = overlap / (np.sum(seg == 1) + np.sum(truth == 2) - overlap)
    assert iou < 0.5  # the match below is the centroid rule's
    assert got == {3: 1, 1: 2}


def test_matching_refuses_label_images_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        match_cells(np.zeros((10, 10), np.int32), np.zeros((0, 2)), np.zeros((10, 11), np.int32))


def test_matching_an_empty_segmentation_gives_nothing() -> None:
    truth = disks((50, 50), [(25, 25, 10)])
    assert match_cells(np.zeros_like(truth), np.zeros((0, 2)), truth) == {}


# ------------------------------------------------------------------------------ figures


def test_per_class_recall_and_their_mean() -> None:
    rng = np.random.default_rng(3)
    m = rng.integers(0, 20, size=(len(NAMES), len(NAMES)))
    m[4] = 0  # a class with no cell is left out of the mean, not counted as 0
    recall = per_class_recall(m.tolist())
    assert recall[4] is None
    for i, r in enumerate(recall):
        if r is not None:
            assert r == pytest.approx(m[i, i] / m[i].sum())
    present = [m[i, i] / m[i].sum() for i in range(len(NAMES)) if m[i].sum()]
    assert mean_class_accuracy(m.tolist()) == pytest.approx(sum(present) / len(present))
    assert mean_class_accuracy([[0] * 3] * 3) == 0.0


def test_competent_confusion_counts_a_subtype_of_the_right_group_as_right() -> None:
    n = len(NAMES)
    m = np.zeros((n, n), int)
    ac8, ac10 = NAMES.index("nucleolar_homogeneous"), NAMES.index("nucleolar_punctate")
    ac6, ac1 = NAMES.index("multiple_nuclear_dots"), NAMES.index("homogeneous")
    m[ac8, ac10] = 3  # another nucleolar subtype: wrong expert, right competent
    m[ac8, ac8] = 1
    m[ac8, ac6] = 2  # nuclear dots: wrong at both levels
    m[ac1, ac1] = 5  # a class of no group keeps its own row
    c = eval_hep2.competent_confusion(m.tolist())
    labels = eval_hep2.COMPETENT_LABELS
    nol = labels.index("nucleolar (AC-8,9,10)")
    dots = labels.index("discrete nuclear dots (AC-6,7)")
    assert len(labels) == n - 6  # 17 classes, groups of 3 + 2 + 3 + 2 members
    assert c[nol][nol] == 4 and c[nol][dots] == 2
    assert c[labels.index("homogeneous")][labels.index("homogeneous")] == 5
    assert sum(map(sum, c)) == m.sum()
    assert mean_class_accuracy(c) == pytest.approx((4 / 6 + 1.0) / 2)
    assert mean_class_accuracy(m.tolist()) == pytest.approx((1 / 6 + 1.0) / 2)


def test_group_credit_keeps_the_classes_and_rights_a_subtype_of_the_same_group() -> None:
    n = len(NAMES)
    m = np.zeros((n, n), int)
    ac8, ac10 = NAMES.index("nucleolar_homogeneous"), NAMES.index("nucleolar_punctate")
    ac6 = NAMES.index("multiple_nuclear_dots")
    m[ac8, ac10], m[ac8, ac8], m[ac8, ac6] = 3, 1, 2
    c = np.array(eval_hep2.group_credited(m.tolist()))
    assert c.shape == (n, n) and c.sum() == m.sum()
    assert c[ac8, ac8] == 4 and c[ac8, ac10] == 0 and c[ac8, ac6] == 2  # dots stay wrong
    assert m[ac8, ac10] == 3  # the input is not changed


def test_objective_level_accuracy_credits_the_group_at_10x_only() -> None:
    n = len(NAMES)
    ac8, ac10 = NAMES.index("nucleolar_homogeneous"), NAMES.index("nucleolar_punctate")
    fine = np.zeros((n, n), int)
    fine[ac8, ac8], fine[ac8, ac10] = 3, 1  # 20x: a subtype error stays an error
    coarse = np.zeros((n, n), int)
    coarse[ac8, ac10] = 4  # 10x: every cell the wrong subtype of the right group
    fine_only, as_reported = eval_hep2.objective_level_accuracy(
        {"20x": fine.tolist(), "10x": coarse.tolist()})
    assert fine_only == pytest.approx(0.75)
    assert as_reported == pytest.approx(7 / 8)
    assert eval_hep2.objective_level_accuracy({"10x": coarse.tolist()}) == (None, 1.0)
    assert eval_hep2.objective_level_accuracy({}) == (None, None)


def outcome(kind: str, truth: tuple[str, ...], reported: tuple[str, ...], *,
            positive: bool | None, status: str = "scored") -> SpecimenOutcome:
    truth_positive = truth[0] != "negative"
    return SpecimenOutcome(
        seed=1, kind=kind, um_per_px=0.5, truth_patterns=truth, truth_positive=truth_positive,
        truth_intensity=100.0 if truth_positive else 5.0,
        truth_level="intermediate" if truth_positive else "negative", status=status,
        reported=reported, positive=positive, intensity=90.0, level="intermediate",
        reason=None, cells=50, ms=1.0)


def test_specimen_outcome_rules() -> None:
    single = outcome("single", ("centromere",), ("centromere", "golgi"), positive=True)
    assert single.pattern_correct and single.sign_correct
    wrong_order = outcome("single", ("centromere",), ("golgi", "centromere"), positive=True)
    assert not wrong_order.pattern_correct
    mixed = outcome("mixed", ("centromere", "golgi"), ("golgi", "centromere"), positive=True)
    assert mixed.pattern_correct and mixed.first == "golgi"
    half = outcome("mixed", ("centromere", "golgi"), ("centromere",), positive=True)
    assert not half.pattern_correct
    refused = outcome("negative", ("negative",), (), positive=None, status="not_scorable")
    assert refused.first == "not_scorable"
    assert not refused.pattern_correct and not refused.sign_correct
    neg = outcome("negative", ("negative",), ("negative",), positive=False)
    assert neg.pattern_correct and neg.sign_correct


def test_summary_and_targets_follow_the_outcomes() -> None:
    good = [outcome("single", (n,), (n,), positive=True) for n in eval_hep2.STAINED]
    mixed = [outcome("mixed", ("centromere", "golgi"), ("centromere", "golgi"), positive=True)]
    neg = [outcome("negative", ("negative",), ("negative",), positive=False)]
    summary = specimen_summary(good + mixed + neg)
    assert summary["pattern_accuracy"] == 1.0
    assert summary["positive_negative_agreement"] == 1.0
    cells = {"mean_class_accuracy": 0.97}
    assert all(passed for *_, passed in target_results(cells, summary))
    # One positive specimen called negative in 18: below the 0.99 sign target, and 15 of 16
    # single patterns is below 0.95; the mixed target still passes.
    flipped = [*good[1:], replace(good[0], positive=False, reported=("negative",)), *mixed,
               *neg]
    results = {name: passed for name, _, _, passed in
               target_results(cells, specimen_summary(flipped))}
    assert not results["positive/negative agreement"]
    assert not results["specimen pattern accuracy"]
    assert results["mixed specimens report both"]
    low = {"mean_class_accuracy": 0.9}
    assert not dict((n, p) for n, _, _, p in target_results(low, summary))[
        "cell mean class accuracy"]


def test_mixed_specimens_are_also_counted_at_the_competent_level() -> None:
    truth = ("homogeneous", "nucleolar_homogeneous")
    subtype_off = outcome("mixed", truth, ("homogeneous", "nucleolar_punctate"),
                          positive=True)
    group_off = outcome("mixed", truth, ("homogeneous", "few_nuclear_dots"), positive=True)
    right = outcome("mixed", truth, truth, positive=True)
    summary = specimen_summary([subtype_off, group_off, right])
    assert summary["mixed_both_reported"] == pytest.approx(1 / 3)
    assert summary["mixed_both_competent"] == pytest.approx(2 / 3)


def test_scale_bands_split_between_the_objectives() -> None:
    assert [eval_hep2.scale_band(u) for u in (0.25, 0.35, 0.36, 0.5, 0.7, 0.71, 1.0)] == [
        "40x", "40x", "20x", "20x", "20x", "10x", "10x"]


# ------------------------------------------------------------------------------ specimen plan


def test_specimen_plan_covers_every_class_on_held_out_seeds() -> None:
    cases = specimen_cases(2)
    per_round = len(eval_hep2.STAINED) + 1 + len(eval_hep2.MIXED_PAIRS)
    assert len(cases) == 2 * per_round
    seeds = [c.spec.seed for c in cases]
    assert len(set(seeds)) == len(seeds)
    used = set(TRAIN_SEEDS) | set(VAL_SEEDS) | set(CALIBRATION_SEEDS)
    assert not used & set(seeds)
    singles = [c.spec.patterns[0][0] for c in cases if c.kind == "single" and c.spec.patterns]
    assert sorted(set(singles)) == sorted(n for n in NAMES if n != "negative")
    assert sum(c.kind == "negative" for c in cases) == 2
    mixed = {tuple(n for n, _ in c.spec.patterns or ()) for c in cases if c.kind == "mixed"}
    assert mixed == set(eval_hep2.MIXED_PAIRS)
    with pytest.raises(ValueError, match="at least 1"):
        specimen_cases(0)


def test_cli_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        eval_hep2.parse_args(["--specimens", "0"])
    with pytest.raises(SystemExit):
        eval_hep2.parse_args(["--um-per-px", "7"])
    assert eval_hep2.parse_args(["--quick"]).specimens == eval_hep2.QUICK_SPECIMENS
    with pytest.raises(SystemExit):
        bench_hep2.parse_args(["--batch", "0"])


# ------------------------------------------------------------------------------ on a real field


def fake_result(cells: list[Hep2Cell]) -> Hep2Result:
    return Hep2Result(file="f", seq=0, status="scored", model=MODEL, image_width=1,
                      image_height=1, cells=tuple(cells))


def test_add_cells_on_a_generated_field_with_its_own_labels() -> None:
    """A 'segmentation' that is the truth itself and calls that are the truth score 1."""
    field = generate_hep2_field(Hep2FieldSpec(seed=499_999, width=320, height=240,
                                              um_per_px=0.5, patterns=(("golgi", 1.0),),
                                              mitotic_fraction=0.15))
    seg = describe(field.cell_labels, np.zeros(field.cell_labels.shape, np.float32))
    by_id = {c.cell_id: c for c in field.cells}
    present = [k for k in range(1, seg.count + 1) if seg.areas_px[k - 1] > 0]

    def call(k: int, pattern: str, mitosis: str) -> Hep2Cell:
        return Hep2Cell(cell_id=k, x=0.0, y=0.0, area_um2=1.0, brightness=1.0,
                        pattern=pattern, confidence=1.0, probabilities={}, mitosis=mitosis,
                        mitosis_confidence=1.0)

    def truth_mitosis(k: int) -> str:
        t = by_id[k]
        if not t.mitotic:
            return "interphase"
        return "mitotic_plate_stained" if t.plate_stained else "mitotic_plate_unstained"

    right = CellTally()
    counted = add_cells(right, field, seg, fake_result(
        [call(k, by_id[k].pattern, truth_mitosis(k)) for k in present]))
    interphase = sum(not by_id[k].mitotic for k in present)
    mitotic = sum(by_id[k].mitotic for k in present)
    assert mitotic > 0 and interphase > 0
    assert counted == (interphase, interphase)
    summary = eval_hep2.cell_summary(right)
    assert summary["mean_class_accuracy"] == 1.0
    assert summary["interphase_cells"] == interphase
    assert summary["detection_recall"] == 1.0 and summary["detection_precision"] == 1.0
    assert summary["metaphase_recall"] == 1.0 and summary["metaphase_precision"] == 1.0
    assert summary["plate_accuracy"] == 1.0
    assert summary["mean_class_accuracy_by_band"] == {"20x": 1.0}  # 0.5 um/px is 20x
    assert summary["competent_mean_class_accuracy"] == 1.0
    assert summary["competent_mean_class_accuracy_by_band"] == {"20x": 1.0}
    assert summary["mean_class_accuracy_20x_40x"] == 1.0
    assert summary["mean_class_accuracy_group_at_10x"] == 1.0
    by_band = summary["per_class_recall_by_band"]
    assert isinstance(by_band, dict) and set(by_band) == {"20x"}
    assert {r for r in by_band["20x"].values() if r is not None} == {1.0}
    # Every call wrong: the golgi row goes to another class, metaphases are missed.
    wrong = CellTally()
    counted = add_cells(wrong, field, seg, fake_result([call(k, "homogeneous", "interphase")
                                                        for k in present]))
    assert counted == (interphase, 0)
    summary = eval_hep2.cell_summary(wrong)
    assert summary["mean_class_accuracy"] == 0.0
    assert wrong.confusion[NAMES.index("golgi")][NAMES.index("homogeneous")] == interphase
    assert summary["metaphase_recall"] == 0.0 and summary["metaphase_precision"] is None


def test_truth_shares_count_whole_interphase_cells_only() -> None:
    def cell(pattern: str, *, mitosis: str = "interphase", edge: bool = False) -> Hep2Cell:
        return Hep2Cell(cell_id=1, x=0.0, y=0.0, area_um2=1.0, brightness=1.0, pattern=pattern,
                        confidence=1.0, probabilities={}, mitosis=mitosis,
                        mitosis_confidence=1.0, touches_edge=edge)

    cells = [cell("golgi"), cell("golgi"), cell("centromere"), cell("homogeneous"),
             cell("centromere", edge=True), cell("centromere", mitosis="mitotic_plate_stained")]
    got = eval_hep2.truth_shares(cells, ("centromere", "golgi"))
    assert got == (0.25, 0.5)
    assert eval_hep2.truth_shares([], ("golgi",)) == (0.0,)


# ------------------------------------------------------------------------------ smoke runs


@pytest.mark.skipif(not HAVE_MODEL, reason="models/hep2 is not built yet (tools.train_hep2)")
def test_eval_smoke_run_with_the_shipped_model(tmp_path: Path) -> None:
    from appliance.assays.hep2.assay import Hep2Assay
    from appliance.config import Config, with_overrides

    cases = [c for c in specimen_cases(1) if c.spec.patterns and c.spec.patterns[0][0] in
             ("centromere", "fine_speckled", "homogeneous")][:3]
    cfg = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(cfg) as assay:
        outcomes, tally = eval_hep2.evaluate(assay, cases)
    assert [o.seed for o in outcomes] == [c.spec.seed for c in cases]
    cells = eval_hep2.cell_summary(tally)
    # Segmentation (not the model) decides detection: most whole cells are found.
    assert isinstance(cells["detection_recall"], float) and cells["detection_recall"] > 0.7
    assert tally.matched <= tally.segmented
    assert cells["interphase_cells"] == sum(map(sum, tally.confusion)) > 0
    text = eval_hep2.format_report(cells, specimen_summary(outcomes), outcomes)
    assert "targets (issue #7)" in text and "AC-22" in text
    png = tmp_path / "c.png"
    eval_hep2.plot_confusion(tally.confusion, NAMES, NAMES, "t", png)
    assert png.stat().st_size > 1000
    # Declared, the box works at the drawn scale; left to estimate, at its own.
    assert all(o.scale_used == pytest.approx(o.um_per_px, abs=1e-4) for o in outcomes)
    assert eval_hep2.scale_summary(outcomes)["within_10_percent"] == 1.0
    with Hep2Assay.from_config(cfg) as assay:
        estimated, _ = eval_hep2.evaluate(assay, cases[:1], estimate_scale=True)
    assert estimated[0].scale_used is not None
    assert estimated[0].scale_used != pytest.approx(estimated[0].um_per_px, abs=1e-4)


def test_scale_summary_measures_the_ratio_both_ways() -> None:
    def at(true: float, used: float | None) -> eval_hep2.SpecimenOutcome:
        return replace(outcome("single", ("centromere",), ("centromere",), positive=True),
                       um_per_px=true, scale_used=used)

    s = eval_hep2.scale_summary([at(0.5, 0.5), at(0.5, 0.6), at(0.5, 0.42), at(0.5, 1.0),
                                 at(0.5, None)])
    assert s["fields"] == 4 and s["median_ratio"] == pytest.approx(1.1)
    assert s["within_10_percent"] == 0.25 and s["within_25_percent"] == 0.75
    assert eval_hep2.scale_summary([at(0.5, None)]) == {}


@pytest.mark.skipif(not HAVE_MODEL, reason="models/hep2 is not built yet (tools.train_hep2)")
def test_bench_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.png"
    data = tmp_path / "bench.json"
    assert bench_hep2.main(["--fields", "1", "--repeats", "2", "--batch", "32",
                            "--out", str(out), "--json", str(data)]) == 0
    report = json.loads(data.read_text())
    assert set(report["classifier"]) == {"fp32", "int8"}
    assert set(report["assay"]) == {"800x600", "1280x960"}
    for per in report["assay"].values():
        for r in per.values():
            assert r["cells_per_field"] > 0 and r["ms_per_field"] > 0
    assert set(report["scale_modes"]) == set(bench_hep2.SCALE_MODES)
    assert all(r["ms_per_field"] > 0 for r in report["scale_modes"].values())
    assert set(report["coarse_modes"]) == {"declared 10x", "10x, crops not searched"}
    assert out.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "INT8 speed-up" in printed and "size + classifier" in printed


def test_false_second_patterns_are_counted_for_single_and_mixed_specimens() -> None:
    clean = outcome("single", ("centromere",), ("centromere",), positive=True)
    extra = outcome("single", ("centromere",), ("centromere", "golgi"), positive=True)
    mixed_ok = outcome("mixed", ("centromere", "golgi"), ("golgi", "centromere"), positive=True)
    mixed_extra = outcome("mixed", ("centromere", "golgi"), ("centromere", "coarse_speckled"),
                          positive=True)
    summary = specimen_summary([clean, extra, mixed_ok, mixed_extra])
    assert summary["single_with_false_second"] == 0.5
    assert summary["mixed_with_false_pattern"] == 0.5


def test_a_bad_config_file_stops_the_eval_with_its_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "box.toml"
    bad.write_text("[hep2.cells]\nscale_search_steps = -1\n")
    assert eval_hep2.main(["--quick", "--config", str(bad), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hep2.cells.scale_search_steps" in err


def test_lost_cells_names_the_specimens_that_lose_the_most() -> None:
    def outcome(seed: int, judged: int, right: int, kind: str = "single") -> SpecimenOutcome:
        return SpecimenOutcome(seed=seed, kind=kind, um_per_px=0.5,
                               truth_patterns=("fine_speckled",), truth_positive=True,
                               truth_intensity=80.0, truth_level="strong", status="scored",
                               reported=("fine_speckled",), positive=True, intensity=80.0,
                               level="strong", reason=None, cells=judged, ms=1.0,
                               cells_judged=judged, cells_right=right)
    outcomes = [outcome(1, 100, 99), outcome(2, 400, 200), outcome(3, 50, 40),
                outcome(4, 0, 0, kind="mixed")]
    lost = eval_hep2.lost_cells(outcomes, top=2)
    assert lost["specimens"] == 3 and lost["cells"] == 550 and lost["lost"] == 211
    worst = lost["worst"]
    assert isinstance(worst, list) and [w["seed"] for w in worst] == [2, 3]
    assert lost["top_share_of_lost"] == pytest.approx(210 / 211)
    text = eval_hep2.format_lost_cells(lost)
    assert text[0] == ("cells lost: 211 of 550 in 3 specimens; the 2 specimens below lose "
                       "99.5 % of them")
    assert "seed 2 fine_speckled" in text[1] and "200 of  400 right" in text[1]
