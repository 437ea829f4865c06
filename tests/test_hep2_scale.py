"""The HEp-2 field scale, estimated from the cells where nothing declares it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.crops import crops_for
from appliance.assays.hep2.scale import (
    PROVISIONAL_UM_PER_PX,
    SEARCH_STEP,
    Hep2Scale,
    best_scale,
    candidate_scales,
    central_cells,
    classifier_fit,
    core_ratios,
    declared_scale_warning,
    estimate_scale,
    object_diameter_um,
    range_warning,
    smoothed,
)
from appliance.assays.hep2.segmentation import segment_cells
from appliance.assays.hep2.types import Hep2Result
from appliance.capture.frame import Frame
from appliance.config import Config, Hep2CellsConfig, with_overrides
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

CFG = Hep2CellsConfig()


def _green(um: float, seed: int = 72_300, pattern: str = "centromere") -> np.ndarray:
    f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=640, height=480, um_per_px=um,
                                          patterns=((pattern, 1.0),), intensity=120.0))
    return f.image[..., 1].astype(np.float32)


@pytest.mark.parametrize("um", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("pattern", ["centromere", "homogeneous"])
def test_nuclear_fields_are_estimated_within_a_quarter(um: float, pattern: str) -> None:
    found = estimate_scale(_green(um, pattern=pattern), CFG)
    assert found.source == "estimated"
    assert found.um_per_px == pytest.approx(um, rel=0.25)
    assert "set the objective" in found.warnings[0]


def test_a_cytoplasmic_field_is_read_as_whole_cells() -> None:
    """Its objects are whole cells, not nuclei: taken for nuclei it would read a third off."""
    green = _green(0.6, pattern="cyto_reticular")
    cells = segment_cells(green, 0.6, CFG)
    cyto = float(np.median(core_ratios(green, cells, 0.6)))
    nuclear_green = _green(0.6, pattern="homogeneous")
    nuclear = float(np.median(core_ratios(
        nuclear_green, segment_cells(nuclear_green, 0.6, CFG), 0.6)))
    assert cyto < 0.8 < nuclear
    assert estimate_scale(green, CFG).um_per_px == pytest.approx(0.6, rel=0.25)


def test_core_ratio_of_a_disc_and_a_ring() -> None:
    green = np.full((200, 300), 10.0, np.float32)
    cv2.circle(green, (80, 100), 30, 150.0, -1)  # a stained nucleus
    cv2.circle(green, (210, 100), 40, 150.0, -1)  # a stained cytoplasm ...
    cv2.circle(green, (210, 100), 22, 12.0, -1)  # ... around a dark nucleus
    cells = segment_cells(green, 0.5, CFG)
    ratios = core_ratios(green, cells, 0.5)
    by_x = dict(zip(np.round(cells.centroids[:, 0], -1), ratios, strict=True))
    assert by_x[80.0] > 0.9 and by_x[210.0] < 0.3


def test_object_diameter_runs_from_whole_cells_to_nuclei() -> None:
    assert object_diameter_um(0.0) == object_diameter_um(0.3) == pytest.approx(25.7, abs=0.1)
    assert object_diameter_um(2.0) == object_diameter_um(1.0) == pytest.approx(17.4, abs=0.1)
    assert object_diameter_um(0.5) > object_diameter_um(0.8)


def test_the_estimate_follows_the_objective() -> None:
    near, far = (estimate_scale(_green(um, seed=72_301), CFG).um_per_px for um in (0.3, 0.9))
    assert 2.4 < far / near < 3.6  # truly 3


def test_a_field_without_cells_gets_the_provisional_scale_and_says_so() -> None:
    blank = np.random.default_rng(0).normal(8.0, 1.0, (480, 640)).astype(np.float32)
    found = estimate_scale(blank, CFG)
    assert (found.source, found.um_per_px) == ("assumed", PROVISIONAL_UM_PER_PX)
    assert "too few cells" in found.warnings[0]


def test_the_assay_estimates_only_when_nothing_declares_the_scale() -> None:
    image = generate_hep2_field(Hep2FieldSpec(seed=72_302, width=640, height=480,
                                              um_per_px=0.45,
                                              patterns=(("homogeneous", 1.0),))).image
    frame = Frame(image=image, seq=1, timestamp=0.0, source="f")
    base = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(base) as assay:
        estimated = assay.score(frame)
    with Hep2Assay.from_config(with_overrides(base, {"optics.objective": "20x"})) as assay:
        declared = assay.score(frame)
    assert estimated.um_per_px_source == "estimated"
    assert any("set the objective" in w for w in estimated.warnings)
    assert declared.um_per_px_source == "objective"
    assert not any("scale estimated" in w for w in declared.warnings)


# ------------------------------------------------------------------ the classifier's check


def test_candidates_are_quarter_octaves_around_the_estimate_within_the_plausible_range() -> None:
    got = candidate_scales(0.5, 3)
    assert len(got) == 7 and got[3] == 0.5
    assert np.allclose(np.diff(np.log(got)), np.log(SEARCH_STEP))
    assert candidate_scales(0.5, 0) == [0.5]
    clamped = candidate_scales(1.9, 3)
    assert clamped[-1] == 2.0 and len(clamped) == 5  # the steps beyond 2 um/px collapse
    with pytest.raises(ValueError):
        candidate_scales(0.0, 3)


def test_fits_are_smoothed_over_the_neighbours_that_have_one() -> None:
    assert smoothed([1.0, 0.0, 1.0]) == pytest.approx([2 / 3, 0.5, 2 / 3])
    assert smoothed([1.0, None, 0.4]) == [1.0, None, 0.4]
    assert smoothed([]) == []


def test_the_best_scale_is_the_peak_between_candidates() -> None:
    cands = candidate_scales(0.5, 3)
    peak = [1.0 - float(np.log(c / 0.6)) ** 2 for c in cands]
    # The smoothing is symmetric, so a parabola's vertex stays where it was.
    assert best_scale(cands, list(peak), 0.5, 0.0) == pytest.approx(0.6, rel=0.02)
    assert best_scale(cands, [None] * 7, 0.5, 0.0) is None


def test_a_flat_fit_keeps_the_size_estimate_and_a_lone_spike_is_not_believed() -> None:
    cands = candidate_scales(0.5, 3)
    assert best_scale(cands, [0.9] * 7, 0.5, 0.02) == pytest.approx(0.5)
    # One noisy candidate at the edge loses to a broad plateau in the middle.
    fits: list[float | None] = [0.95, 0.7, 0.85, 0.9, 0.9, 0.85, 0.7]
    got = best_scale(cands, fits, 0.5, 0.0)
    assert got is not None and 0.42 < got < 0.6


def test_central_cells_are_the_whole_ones_nearest_the_middle() -> None:
    green = np.full((200, 400), 5.0, np.float32)
    for x in (50, 120, 200, 280, 399):
        cv2.circle(green, (x, 100), 12, 150.0, -1)
    cells = segment_cells(green, 0.5, CFG)
    ids = central_cells(cells, green.shape, 2)
    xs = sorted(round(float(cells.centroids[i - 1, 0])) for i in ids)
    assert xs == [120, 200] or xs == [200, 280]
    assert 200 in xs and len(central_cells(cells, green.shape, 99)) == 4  # one cut by the edge


def test_classifier_fit_is_the_mean_top_probability() -> None:
    assert classifier_fit(np.array([[0.9, 0.1], [0.5, 0.5]])) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        classifier_fit(np.zeros((0, 3)))


def test_crops_of_some_cells_are_those_cells_crops_of_all() -> None:
    green = _green(0.5)
    cells = segment_cells(green, 0.5, CFG)
    every, ids = crops_for(green, cells.labels, 0.5, CFG)
    some, some_ids = crops_for(green, cells.labels, 0.5, CFG, only=ids[[1, 4]])
    assert list(some_ids) == list(ids[[1, 4]])
    assert np.array_equal(some, every[[1, 4]])


@pytest.mark.parametrize("seed", [720_003, 720_015])
def test_the_classifier_corrects_a_size_estimate_that_is_far_off(seed: int) -> None:
    """Generated tuning fields (seeds 720000+) where the size estimate alone is off by more
    than 40%: a homogeneous nucleolar field whose cells are read as whole cells, and a
    fibrillar field whose cells are read as nuclei."""
    field = generate_hep2_field(Hep2FieldSpec(seed=seed))
    green = field.image[..., 1].astype(np.float32)
    size = estimate_scale(green, CFG)
    assert abs(np.log(size.um_per_px / field.um_per_px)) > np.log(1.4)
    base = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(base) as assay:
        searched = assay._estimated_scale(green)
    with Hep2Assay.from_config(with_overrides(
            base, {"hep2.cells.scale_search_steps": 0})) as assay:
        alone = assay._estimated_scale(green)
    assert searched.source == "estimated" and "set the objective" in searched.warnings[0]
    assert searched.um_per_px == pytest.approx(field.um_per_px, rel=0.15)
    assert alone.um_per_px == size.um_per_px


def _score_without_scale(spec: Hep2FieldSpec) -> tuple[float, Hep2Result]:
    field = generate_hep2_field(spec)
    frame = Frame(image=field.image, seq=1, timestamp=0.0, source="f")
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        return field.um_per_px, assay.score(frame)


def test_focus_is_judged_at_the_estimated_scale_not_the_provisional_one() -> None:
    """A sharp 40x homogeneous field reads soft if judged as a 20x one (sharpness 1.47
    at 0.5 um/px, 1.97 at its true 0.25): before, the box refused it as out of focus
    whenever nobody declared the scale."""
    true_um, result = _score_without_scale(Hep2FieldSpec(
        seed=72_316, width=640, height=480, um_per_px=0.25,
        patterns=(("homogeneous", 1.0),), defocus_um=0.0))
    assert result.status == "scored"
    assert result.um_per_px == pytest.approx(true_um, rel=0.25)


def test_a_blurred_field_without_a_scale_is_still_refused_as_out_of_focus() -> None:
    _, result = _score_without_scale(Hep2FieldSpec(
        seed=72_316, width=640, height=480, um_per_px=0.25,
        patterns=(("fine_speckled", 1.0),), defocus_um=2.5))
    assert result.status == "not_scorable"
    assert result.reason is not None and "out of focus" in result.reason


def test_a_declared_scale_is_kept_for_the_crops_unless_the_field_is_too_coarse() -> None:
    """At 20x the crops are cut at the declared scale; at 10x (coarser than
    hep2.specimen.subtype_max_um_per_px) at the scale the classifier reads surest, near
    it. The reported scale is the declared one either way."""
    base = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(base) as assay:
        for um in (0.5, 0.95):
            field = generate_hep2_field(Hep2FieldSpec(
                seed=72_330, width=640, height=480, um_per_px=um,
                patterns=(("nucleolar_clumpy", 1.0),)))
            green = field.image[..., 1].astype(np.float32)
            cells = segment_cells(green, um, CFG)
            read = assay._reading_scale(green, cells, um)
            if um == 0.5:
                assert read == 0.5
            else:
                assert um / 1.7 < read < um * 1.7
            result = assay.score(Frame(image=field.image, seq=1, timestamp=0.0, source="f",
                                       um_per_px=um))
            assert (result.um_per_px, result.um_per_px_source) == (um, "frame")
            assert result.crop_um_per_px == pytest.approx(read)  # and says where it cut
    with Hep2Assay.from_config(with_overrides(
            base, {"hep2.cells.crop_search_steps": 0})) as assay:
        assert assay._reading_scale(green, cells, 0.95) == 0.95


def test_a_10x_field_searches_its_crop_scale_once_per_still_view(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline hands a field's scale back with the next frames of its still view; the
    crop scale found on the first is reused, not searched again."""
    field = generate_hep2_field(Hep2FieldSpec(seed=72_330, width=640, height=480,
                                              um_per_px=0.95,
                                              patterns=(("nucleolar_clumpy", 1.0),)))
    frame = Frame(image=field.image, seq=1, timestamp=0.0, source="f", um_per_px=0.95)
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        first = assay.prepare(frame)
        assert isinstance(first.scale, Hep2Scale) and first.scale.crop_um_per_px is not None

        def searched_again(*_: object) -> float:
            raise AssertionError("the crop scale was searched again")

        monkeypatch.setattr(assay, "_reading_scale", searched_again)
        second = assay.prepare(frame, first.scale)
    assert second.scale == first.scale
    assert first.crops is not None and second.crops is not None
    assert np.array_equal(first.crops, second.crops)


