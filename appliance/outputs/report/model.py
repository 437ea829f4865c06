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
