"""Specimen-level rules: positive or negative, the pattern(s), confirmed by the metaphases.

Pure functions over classified cells, so each rule is tested with constructed cells.

1. **Negative** when the specimen intensity (calibrated units) is below the lab's
   screening cut-off, whatever the classifier says of the faint cells: intensity is what
   the titre / cut-off is about, and a dim field's texture is noise. Within
   ``borderline_percent`` of the cut-off, either side, the call carries a warning.
   Above the cut-off, a field whose whole cells look unstained in at least
   ``unstained_share`` (the classifier's "negative" class) is not scorable,
   ``unstained_light``: bright light on cells that show no staining is not FITC staining
   (:func:`unstained_light`).
2. **Patterns** from the interphase cells not cut by the border whose votes together
   hold at least ``min_confidence`` of probability: each votes for its most probable staining
   pattern (the "negative" class left out: in a positive specimen a dim cell is a weak
   cell, not a negative pattern). The pattern with the largest share is reported, and
   every other one whose share reaches ``mixed_share`` too (a mixed pattern). A cell
   may also vote for its best pattern of *another region* of the cell (nucleoplasm,
   nucleolus, envelope, cytoplasm) when that reaches ``second_vote``: AC-1 + AC-15 show
   in the same cells, and one vote per cell would hide the second pattern.
   With a region head (hep2-cells-v6 on), a region of the cell that no reported pattern
   covers and that at least ``region_share`` of the voting cells show stained (region
   probability >= ``region_presence``) adds its most probable pattern: a faint second
   pattern in every cell (AC-8 nucleoli under AC-1) loses nearly every vote to the first,
   yet the region head still sees its region stain. Its subtype is then uncertain, and a
   warning says to report the competent-level group.
3. **Metaphases decide look-alikes.** In AC-1 the metaphase chromatin stains intensely,
   in AC-2 it is speckled (stained); in AC-4 / AC-5 it does not stain. With at least
   ``mitotic_min_cells`` metaphases, a homogeneous / dense-fine-speckled call that the
   plates fit worse than its swap becomes the better of fine / coarse speckled, and the
   other way round; the evidence says so. Every reported pattern is checked, and the
   plates expected are those of all the reported patterns in their shares: in AC-1 + AC-8
   only the AC-1 cells' plates stain, so half the plates dark is not evidence against
   AC-1 there. Without metaphases such a call carries a warning.
4. **Subtypes need resolution.** An expert-level subtype (fine vs coarse speckled,
   multiple vs few dots, the three nucleolar kinds, smooth vs punctate envelope) differs in
   detail below a micrometre. On a field coarser than ``subtype_max_um_per_px`` (a 10x
   objective) such a call keeps its name and carries a warning to report its ICAP
   competent-level group or to confirm at a higher magnification.
5. **Look-alikes are doubt, not a mixed pattern.** When the cells split between two
   subtypes of one competent-level group (AC-8 and AC-10, AC-4 and AC-2), the classifier
   is unsure of the subtype: one antibody does not stain some nucleoli homogeneously and
   others punctate. A look-alike of a reported pattern is not reported again; a warning
   gives its share. On a coarse field (see 4) nuclear dots and nucleoli are look-alikes
   too: both are a spot of a few pixels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.assays.hep2.patterns import NAMES, REGIONS, pattern, subtype_group
from appliance.assays.hep2.types import Hep2Cell, PatternCall
from appliance.config import Hep2IntensityConfig, Hep2SpecimenConfig

PLATE_STAINS = ("homogeneous", "dense_fine_speckled")  # AC-1, AC-2: the metaphase plate stains
PLATE_SPARED = ("fine_speckled", "coarse_speckled")  # AC-4, AC-5: it does not
# How often a plate is taken to be read the wrong way by the mitosis head. Measured plate
# accuracy is 0.999 on generated metaphases; real ones will do worse, and a floor keeps
# one odd plate from outweighing the rest.
PLATE_MISREAD = 0.05
UNSTAINED_LIGHT = "unstained_light"  # reason code: bright cells that look unstained


@dataclass(frozen=True)
class SpecimenCall:
    """The specimen's verdict, or why there is none."""

    positive: bool | None  # None: not scorable
    intensity_level: str | None
    patterns: tuple[PatternCall, ...]
    warnings: tuple[str, ...] = ()
    reason: str | None = None  # not scorable: why
    reason_code: str | None = None