# ---------------------------------------------------------------- a declared scale checked


# One objective step (x2) is questioned in about 70% of fields, two (x4) in all: these are
# fields where it is.
@pytest.mark.parametrize(("true_um", "declared_um"), [(0.25, 0.5), (0.5, 1.0), (1.0, 0.25),
                                                      (0.25, 1.0)])
def test_a_declared_scale_an_objective_step_off_is_questioned(true_um: float,
                                                               declared_um: float) -> None:
    green = _green(true_um, pattern="homogeneous")
    doubt = declared_scale_warning(green, declared_um, "objective", CFG)
    assert doubt is not None and "check the objective setting" in doubt
    assert f"declared scale {declared_um:.2f} um/px (objective)" in doubt
    said = float(doubt.split("(about ")[1].split(" ")[0])
    assert said == pytest.approx(true_um, rel=0.3)
    assert declared_scale_warning(green, true_um, "objective", CFG) is None


def test_a_large_frame_is_checked_on_a_smaller_copy() -> None:
    # A 40x field magnified 3 times: a 2.8-megapixel field at 0.083 um/px.
    big = cv2.resize(_green(0.25, pattern="homogeneous"), (1920, 1440),
                     interpolation=cv2.INTER_LINEAR)
    assert declared_scale_warning(big, 0.25 / 3, "config", CFG) is None
    doubt = declared_scale_warning(big, 0.25, "config", CFG)
    assert doubt is not None and "about 0.0" in doubt


