"""Typed values that flow through the HER2 assay: cells, field scores, field results."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Intensity(str, Enum):
    """Membrane DAB intensity of one cell, by optical-density thresholds."""

    NONE = "none"
    FAINT = "faint"
    MODERATE = "moderate"
    STRONG = "strong"


class MembraneClass(str, Enum):
    """Per-cell membrane pattern, in the terms the ASCO/CAP 2018 criteria use."""

    NONE = "none"  # no perceptible membrane staining
    INCOMPLETE_FAINT = "incomplete_faint"  # the 1+ pattern
    INCOMPLETE_MODERATE_INTENSE = "incomplete_moderate_intense"  # basolateral / "U": unusual 2+
    COMPLETE_WEAK_MODERATE = "complete_weak_moderate"  # the 2+ pattern
    COMPLETE_INTENSE = "complete_intense"  # the 3+ pattern


class Score(str, Enum):
    """ASCO/CAP IHC score."""

    ZERO = "0"
    ONE = "1+"
    TWO = "2+"
    THREE = "3+"


class Category(str, Enum):
    """Clinical category reported beside the score."""

    NULL = "HER2-null"
    ULTRALOW = "HER2-ultralow"
    LOW = "HER2-low"
    EQUIVOCAL = "equivocal"
    POSITIVE = "positive"


@dataclass(frozen=True)
class CellMeasurement:
    """One tumour cell: where it is and what its membrane looks like.

    Coordinates are in pixels of the source image (not the working scale).
    ``outline`` is the cell boundary used for the overlay, as (x, y) points.
    """

    cell_id: int
    x: float
    y: float
    nucleus_area_um2: float
    completeness: float  # fraction of the circumference with stained membrane, 0..1
    intensity_od: float  # DAB optical density of the stained membrane (0 when none)
    intensity: Intensity
    membrane_class: MembraneClass
    outline: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class FieldScore:
    """What the rule engine concludes from the tumour cells of one field."""

    score: Score
    category: Category
    tumour_cells: int
    percent: dict[MembraneClass, float]
    rule: str  # the ASCO/CAP branch that decided, in words


@dataclass(frozen=True)
class NotScorable:
    """A field the rule engine (or a quality gate) refuses, with the reason in words."""

    reason: str
    code: str  # machine-readable: no_tissue, too_few_tumour_cells, out_of_focus, ...
    tumour_cells: int = 0


@dataclass(frozen=True)
class QualityReport:
    """Cheap image measurements behind the quality gates (at working scale)."""

    tissue_fraction: float  # fraction of pixels with stain OD above glass
    focus: float  # normalised sharpness; higher is sharper
    saturated_fraction: float  # fraction of pixels clipped in any channel
    dark_fraction: float  # fraction of near-black pixels
    stain_residual: float  # share of the tissue's colour haematoxylin + DAB cannot explain
    brightness: float  # median brightness 0..255


@dataclass(frozen=True)
class QualityIssue:
    """One quality-gate finding. ``fatal`` ones make the field not scorable."""

    code: str  # no_tissue, out_of_focus, over_exposed, under_exposed, not_brightfield, wrong_stain
    reason: str
    fatal: bool


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result, and what it was validated on."""

    name: str
    sha256: str
    precision: str
    validated_on: str


@dataclass(frozen=True)
class CaseTag:
    """The case a field was measured for, as the field's result records it."""

    case_id: str  # opaque
    role: str  # "tumour" | "control"
    control: str  # the case's control: "valid" | "failed" | "not_checked" | "checking"
    calibration_factor: float  # intensity thresholds x this (1.0 = nominal)


# Why a report replaces an earlier one of the same field (ReportPolicy).
SUPERSEDE_REASONS = ("settings_changed", "now_scorable", "sharper")


@dataclass(frozen=True)
class Supersedes:
    """The earlier report of the same field that a report replaces, and why.

    ``settings_changed``: the view was still in front of the camera when the analysis
    settings changed (``set_objective``, a reload), so it was read again under them.
    ``now_scorable``: the earlier view could not be scored and this one could.
    ``sharper``: the view is now clearly sharper than when it was reported (the user
    focused better after the report; ``stability.sharper_factor``).
    """

    file: str  # the earlier report's file (source) and frame number
    seq: int
    reason: str  # SUPERSEDE_REASONS

    def __post_init__(self) -> None:
        if self.reason not in SUPERSEDE_REASONS:
            raise ValueError(f"supersedes.reason must be one of {SUPERSEDE_REASONS}, "
                             f"got {self.reason!r}")


@dataclass(frozen=True)
class FieldContext:
    """What the open case asks of the next field: its tag and the thresholds to use."""

    case: CaseTag
    thresholds: tuple[float, float, float]  # faint, moderate, strong DAB OD


@dataclass(frozen=True)
class FieldResult:
    """Everything known about one scored (or refused) field; the JSON contract's source."""

    file: str  # still-image path, or the frame's source id
    seq: int
    assay: str
    status: str  # "scored" | "not_scorable"
    model: ModelRef
    image_width: int
    image_height: int
    reason: str | None = None
    reason_code: str | None = None
    score: Score | None = None
    category: Category | None = None
    rule: str | None = None
    tumour_cells: int = 0
    percent: dict[MembraneClass, float] = field(default_factory=dict)
    cells: tuple[CellMeasurement, ...] = ()
    warnings: tuple[str, ...] = ()
    um_per_px: float | None = None
    um_per_px_source: str = "unknown"  # frame | config | objective | estimated | unknown
    quality: QualityReport | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    created_at: str = ""  # ISO 8601 UTC, set when the result is made
    intensity_thresholds: tuple[float, float, float] | None = None  # measured with (None: refused)
    case: CaseTag | None = None
    supersedes: Supersedes | None = None  # set by the pipeline's report policy

    @property
    def scored(self) -> bool:
        return self.status == "scored"
