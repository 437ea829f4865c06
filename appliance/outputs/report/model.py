"""What a case report shows: plain frozen dataclasses the case service fills from the store.

The report renderers only read these; they never reach into the store, so a report can
be re-rendered (or tested) from the values alone. Enumerated fields are checked at
construction so a typo upstream fails loudly instead of drawing the wrong colour.
"""

from __future__ import annotations

from dataclasses import dataclass

FIELD_ROLES = ("tumour", "control")
FIELD_STATUSES = ("scored", "not_scorable")
CONTROL_STATUSES = ("valid", "failed", "not_checked")
PERCENT_KEYS = ("none", "incomplete_faint", "incomplete_moderate_intense",
                "complete_weak_moderate", "complete_intense")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``what`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class ReportModel:
    """One model that scored fields of the case."""

    name: str
    precision: str
    sha256: str
    validated_on: str


@dataclass(frozen=True)
class ReportField:
    """One row of the per-field table."""

    index: int  # 1-based order in the case
    role: str  # "tumour" | "control"
    created_at: str  # ISO 8601 UTC
    source: str  # file name or camera source id
    status: str  # "scored" | "not_scorable"
    score: str | None  # the field's own score, at the case's thresholds
    category: str | None
    tumour_cells: int
    percent_complete_intense: float
    percent_complete: float  # complete, any intensity
    percent_stained: float  # any membrane staining
    counted: bool  # pooled into the case score
    note: str  # e.g. "duplicate of field 3", "out of focus", "differs from case score"
    thumbnail_jpeg: bytes | None  # the overlay picture, JPEG, <= 320 px wide; None = none

    def __post_init__(self) -> None:
        _check_choice(f"field {self.index} role", self.role, FIELD_ROLES)
        _check_choice(f"field {self.index} status", self.status, FIELD_STATUSES)


@dataclass(frozen=True)
class ReportControl:
    """The positive-control check of the case."""

    status: str  # "valid" | "failed" | "not_checked"
    expected: str | None  # "3+" ...
    measured_score: str | None
    measured_od: float | None  # median membrane OD of the completely stained control cells
    reference_od: float | None
    ratio: float | None
    cells: int
    fields: int
    reasons: tuple[str, ...]  # why failed / what was checked, in words
    calibration: str  # e.g. "thresholds x0.82 (0.164 / 0.328 / 0.492 OD)", "off", "nominal"

    def __post_init__(self) -> None:
        _check_choice("control status", self.status, CONTROL_STATUSES)


@dataclass(frozen=True)
class CaseReportData:
    """Everything one case report shows."""

    case_id: str  # opaque id (never a patient identifier)
    opened_at: str
    closed_at: str | None  # None = still open (the report says OPEN prominently)
    device_id: str
    software_version: str
    config_sha256: str
    models: tuple[ReportModel, ...]
    score: str | None  # pooled case score, None when not scorable
    category: str | None
    rule: str  # the ASCO/CAP branch in words
    fields_counted: int
    fields_total: int
    tumour_cells: int
    percent: dict[str, float]  # pooled per membrane class, keys as PERCENT_KEYS
    control: ReportControl
    heterogeneity: tuple[str, ...]  # e.g. "field 4 scores 3+ (case 1+): 120 cells"
    borderline: tuple[str, ...]  # e.g. "complete staining 11.2% is within 3 points of 10%"
    warnings: tuple[str, ...]  # e.g. "control not checked: score not validated"
    fields: tuple[ReportField, ...]
    research_use: str  # what the model was validated on, shown at the foot
    generated_at: str

    def __post_init__(self) -> None:
        unknown = sorted(set(self.percent) - set(PERCENT_KEYS))
        if unknown:
            raise ValueError(f"case percent has unknown membrane classes: {', '.join(unknown)}")


# ------------------------------------------------------------------ the HEp-2 case report

HEP2_ROLES = ("patient", "control")
HEP2_CONTROL_STATUSES = ("valid", "incomplete", "failed", "not_checked")


@dataclass(frozen=True)
class Hep2ReportPattern:
    """One pattern of the well's call."""

    icap: str  # "AC-3"
    label: str  # "centromere"
    share: float  # of the well's voting cells, 0..1
    evidence: str  # "138 of 218 cells (mixed pattern)"


@dataclass(frozen=True)
class Hep2ReportCheck:
    """One kit control decision."""

    round: int
    expected: str  # in words, e.g. "AC-1 nuclear homogeneous", "AC-0 negative"
    valid: bool
    reasons: tuple[str, ...]
    decided_at: str
    case_id: str = ""  # another case on the same slide that decided it ("": this case)

    def title(self) -> str:
        """``round 1: AC-1 nuclear homogeneous - valid``, naming another case's check."""
        where = f" (in case {self.case_id}, same slide)" if self.case_id else ""
        return (f"round {self.round}: {self.expected} - "
                f"{'valid' if self.valid else 'FAILED'}{where}")


@dataclass(frozen=True)
class Hep2ReportField:
    """One row of a HEp-2 case's field table."""

    index: int
    role: str  # "patient" | "control"
    created_at: str
    source: str
    status: str  # "scored" | "not_scorable"
    call: str  # the field's own call in words: "positive AC-1 + AC-22", "negative", ...
    intensity: str  # "intermediate 130", "" when none
    cells: int  # interphase cells
    counted: bool  # pooled into the well's call
    note: str
    thumbnail_jpeg: bytes | None

    def __post_init__(self) -> None:
        _check_choice(f"field {self.index} role", self.role, HEP2_ROLES)
        _check_choice(f"field {self.index} status", self.status, FIELD_STATUSES)


@dataclass(frozen=True)
class Hep2CaseReportData:
    """Everything one HEp-2 case report shows: one patient's well and the kit controls."""

    case_id: str  # opaque id (never a patient identifier)
    opened_at: str
    closed_at: str | None
    device_id: str
    software_version: str
    config_sha256: str
    models: tuple[ReportModel, ...]
    positive: bool | None  # None: not scorable
    patterns: tuple[Hep2ReportPattern, ...]  # strongest first (AC-0 for a negative well)
    intensity: str  # "intermediate: 130 relative units", "" when not measured
    cells: str  # "251 interphase and 12 mitotic cells"
    fields_counted: int
    fields_total: int
    reason: str | None  # why not scorable
    control_status: str
    checks: tuple[Hep2ReportCheck, ...]
    warnings: tuple[str, ...]
    fields: tuple[Hep2ReportField, ...]
    research_use: str
    generated_at: str
    # A titration: each screening pattern's titre, and each dilution's well, in words
    # ("AC-1 nuclear homogeneous: 1:320 (not shown at 1:640)", "1:80: positive AC-1 ...").
    titres: tuple[str, ...] = ()
    wells: tuple[str, ...] = ()
    slide: str | None = None  # opaque id: the checks may be the slide's other cases'

    def __post_init__(self) -> None:
        _check_choice("kit control status", self.control_status, HEP2_CONTROL_STATUSES)

    def no_check_words(self) -> str:
        """What the control box says when no kit control counts."""
        return ("no kit control was checked on this slide" if self.slide
                else "no kit control was checked in this case")
