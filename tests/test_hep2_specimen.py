"""Specimen-level HEp-2 rules on constructed cells."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.assays.hep2.patterns import (
    NAMES,
    REGIONS,
    SUBTYPE_GROUPS,
    canonical,
    pattern,
    subtype_group,
)
from appliance.assays.hep2.specimen import (
    UNSTAINED_LIGHT,
    call_specimen,
    intensity_level,
    look_alikes,
    stained_plate_share,
    vote_confidence,
    votes_from_probabilities,
)
from appliance.assays.hep2.types import Hep2Cell
from appliance.config import Hep2IntensityConfig, Hep2SpecimenConfig

SPEC, INT = Hep2SpecimenConfig(), Hep2IntensityConfig()


def cell(name: str, p: float = 0.9, *, mitosis: str = "interphase", runner_up: str = "negative",
         edge: bool = False, cid: int = 0) -> Hep2Cell:
    probs = dict.fromkeys(NAMES, 0.0)
    probs[name] = p
    probs[runner_up] = probs.get(runner_up, 0.0) + (1.0 - p)
    return Hep2Cell(cell_id=cid, x=0.0, y=0.0, area_um2=200.0, brightness=80.0, pattern=name,
                    confidence=p, probabilities=probs, mitosis=mitosis,
                    mitosis_confidence=0.9, touches_edge=edge)


def cells(name: str, n: int, **kw: object) -> list[Hep2Cell]:
    return [cell(name, **kw) for _ in range(n)]  # type: ignore[arg-type]


def call(cs: list[Hep2Cell], units: float = 80.0):
    return call_specimen(cs, units, specimen=SPEC, intensity=INT)


def test_one_pattern_is_called_with_its_icap_code_and_share() -> None:
    result = call(cells("centromere", 40) + cells("fine_speckled", 5))
    assert result.positive is True and result.intensity_level == "intermediate"
    assert [(p.name, p.icap) for p in result.patterns] == [("centromere", "AC-3")]
    assert result.patterns[0].share == pytest.approx(40 / 45, abs=1e-3)


def test_a_mixed_specimen_reports_both_patterns_strongest_first() -> None:
    result = call(cells("homogeneous", 25, runner_up="nucleolar_homogeneous")
                  + cells("nucleolar_homogeneous", 15, runner_up="homogeneous")
                  + cells("centromere", 3))
    names = [p.name for p in result.patterns]
    assert names[:2] == ["homogeneous", "nucleolar_homogeneous"] and len(names) == 2
    assert "mixed" in result.patterns[1].evidence


def test_cells_read_with_low_confidence_warn_that_the_pattern_is_uncertain() -> None:
    """Blur that passes the focus gate makes cells uncertain: the call says so."""
    def warned(cs: list[Hep2Cell], spec: Hep2SpecimenConfig = SPEC) -> list[str]:
        result = call_specimen(cs, 80.0, specimen=spec, intensity=INT)
        return [w for w in result.warnings if "low confidence" in w]
    assert warned(cells("fine_speckled", 30, p=0.9)) == []
    unsure = cells("homogeneous", 30, p=0.55, runner_up="fine_speckled")
    (words,) = warned(unsure)
    assert words.startswith("the cells were read with low confidence (0.55 on average")
    assert "below 0.65" in words and "refocus" in words
    # The call itself stands: the warning asks for a look, it refuses nothing.
    assert [p.icap for p in call(unsure).patterns] == ["AC-1"]
    # A compound cell holds its two patterns' probability together (AC-1 + AC-8 in the
    # same cells): not uncertain.
    compound = cells("homogeneous", 30, p=0.5, runner_up="nucleolar_homogeneous")
    assert warned(compound) == []
    assert warned(unsure, replace(SPEC, low_confidence_below=0.0)) == []


def test_low_intensity_is_negative_whatever_the_classifier_says() -> None:
    result = call(cells("homogeneous", 50), units=12.0)
    assert result.positive is False and result.intensity_level == "negative"
    assert [p.icap for p in result.patterns] == ["AC-0"]


@pytest.mark.parametrize("units, level", [(0, "negative"), (19.9, "negative"), (20, "weak"),
                                          (59, "weak"), (60, "intermediate"),
                                          (150, "strong"), (900, "strong")])
def test_intensity_levels(units: float, level: str) -> None:
    assert intensity_level(units, INT) == level


def test_metaphases_flip_a_homogeneous_call_to_fine_speckled() -> None:
    # Interphase cells look homogeneous (the classic AC-1 / AC-4 confusion), but every
    # metaphase plate is dark: that is AC-4, not AC-1.
    interphase = cells("homogeneous", 30, p=0.6, runner_up="fine_speckled")
    plates_dark = cells("homogeneous", 4, mitosis="mitotic_plate_unstained")
    flipped = call(interphase + plates_dark).patterns[0]
    assert (flipped.name, flipped.icap) == ("fine_speckled", "AC-4")
    assert "metaphase plates stain in 0 of 4" in flipped.evidence
    # The same cells with stained plates stay AC-1.
    plates_bright = cells("homogeneous", 4, mitosis="mitotic_plate_stained")
    kept = call(interphase + plates_bright).patterns[0]
    assert kept.icap == "AC-1" and "consistent" in kept.evidence


def test_metaphases_flip_a_speckled_call_to_homogeneous() -> None:
    interphase = cells("fine_speckled", 30, p=0.55, runner_up="homogeneous")
    plates = cells("fine_speckled", 3, mitosis="mitotic_plate_stained")
    assert call(interphase + plates).patterns[0].icap == "AC-1"


def test_the_plates_expected_follow_the_mix_of_reported_patterns() -> None:
    assert stained_plate_share({"homogeneous": 1.0}) == pytest.approx(0.95)
    assert stained_plate_share({"fine_speckled": 0.7}) == pytest.approx(0.05)
    # AC-3's dotted plate reads as stained; AC-8's plate is dark.
    assert stained_plate_share({"centromere": 0.5, "nucleolar_homogeneous": 0.5}) == (
        pytest.approx(0.5))
    assert stained_plate_share({"homogeneous": 0.75, "nucleolar_homogeneous": 0.25}) == (
        pytest.approx(0.05 + 0.9 * 0.75))
    with pytest.raises(ValueError):
        stained_plate_share({"homogeneous": 0.0})


def test_a_tie_of_plates_keeps_the_interphase_call() -> None:
    interphase = cells("homogeneous", 30, p=0.6, runner_up="fine_speckled")
    plates = (cells("homogeneous", 2, mitosis="mitotic_plate_stained")
              + cells("homogeneous", 2, mitosis="mitotic_plate_unstained"))
    kept = call(interphase + plates).patterns[0]
    assert kept.icap == "AC-1" and "stain in 2 of 4: consistent" in kept.evidence


def test_dark_plates_of_the_other_pattern_do_not_overturn_ac1_in_a_mix() -> None:
    # AC-1 + AC-8: the AC-8 cells' plates are dark. 2 of 4 plates stained would be odd for
    # AC-1 alone, but it is what the mix predicts; for AC-4 + AC-8 none should stain.
    interphase = (cells("homogeneous", 24, runner_up="fine_speckled")
                  + cells("nucleolar_homogeneous", 16))
    plates = (cells("homogeneous", 2, mitosis="mitotic_plate_stained")
              + cells("nucleolar_homogeneous", 2, mitosis="mitotic_plate_unstained"))
    result = call(interphase + plates)
    assert [p.icap for p in result.patterns] == ["AC-1", "AC-8"]
    assert "consistent" in result.patterns[0].evidence
    # All four dark: now the plates do say AC-4, not AC-1.
    dark = cells("homogeneous", 4, mitosis="mitotic_plate_unstained")
    assert [p.icap for p in call(interphase + dark).patterns] == ["AC-4", "AC-8"]


def test_a_second_pattern_is_checked_against_the_metaphases_too() -> None:
    # Reticular with dense fine speckled nuclei in a quarter of the cells, but no plate
    # stains: the nuclear pattern is fine speckled (AC-4), whose plates are dark.
    interphase = (cells("cyto_reticular", 30)
                  + cells("dense_fine_speckled", 12, p=0.6, runner_up="fine_speckled"))
    plates = cells("cyto_reticular", 6, mitosis="mitotic_plate_unstained")
    result = call(interphase + plates)
    assert [p.icap for p in result.patterns] == ["AC-21", "AC-4"]
    second = result.patterns[1]
    assert "mixed pattern" in second.evidence and "not AC-2, AC-4" in second.evidence
    # With plates that stain as the mix predicts, AC-2 stands.
    some = plates[:4] + cells("dense_fine_speckled", 2, mitosis="mitotic_plate_stained")
    assert [p.icap for p in call(interphase + some).patterns] == ["AC-21", "AC-2"]


def test_a_pattern_the_metaphases_turn_into_another_reported_one_is_merged() -> None:
    interphase = (cells("fine_speckled", 26, runner_up="homogeneous")
                  + cells("homogeneous", 14, runner_up="fine_speckled"))
    dark = cells("fine_speckled", 10, mitosis="mitotic_plate_unstained")
    result = call(interphase + dark)
    assert [p.icap for p in result.patterns] == ["AC-4"]
    assert ("AC-1 (metaphase plates stain in 0 of 10: not AC-1, AC-4): its 14 of 40 cells "
            "go to the AC-4 already reported") in result.warnings


def test_a_first_pattern_turned_into_the_second_one_takes_its_place() -> None:
    interphase = (cells("homogeneous", 26, runner_up="fine_speckled")
                  + cells("fine_speckled", 14, runner_up="homogeneous"))
    dark = cells("homogeneous", 10, mitosis="mitotic_plate_unstained")
    result = call(interphase + dark)
    assert [p.icap for p in result.patterns] == ["AC-4"]
    assert "not AC-1, AC-4" in result.patterns[0].evidence
    assert "AC-4: its 14 of 40 cells go to the AC-4 already reported" in result.warnings


def test_a_look_alike_without_metaphases_is_called_with_a_warning() -> None:
    result = call(cells("fine_speckled", 30))
    assert result.patterns[0].icap == "AC-4"
    assert any("not confirmed by metaphases" in w for w in result.warnings)
    assert call(cells("centromere", 30)).warnings == ()  # no look-alike: no warning


def test_too_few_or_too_uncertain_cells_give_a_positive_without_a_pattern() -> None:
    few = call(cells("homogeneous", 5) + cells("homogeneous", 30, edge=True))
    assert few.positive is True and few.patterns == ()
    assert any("too few whole interphase cells" in w for w in few.warnings)
    flat = [replace(c, probabilities=dict.fromkeys(NAMES, 1 / len(NAMES)))
            for c in cells("homogeneous", 40)]
    unsure = call(flat)
    assert unsure.positive is True and unsure.patterns == ()
    assert any("confidence" in w for w in unsure.warnings)
    # A dim field with few cells is still simply negative.
    assert call(cells("homogeneous", 3), units=5.0).positive is False


def test_dim_cells_classified_negative_in_a_positive_specimen_vote_for_staining() -> None:
    dim = cells("negative", 30, p=0.4, runner_up="golgi")  # golgi at 0.6
    result = call(dim)
    assert result.patterns[0].name == "golgi"


def test_pattern_table_and_aliases() -> None:
    assert pattern("golgi").icap == "AC-22"
    assert canonical("NuMem") == "envelope_smooth"
    assert canonical("Speckled") == "fine_speckled"
    with pytest.raises(ValueError, match="ALIASES"):
        canonical("mitotic spindle")
    assert len(set(NAMES)) == len(NAMES) == 17
    # ICAP codes of the table's classes are labels too; codes it lacks are refused.
    assert [canonical(c) for c in ("AC-3", "ac 10", "AC0", "AC-22")] == [
        "centromere", "nucleolar_punctate", "negative", "golgi"]
    with pytest.raises(ValueError, match="'AC-16'"):
        canonical("AC-16")
    assert canonical("AC-1") == "homogeneous" != canonical("AC-10")


def test_few_voting_cells_still_call_but_warn() -> None:
    result = call(cells("centromere", 12))
    assert result.patterns[0].icap == "AC-3"
    assert any("only 12 cells" in w for w in result.warnings)


def test_a_cell_showing_two_regions_votes_for_both() -> None:
    # Homogeneous nuclei with a fibrillar cytoplasm in the same cells (AC-1 + AC-15).
    both = cells("homogeneous", 30, p=0.55, runner_up="cyto_fibrillar")
    result = call(both)
    assert [p.icap for p in result.patterns] == ["AC-1", "AC-15"]
    # Two patterns of one region (nucleoplasm) do not split one cell's vote.
    same_region = cells("homogeneous", 30, p=0.55, runner_up="centromere")
    assert [p.icap for p in call(same_region).patterns] == ["AC-1"]


def test_a_compound_cell_split_between_its_two_patterns_is_a_confident_voter() -> None:
    # The classifier is taught compound cells as half one pattern, half the other: neither
    # half reaches min_confidence alone, but the cell's two votes together do.
    split = cells("centromere", 30, p=0.48, runner_up="golgi")
    assert all(vote_confidence(c, SPEC.second_vote) >= SPEC.min_confidence for c in split)
    result = call(split)
    assert {p.icap for p in result.patterns} == {"AC-3", "AC-22"}
    assert all(p.share == 1.0 for p in result.patterns)
    # A cell torn between two look-alikes of one region is not confident.
    one = cell("centromere", p=0.45, runner_up="coarse_speckled")
    probs = {**one.probabilities, "coarse_speckled": 0.4, "negative": 0.15}
    torn = [replace(one, probabilities=probs) for _ in range(30)]
    assert vote_confidence(torn[0], SPEC.second_vote) == pytest.approx(0.45)
    assert call(torn).patterns == ()


def test_votes_from_probabilities_needs_the_second_region_to_reach_second_vote() -> None:
    probs = dict.fromkeys(NAMES, 0.0)
    probs.update(homogeneous=0.7, cyto_fibrillar=0.2, nucleolar_homogeneous=0.1)
    assert votes_from_probabilities(probs, 0.3) == ["homogeneous"]
    assert votes_from_probabilities(probs, 0.15) == ["homogeneous", "cyto_fibrillar"]


def test_a_subtype_called_at_10x_warns_to_report_its_group() -> None:
    cs = cells("nucleolar_clumpy", 30)
    coarse = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.95)
    assert [p.icap for p in coarse.patterns] == ["AC-9"]  # the call itself stands
    (warning,) = [w for w in coarse.warnings if "resolution" in w]
    assert "AC-9" in warning and "nucleolar (AC-8,9,10)" in warning and "0.95" in warning
    for um in (0.5, None):  # 20x, or a scale nobody knows: no such warning
        fine = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=um)
        assert not any("resolution" in w for w in fine.warnings)


def test_patterns_without_subtypes_do_not_warn_at_10x() -> None:
    for name in ("centromere", "homogeneous", "golgi"):
        result = call_specimen(cells(name, 30), 80.0, specimen=SPEC, intensity=INT,
                               um_per_px=1.0)
        assert not any("resolution" in w for w in result.warnings), name


def test_each_subtype_of_a_mixed_call_warns_once() -> None:
    cs = cells("fine_speckled", 20) + cells("envelope_punctate", 20)
    result = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.9)
    warned = [w for w in result.warnings if "resolution" in w]
    assert len(warned) == 2
    assert any("nuclear envelope (AC-11,12)" in w for w in warned)
    assert any("nuclear speckled (AC-2,4,5)" in w for w in warned)


def test_every_subtype_group_member_is_a_class_in_one_group() -> None:
    members = [n for group in SUBTYPE_GROUPS.values() for n in group]
    assert len(members) == len(set(members)) and set(members) <= set(NAMES)
    assert subtype_group("nucleolar_punctate") == "nucleolar (AC-8,9,10)"
    assert subtype_group("centromere") is None


def test_two_subtypes_of_one_group_are_doubt_not_a_mixed_pattern() -> None:
    cs = cells("nucleolar_homogeneous", 40) + cells("nucleolar_punctate", 20)
    result = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.5)
    assert [p.icap for p in result.patterns] == ["AC-8"]
    (doubt,) = [w for w in result.warnings if "look-alike" in w]
    assert "20 of 60 cells read as AC-10" in doubt and "AC-8" in doubt


def test_nuclear_dots_and_nucleoli_are_look_alikes_only_on_a_coarse_field() -> None:
    cs = cells("nucleolar_homogeneous", 40) + cells("few_nuclear_dots", 20)
    fine = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.5)
    assert [p.icap for p in fine.patterns] == ["AC-8", "AC-7"]
    coarse = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.95)
    assert [p.icap for p in coarse.patterns] == ["AC-8"]
    assert any("read as AC-7, a look-alike of AC-8" in w for w in coarse.warnings)


def test_a_look_alike_of_a_second_pattern_is_folded_too() -> None:
    cs = (cells("golgi", 30) + cells("nucleolar_homogeneous", 20)
          + cells("nucleolar_clumpy", 18))
    result = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.5)
    assert [p.icap for p in result.patterns] == ["AC-22", "AC-8"]
    assert any("AC-9, a look-alike of AC-8" in w for w in result.warnings)


def test_look_alikes() -> None:
    assert look_alikes("fine_speckled", "dense_fine_speckled", coarse=False)
    assert look_alikes("envelope_smooth", "envelope_punctate", coarse=False)
    assert not look_alikes("homogeneous", "fine_speckled", coarse=True)  # AC-1 + AC-4 is real
    assert not look_alikes("few_nuclear_dots", "nucleolar_clumpy", coarse=False)
    assert look_alikes("few_nuclear_dots", "nucleolar_clumpy", coarse=True)
    assert not look_alikes("centromere", "golgi", coarse=True)


# --- the region head (hep2-cells-v6): a faint second pattern in every cell -----------------

def with_regions(cs: list[Hep2Cell], **stained: float) -> list[Hep2Cell]:
    """The cells with region-head probabilities: the named regions at their value, the
    others 0.02."""
    regions = {r: stained.get(r, 0.02) for r in REGIONS}
    return [replace(c, regions=dict(regions)) for c in cs]


def faint_nucleoli_under_homogeneous(shown_by: int, of: int = 40) -> list[Hep2Cell]:
    """AC-1 + AC-8 in every cell, the nucleoli faint: AC-1 takes every vote (AC-8 holds
    0.12, under second_vote), and the region head sees the nucleoli in ``shown_by`` cells."""
    cs = cells("homogeneous", of, p=0.85, runner_up="nucleolar_homogeneous")
    seen = with_regions(cs[:shown_by], nucleoplasm=0.98, nucleolus=0.8)
    return seen + with_regions(cs[shown_by:], nucleoplasm=0.98, nucleolus=0.3)


def test_a_region_most_cells_show_stained_adds_its_pattern() -> None:
    assert [p.name for p in call(cells("homogeneous", 40, p=0.85,
                                       runner_up="nucleolar_homogeneous")).patterns] == [
        "homogeneous"]  # the votes alone miss it
    result = call(faint_nucleoli_under_homogeneous(30))
    assert [p.name for p in result.patterns] == ["homogeneous", "nucleolar_homogeneous"]
    second = result.patterns[1]
    assert second.share == pytest.approx(30 / 40, abs=1e-3)
    assert "nucleolus stained" in second.evidence and "region head" in second.evidence
    assert any("AC-8 found by its stained region" in w and "nucleolar (AC-8,9,10)" in w
               for w in result.warnings)


def test_a_region_fewer_cells_show_is_not_a_pattern() -> None:
    result = call(faint_nucleoli_under_homogeneous(15))  # 0.375 < region_share 0.5
    assert [p.name for p in result.patterns] == ["homogeneous"]
    strict = replace(SPEC, region_presence=0.9)  # 0.8 is then not "stained"
    assert [p.name for p in call_specimen(faint_nucleoli_under_homogeneous(30), 80.0,
                                          specimen=strict, intensity=INT).patterns] == [
        "homogeneous"]


def test_the_added_pattern_is_the_regions_most_probable_class() -> None:
    cs = cells("centromere", 40, p=0.85, runner_up="nucleolar_punctate")
    result = call(with_regions(cs, nucleoplasm=0.95, nucleolus=0.9))
    assert [p.name for p in result.patterns] == ["centromere", "nucleolar_punctate"]


def test_a_region_a_reported_pattern_covers_adds_nothing() -> None:
    # Both patterns voted for already (AC-1 + AC-15 in the same cells): nothing more.
    cs = cells("homogeneous", 40, p=0.6, runner_up="cyto_fibrillar")
    result = call(with_regions(cs, nucleoplasm=0.95, cytoplasm=0.9))
    assert [p.name for p in result.patterns] == ["homogeneous", "cyto_fibrillar"]
    assert not any("region head" in p.evidence for p in result.patterns)


def test_cells_without_a_region_head_are_called_as_before() -> None:
    cs = cells("homogeneous", 40, p=0.85, runner_up="nucleolar_homogeneous")
    mixed = with_regions(cs[:20], nucleolus=0.9) + cs[20:]  # some cells lack regions
    assert [p.name for p in call(mixed).patterns] == ["homogeneous"]


def test_on_a_coarse_field_nucleoli_found_by_region_are_a_look_alike_of_dots() -> None:
    cs = with_regions(cells("few_nuclear_dots", 40, p=0.85, runner_up="nucleolar_clumpy"),
                      nucleoplasm=0.9, nucleolus=0.7)
    fine = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.4)
    assert [p.name for p in fine.patterns] == ["few_nuclear_dots", "nucleolar_clumpy"]
    coarse = call_specimen(cs, 80.0, specimen=SPEC, intensity=INT, um_per_px=0.9)
    assert [p.name for p in coarse.patterns] == ["few_nuclear_dots"]
    assert any("AC-9" in w and "look-alike" in w for w in coarse.warnings)


def test_a_pattern_found_by_region_is_checked_by_the_metaphases_too() -> None:
    # Faint speckles (AC-4) under nucleolar staining, and every plate stains: AC-1 then.
    cs = with_regions(cells("nucleolar_homogeneous", 40, p=0.85, runner_up="fine_speckled"),
                      nucleolus=0.95, nucleoplasm=0.8)
    plates = cells("homogeneous", 4, mitosis="mitotic_plate_stained")
    result = call(cs + plates)
    names = [p.name for p in result.patterns]
    assert names[0] == "nucleolar_homogeneous" and names[1] in ("homogeneous",
                                                                 "dense_fine_speckled")
    assert "not AC-4" in result.patterns[1].evidence


@pytest.mark.parametrize("units, flagged", [(12.0, False), (13.5, True), (19.9, True),
                                             (20.0, True), (26.5, True), (27.5, False),
                                             (80.0, False)])
def test_an_intensity_near_the_cut_off_is_borderline(units: float, flagged: bool) -> None:
    result = call(cells("homogeneous", 40), units=units)
    said = [w for w in result.warnings if "borderline" in w]
    assert bool(said) == flagged
    if flagged:
        assert ("below" if units < 20 else "above") in said[0]
    off = call_specimen(cells("homogeneous", 40), units, specimen=SPEC,
                        intensity=replace(INT, borderline_percent=0.0))
    assert not any("borderline" in w for w in off.warnings)


def test_bright_cells_that_look_unstained_are_not_called_positive() -> None:
    # A monochrome camera behind a long-pass filter records a red counterstain: a negative
    # well's cells read bright, yet the classifier sees autofluorescence in them.
    looks_negative = cells("negative", 15) + cells("homogeneous", 25)  # 0.375 unstained
    refused = call(looks_negative, units=45.0)
    assert refused.positive is None and refused.reason_code == UNSTAINED_LIGHT
    assert refused.reason is not None and "15 of 40 whole cells look unstained" in \
        refused.reason and "band-pass" in refused.reason
    # Below the share, and for cells cut by the border or in mitosis, it is a positive call.
    assert call(cells("negative", 4) + cells("homogeneous", 36), units=45.0).positive is True
    assert call(cells("negative", 30, edge=True) + cells("negative", 30, mitosis="metaphase")
                + cells("homogeneous", 36), units=45.0).positive is True
    # Below the cut-off it is simply negative; too few cells say nothing.
    assert call(looks_negative, units=5.0).positive is False
    assert call(cells("negative", 5), units=45.0).positive is True
    # The share is the config's.
    strict = replace(SPEC, unstained_share=0.5)
    assert call_specimen(looks_negative, 45.0, specimen=strict,
                         intensity=INT).positive is True