def intensity_level(units: float, cfg: Hep2IntensityConfig) -> str:
    """negative / weak / intermediate / strong from the calibrated units."""
    if units < cfg.negative_below:
        return "negative"
    intermediate, strong = cfg.levels
    if units >= strong:
        return "strong"
    if units >= intermediate:
        return "intermediate"
    return "weak"


def borderline_warning(units: float, cfg: Hep2IntensityConfig) -> str | None:
    """A warning when the intensity is within ``borderline_percent`` of the cut-off, either
    side; None otherwise. On 1,050 generated specimens every sign error was a weak positive
    read just under the cut-off (photobleaching loses up to 30% of the signal there), all
    within 35% of it (docs/hep2.md, Measured)."""
    cut = cfg.negative_below
    if (cut <= 0 or cfg.borderline_percent <= 0
            or abs(units - cut) > cut * cfg.borderline_percent / 100.0):
        return None
    side = "above" if units >= cut else "below"
    # One decimal: 19.6 must not read as "20 is just below 20".
    return (f"intensity {units:.1f} is just {side} the cut-off {cut:g} (within "
            f"{cfg.borderline_percent:g}%): borderline; photobleaching lowers it, so confirm "
            "on a fresh field")


def _call(name: str, share: float, confidence: float, evidence: str) -> PatternCall:
    p = pattern(name)
    return PatternCall(name=p.name, icap=p.icap, label=p.label, share=round(share, 4),
                       confidence=round(confidence, 4), evidence=evidence)


def _staining_vote(probabilities: dict[str, float]) -> tuple[str, float]:
    """The most probable pattern other than negative, and its probability."""
    prob, name = max((p, n) for n, p in probabilities.items() if n != "negative")
    return name, prob


def _better_of(names: Sequence[str], cells: Sequence[Hep2Cell]) -> str:
    """The class among ``names`` with the highest mean probability over ``cells``."""
    return max(names, key=lambda n: sum(c.probabilities.get(n, 0.0) for c in cells))


def stained_plate_share(shares: dict[str, float]) -> float:
    """The share of metaphase plates expected to read as stained when the specimen's cells
    hold these patterns in these (relative) shares, allowing for misread plates."""
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("stained_plate_share needs at least one positive share")
    staining = sum(share for name, share in shares.items()
                   if pattern(name).metaphase != "unstained") / total
    return PLATE_MISREAD + (1.0 - 2.0 * PLATE_MISREAD) * staining


def _plates_log_likelihood(stained: int, plates: int, shares: dict[str, float]) -> float:
    """Binomial log-likelihood (without the constant) of ``stained`` of ``plates``."""
    f = stained_plate_share(shares)
    return stained * math.log(f) + (plates - stained) * math.log(1.0 - f)


def metaphase_evidence(name: str, shares: dict[str, float], mitotic: Sequence[Hep2Cell],
                       voters: Sequence[Hep2Cell], cfg: Hep2SpecimenConfig
                       ) -> tuple[str, str, str | None]:
    """(pattern after the metaphase check, evidence in words, warning or None) of one
    reported pattern ``name``; ``shares`` holds every reported pattern's share (``name``
    among them). The call is swapped for its look-alike of the other plate kind only
    when the plates fit the swap strictly better (a tie keeps the interphase call)."""
    if name not in PLATE_STAINS + PLATE_SPARED:
        return name, "", None
    if len(mitotic) < cfg.mitotic_min_cells:
        return name, f"{len(mitotic)} metaphase(s): too few to confirm", (
            f"{pattern(name).icap} not confirmed by metaphases (AC-1/AC-2 and AC-4/AC-5 "
            "look alike in interphase): look for a metaphase")
    stained = sum(c.mitosis == "mitotic_plate_stained" for c in mitotic)
    plates = f"metaphase plates stain in {stained} of {len(mitotic)}"
    new = _better_of(PLATE_SPARED if name in PLATE_STAINS else PLATE_STAINS, voters)
    swapped = {k: v for k, v in shares.items() if k != name}
    swapped[new] = swapped.get(new, 0.0) + shares[name]
    if (_plates_log_likelihood(stained, len(mitotic), swapped)
            > _plates_log_likelihood(stained, len(mitotic), shares) + 1e-9):  # ties keep
        return new, f"{plates}: not {pattern(name).icap}, {pattern(new).icap}", None
    return name, f"{plates}: consistent", None


