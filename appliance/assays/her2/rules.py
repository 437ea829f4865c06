"""ASCO/CAP 2018 HER2 IHC rules: per-cell membrane class, per-field score and category.

Pure functions over measured numbers, so every branch is tested with a table.
Criteria (Wolff et al. 2018, affirmed 2023), for invasive tumour cells:

* 3+  complete, intense membrane staining in >10% of tumour cells.
* 2+  weak-to-moderate complete staining in >10%; and the unusual patterns:
      intense complete staining in ≤10%, or moderate-to-intense incomplete
      (basolateral / lateral, "U-shaped") staining in >10%.
* 1+  faint / barely perceptible incomplete staining in >10%.
* 0   no staining, or faint incomplete staining in ≤10%.

HER2-ultralow is IHC 0 with faint staining in >0% and ≤10% of tumour cells;
HER2-null is IHC 0 with none; HER2-low is IHC 1+ (or 2+ with negative ISH,
which the box cannot know, so 2+ is reported "equivocal").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from appliance.assays.her2.types import (
    Category,
    FieldScore,
    Intensity,
    MembraneClass,
    NotScorable,
    Score,
)
from appliance.config import MeasureConfig, RulesConfig


def classify_intensity(od: float, thresholds: Sequence[float]) -> Intensity:
    """Map a membrane DAB optical density onto none / faint / moderate / strong."""
    faint, moderate, strong = thresholds
    if od >= strong:
        return Intensity.STRONG
    if od >= moderate:
        return Intensity.MODERATE
    if od >= faint:
        return Intensity.FAINT
    return Intensity.NONE


def classify_membrane(intensity: Intensity, completeness: float,
                      complete_fraction: float) -> MembraneClass:
    """The ASCO/CAP per-cell pattern from the intensity and the circumferential coverage."""
    if intensity is Intensity.NONE or completeness <= 0.0:
        return MembraneClass.NONE
    complete = completeness >= complete_fraction
    if complete:
        if intensity is Intensity.STRONG:
            return MembraneClass.COMPLETE_INTENSE
        return MembraneClass.COMPLETE_WEAK_MODERATE
    if intensity is Intensity.FAINT:
        return MembraneClass.INCOMPLETE_FAINT
    return MembraneClass.INCOMPLETE_MODERATE_INTENSE


def classify_cell(intensity_od: float, completeness: float,
                  cfg: MeasureConfig) -> tuple[Intensity, MembraneClass]:
    """Intensity and membrane class of one cell from its measurements."""
    intensity = classify_intensity(intensity_od, cfg.intensity_thresholds)
    return intensity, classify_membrane(intensity, completeness, cfg.complete_fraction)


def membrane_percentages(classes: Sequence[MembraneClass]) -> dict[MembraneClass, float]:
    """Percentage of tumour cells in each membrane class (all classes present as keys)."""
    counts = Counter(classes)
    n = len(classes)
    return {c: (100.0 * counts[c] / n if n else 0.0) for c in MembraneClass}


def score_field(classes: Sequence[MembraneClass], cfg: RulesConfig) -> FieldScore | NotScorable:
    """Apply the ASCO/CAP 2018 algorithm to the membrane classes of a field's tumour cells."""
    n = len(classes)
    if n < cfg.min_tumour_cells:
        return NotScorable(
            reason=f"too few tumour cells ({n} < {cfg.min_tumour_cells})",
            code="too_few_tumour_cells",
            tumour_cells=n,
        )
    pct = membrane_percentages(classes)
    counts = Counter(classes)
    cut = cfg.positive_percent

    def above(count: int, percent: float) -> bool:
        # Compare counts, not rounded percentages: 3 of 30 cells is exactly 10%, not > 10%.
        return count * 100.0 > percent * n

    intense = counts[MembraneClass.COMPLETE_INTENSE]
    complete = intense + counts[MembraneClass.COMPLETE_WEAK_MODERATE]
    incomplete_strong = counts[MembraneClass.INCOMPLETE_MODERATE_INTENSE]
    stained = n - counts[MembraneClass.NONE]

    def result(score: Score, category: Category, rule: str) -> FieldScore:
        return FieldScore(score=score, category=category, tumour_cells=n, percent=pct, rule=rule)

    def p(count: int) -> str:
        return f"{100.0 * count / n:.1f}%"

    if above(intense, cut):
        return result(Score.THREE, Category.POSITIVE,
                      f"complete intense membrane staining in {p(intense)} > {cut:g}%")
    if above(complete, cut):
        return result(Score.TWO, Category.EQUIVOCAL,
                      f"complete membrane staining in {p(complete)} > {cut:g}% "
                      f"(intense in {p(intense)} ≤ {cut:g}%)")
    if above(intense, cfg.unusual_intense_min_percent):
        return result(Score.TWO, Category.EQUIVOCAL,
                      f"unusual pattern: complete intense staining in {p(intense)} "
                      f"(≤ {cut:g}% of tumour cells)")
    if above(incomplete_strong, cut):
        return result(Score.TWO, Category.EQUIVOCAL,
                      "unusual pattern: moderate-to-intense incomplete (basolateral) staining "
                      f"in {p(incomplete_strong)} > {cut:g}%")
    if above(stained, cut):
        return result(Score.ONE, Category.LOW,
                      f"faint / incomplete membrane staining in {p(stained)} > {cut:g}%")
    if above(stained, cfg.ultralow_min_percent):
        return result(Score.ZERO, Category.ULTRALOW,
                      f"faint / incomplete membrane staining in {p(stained)} "
                      f"(> 0% and ≤ {cut:g}%)")
    return result(Score.ZERO, Category.NULL, "no membrane staining in any tumour cell")