def test_the_assay_checks_a_declared_scale_once_per_still_view(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.assays.hep2.assay as assay_module

    field = generate_hep2_field(Hep2FieldSpec(seed=72_340, width=640, height=480,
                                              um_per_px=0.25,
                                              patterns=(("homogeneous", 1.0),)))
    tenx = generate_hep2_field(Hep2FieldSpec(seed=71_001, width=800, height=600,
                                             um_per_px=1.0,
                                             patterns=(("homogeneous", 1.0),)))
    frame = Frame(image=tenx.image, seq=1, timestamp=0.0, source="f", um_per_px=0.25)
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        # Declared two objective steps off, the sharp 40x field looks out of focus: the
        # refusal says what else to check.
        wide = assay.score(Frame(image=field.image, seq=1, timestamp=0.0, source="f",
                                 um_per_px=1.0))
        assert wide.reason_code == "out_of_focus"
        assert any("disagrees with the cells' size" in w for w in wide.warnings)
        first = assay.prepare(frame)  # a 10x field declared 40x
        assert first.refusal is None
        assert any("disagrees with the cells' size" in w for w in first.warnings)

        def checked_again(*_: object) -> str:
            raise AssertionError("the declared scale was checked again")

        monkeypatch.setattr(assay_module, "declared_scale_warning", checked_again)
        second = assay.prepare(frame, first.scale)
        assert any("disagrees with the cells' size" in w for w in second.warnings)
        # A negative well's faint cells are not asked.
        blank = generate_hep2_field(Hep2FieldSpec(seed=72_341, width=640, height=480,
                                                  um_per_px=0.25,
                                                  patterns=(("negative", 1.0),),
                                                  intensity=5.0))
        assay.prepare(Frame(image=blank.image, seq=2, timestamp=0.0, source="g",
                            um_per_px=0.25))


def test_a_scale_outside_the_trained_range_is_said() -> None:
    trained = (0.25, 1.0)
    assert range_warning(0.5, "objective", trained) is None
    assert range_warning(1.04, "objective", trained) is None  # a rounded 10x
    oil = range_warning(0.16, "objective", trained)
    assert oil is not None and "0.16 um/px (objective) is outside the 0.25-1 um/px" in oil
    assert range_warning(2.5, "config", trained) is not None  # a 4x objective
    field = generate_hep2_field(Hep2FieldSpec(seed=72_350, width=640, height=480,
                                              um_per_px=0.25,
                                              patterns=(("homogeneous", 1.0),)))
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as assay:
        assert assay.manifest.input.um_per_px_range == trained
        at_60x = assay.score(Frame(image=field.image, seq=1, timestamp=0.0, source="f",
                                   um_per_px=0.16))
        at_40x = assay.score(Frame(image=field.image, seq=1, timestamp=0.0, source="f",
                                   um_per_px=0.25))
    assert any("outside the 0.25-1 um/px" in w for w in at_60x.warnings)
    assert not any("outside the" in w for w in at_40x.warnings)