def too_coarse_for_subtypes(um_per_px: float | None, cfg: Hep2SpecimenConfig) -> bool:
    """The field is coarser than ``subtype_max_um_per_px`` (None: the scale is unknown,
    taken as fine enough)."""
    return um_per_px is not None and um_per_px > cfg.subtype_max_um_per_px


def subtype_warnings(calls: Sequence[PatternCall], um_per_px: float | None,
                     cfg: Hep2SpecimenConfig) -> list[str]:
    """The subtype rule (4 above): a warning for each expert-level subtype called on a field
    too coarse for it."""
    if um_per_px is None or not too_coarse_for_subtypes(um_per_px, cfg):
        return []
    out = []
    for c in calls:
        group = subtype_group(c.name)
        if group is not None:
            out.append(f"{c.icap} called at {um_per_px:.2f} µm/px (about a 10x objective): "
                       f"its subtype is below the optical resolution here; report "
                       f"{group} or confirm at 20x or higher")
    return out


# At a 10x objective a nuclear dot (up to 1 µm) and a nucleolus (1.5-4 µm) are both a spot
# of a few pixels.
_SPOT_GROUPS = frozenset({"discrete nuclear dots (AC-6,7)", "nucleolar (AC-8,9,10)"})


def look_alikes(a: str, b: str, *, coarse: bool) -> bool:
    """Rule 5: two classes a specimen's cells split between when the subtype is in doubt:
    one competent-level group, or (``coarse`` field) nuclear dots and nucleoli."""
    ga, gb = subtype_group(a), subtype_group(b)
    if ga is None or gb is None:
        return False
    return ga == gb or (coarse and {ga, gb} <= _SPOT_GROUPS)


def looks_unstained(c: Hep2Cell) -> bool:
    """The classifier's most probable class for the cell is "negative", strictly (a tie,
    as in a cell it cannot read at all, is not)."""
    p = c.probabilities.get("negative", 0.0)
    return all(p > q for n, q in c.probabilities.items() if n != "negative")


def unstained_light(interphase: Sequence[Hep2Cell], units: float, *,
                    specimen: Hep2SpecimenConfig, intensity: Hep2IntensityConfig
                    ) -> str | None:
    """Why a field read above the cut-off is not scorable when its cells look unstained
    (None when they do not, or are too few to say).

    A negative well's cells show autofluorescence (the classifier's "negative" class):
    brighter cytoplasm, no nuclear pattern. In a positive field nearly none look so
    (measured: at most 0.14 of the whole cells in 998 generated positive fields reading
    17 units or more; 0.30 in one weak field, below the cut-off). When many do and the
    field still reads above the cut-off, the light is not FITC staining: a red
    counterstain that a monochrome camera records through a long-pass emission filter
    (generated: every such negative field read positive, at 4.5 times its intensity),
    autofluorescence, or stray light. Calling it positive would be a false positive."""
    if len(interphase) < specimen.min_cells:
        return None
    n = sum(looks_unstained(c) for c in interphase)
    if n / len(interphase) < specimen.unstained_share:
        return None
    return (f"{n} of {len(interphase)} whole cells look unstained (like a negative well's "
            f"autofluorescence) yet the field reads {units:.0f}, above the cut-off "
            f"{intensity.negative_below:g}: light that is not FITC staining. A red "
            "counterstain (Evans blue) passes a long-pass emission filter, and a monochrome "
            "camera records it as FITC light: use a FITC band-pass emission filter. Else "
            "look for strong autofluorescence or room light reaching the camera")


def call_specimen(cells: Sequence[Hep2Cell], units: float, *, specimen: Hep2SpecimenConfig,
                  intensity: Hep2IntensityConfig, um_per_px: float | None = None
                  ) -> SpecimenCall:
    """Positive / negative, intensity level and the pattern(s) of one field's cells.

    ``um_per_px``: the field's scale, for rules 4 and 5 (None: unknown, taken as fine).
    """
    level = intensity_level(units, intensity)
    near = borderline_warning(units, intensity)
    if level == "negative":
        return SpecimenCall(False, level, (_call("negative", 1.0, 1.0, (
            f"intensity {units:.0f} below the cut-off {intensity.negative_below:g}")),),
            (near,) if near else ())
    interphase = [c for c in cells if not c.mitotic and not c.touches_edge]
    unstained = unstained_light(interphase, units, specimen=specimen, intensity=intensity)
    if unstained is not None:
        return SpecimenCall(None, None, (), (near,) if near else (), unstained,
                            UNSTAINED_LIGHT)
    mitotic = [c for c in cells if c.mitotic]
    # A compound cell (AC-3 in the nucleus, AC-22 in the cytoplasm) splits its probability
    # between its two patterns: its confidence is what its votes hold together.
    # Each cell's votes once (a well pools thousands of cells, and its fields are called
    # again for their own warnings).
    cast = [(c, votes_from_probabilities(c.probabilities, specimen.second_vote))
            for c in interphase]
    voting = [(c, v) for c, v in cast if _held(c, v) >= specimen.min_confidence]
    voters = [c for c, _ in voting]
    if len(voters) < specimen.min_cells:
        # The intensity says positive; the pattern needs more cells (a 40x field may hold
        # a dozen). Positive without a pattern is what a lab would say of this field.
        why = (f"too few whole interphase cells to call a pattern ({len(interphase)} < "
               f"{specimen.min_cells})" if len(interphase) < specimen.min_cells else
               f"only {len(voters)} cells classified with confidence >= "
               f"{specimen.min_confidence:g} (need {specimen.min_cells})")
        return SpecimenCall(True, level, (), (
            f"pattern not determinable in this field: {why}; look at more fields",
            *([near] if near else [])))
    votes: Counter[str] = Counter()
    for _, cell_votes in voting:
        votes.update(cell_votes)
    n = len(voters)
    ranked = votes.most_common()
    coarse = too_coarse_for_subtypes(um_per_px, specimen)
    warnings: list[str] = [near] if near else []

    def look_alike_warning(name: str, count: int, of: str) -> str:
        return (f"{count} of {n} cells read as {pattern(name).icap}, a look-alike of "
                f"{pattern(of).icap}: the subtype is in doubt (not reported as a mixed "
                "pattern)")

    def admit(name: str, count: int) -> bool:
        """Report ``name`` unless it is a look-alike of one reported (then a warning)."""
        alike = next((r for r, _ in reported if look_alikes(name, r, coarse=coarse)), None)
        if alike is not None:
            warnings.append(look_alike_warning(name, count, alike))
            return False
        reported.append((name, count))
        return True

    # The patterns as the interphase cells vote for them ...
    reported = [ranked[0]]
    for name, count in ranked[1:]:
        if count / n >= specimen.mixed_share:
            admit(name, count)
    # ... and the patterns of stained regions no vote found (a faint second in each cell) ...
    by_region: set[str] = set()
    for name, count in region_patterns(voters, [r for r, _ in reported], specimen):
        if admit(name, count):
            by_region.add(name)
    # ... then each checked against the metaphases of the whole mix.
    shares = {name: count / n for name, count in reported}

    def confidence(name: str) -> float:
        return sum(c.probabilities.get(name, 0.0) for c in voters) / n

    calls: list[PatternCall] = []
    for k, (name, count) in enumerate(reported):
        corrected, evidence, warning = metaphase_evidence(name, shares, mitotic, voters,
                                                          specimen)
        warnings += [warning] if warning else []
        like = next((c for c in calls if c.name == corrected
                     or look_alikes(corrected, c.name, coarse=coarse)), None)
        if like is not None:  # the metaphases made it the same as, or a look-alike of, one
            what = pattern(name).icap + (f" ({evidence})" if corrected != name else "")
            warnings.append(f"{what}: its {count} of {n} cells go to the {like.icap} already "
                            "reported" if like.name == corrected else
                            f"{what}: " + look_alike_warning(corrected, count, like.name))
            continue
        cells_said = (f"{count} of {n} cells show the {pattern(name).region} stained "
                      "(mixed pattern, region head)" if name in by_region else
                      f"{count} of {n} cells" + (" (mixed pattern)" if k else ""))
        calls.append(_call(corrected, count / n, confidence(corrected),
                           f"{cells_said}; {evidence}" if evidence and k else
                           evidence or cells_said))
        group = subtype_group(corrected)
        if name in by_region and group is not None:
            # Under a dominant first pattern the runner-up probabilities say little of the
            # second's subtype (measured: the nucleolar kind is often wrong there).
            warnings.append(f"{pattern(corrected).icap} found by its stained region, not by "
                            f"the cells' votes: its subtype is uncertain; report {group} or "
                            "confirm the subtype")
    if n < specimen.few_cells:
        warnings.append(f"pattern called from only {n} cells: look at more fields")
    warnings += subtype_warnings(calls, um_per_px, specimen)
    unsure = low_confidence_warning([_held(c, v) for c, v in cast], specimen)
    warnings += [unsure] if unsure else []
    return SpecimenCall(True, level, tuple(calls), tuple(warnings))


LOW_CONFIDENCE = "the cells were read with low confidence"  # the warning's first words


def low_confidence_warning(held: Sequence[float], specimen: Hep2SpecimenConfig
                           ) -> str | None:
    """A warning when the cells hold, on average, less than ``low_confidence_below`` of
    probability for what they vote for (``held``: one value per whole interphase cell).

    The focus gate misses blur of 0.75-1 µm RMS, which costs a fifth to two fifths of the
    calls (docs/hep2.md, "Focus"): the speckles blur into a homogeneous glow and the cells read
    AC-1 or AC-2. The classifier is less sure of such cells; measured on generated fields,
    the mean held by the cells of 32 sharp one-pattern fields was 0.71 at least (1 in 80
    and 2 in 40 sharp positive fields of two other sets warn), and fell below 0.65 in a
    third of the fields blurred by 1 µm and most blurred by 1.5 µm. Any
    reason the cells look unlike the training (a wrong objective, an unfamiliar stain or
    camera) lowers it too, and calls for the same look by eye.
    """
    if not held or specimen.low_confidence_below <= 0:
        return None
    mean = sum(held) / len(held)
    if mean >= specimen.low_confidence_below:
        return None
    return (f"{LOW_CONFIDENCE} ({mean:.2f} on average, below "
            f"{specimen.low_confidence_below:g}): blur, a wrong objective or an unfamiliar "
            "stain; refocus, check the objective and confirm the pattern by eye")


def region_patterns(cells: Sequence[Hep2Cell], reported: Sequence[str],
                    cfg: Hep2SpecimenConfig) -> list[tuple[str, int]]:
    """(pattern, cells showing its region) for each region that no ``reported`` pattern
    covers and that at least ``region_share`` of ``cells`` show stained; the pattern is the
    region's class with the highest mean probability over the cells. Empty for cells of a
    model without a region head."""
    if not cells or not all(c.regions for c in cells):
        return []
    covered = {pattern(name).region for name in reported}
    out = []
    for region in REGIONS:
        if region in covered:
            continue
        count = sum(c.regions.get(region, 0.0) >= cfg.region_presence for c in cells)
        if count / len(cells) >= cfg.region_share:
            members = [name for name in NAMES if pattern(name).region == region]
            out.append((_better_of(members, cells), count))
    return out


# Looked up for every class of every cell of a well: computed once.
_REGIONS: dict[str, str] = {name: pattern(name).region for name in NAMES}


def _region(name: str) -> str:
    """The region a class stains (ValueError for an unknown class, as ``pattern``)."""
    region = _REGIONS.get(name)
    return region if region is not None else pattern(name).region


def votes_from_probabilities(probabilities: dict[str, float], second_vote: float) -> list[str]:
    """The pattern(s) one cell votes for: its best, and its best of another region when
    that reaches ``second_vote``."""
    first, _ = _staining_vote(probabilities)
    region = _region(first)
    others = [(p, n) for n, p in probabilities.items()
              if n != "negative" and _region(n) not in (region, "none")]
    if others:
        prob, name = max(others)
        if prob >= second_vote:
            return [first, name]
    return [first]


def vote_confidence(cell: Hep2Cell, second_vote: float) -> float:
    """The probability the cell's votes hold together (one vote: its top probability)."""
    return _held(cell, votes_from_probabilities(cell.probabilities, second_vote))


def _held(cell: Hep2Cell, votes: Sequence[str]) -> float:
    """The probability ``cell`` gives the classes it votes for."""
    return sum(cell.probabilities.get(n, 0.0) for n in votes)
