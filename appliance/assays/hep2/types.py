"""Typed values that flow through the HEp-2 assay: cells, specimen calls, field results."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.assays.her2.types import ModelRef, Supersedes

MITOSIS_CLASSES = ("interphase", "mitotic_plate_stained", "mitotic_plate_unstained")
INTENSITY_LEVELS = ("negative", "weak", "intermediate", "strong")


@dataclass(frozen=True)
class Hep2Cell:
    """One segmented cell: where it is, how bright, and what the classifier says."""

    cell_id: int
    x: float  # centroid, source-image pixels
    y: float
    area_um2: float
    brightness: float  # calibrated units (brightest 5% above background)
    pattern: str  # the most probable pattern class
    confidence: float  # its probability
    probabilities: dict[str, float]  # every pattern class
    mitosis: str  # one of MITOSIS_CLASSES
    mitosis_confidence: float
    touches_edge: bool = False
    outline: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)
    # Probability that each region (patterns.REGIONS) stains; empty when the model has no
    # region head (before hep2-cells-v6).
    regions: dict[str, float] = field(default_factory=dict)

    @property
    def mitotic(self) -> bool:
        return self.mitosis != "interphase"


@dataclass(frozen=True)
class PatternCall:
    """One pattern reported for the specimen (a mixed specimen has two or more)."""

    name: str
    icap: str
    label: str
    share: float  # fraction of the confidently classified interphase cells
    confidence: float  # mean probability of this class over the cells that voted for it
    evidence: str  # how it was decided, in words (e.g. "metaphase plates stain: AC-1")


@dataclass(frozen=True)
class Hep2Result:
    """Everything known about one scored (or refused) IIF field; the JSON contract's source."""

    file: str
    seq: int
    status: str  # "scored" | "not_scorable"
    model: ModelRef
    image_width: int
    image_height: int
    assay: str = "hep2"
    reason: str | None = None
    reason_code: str | None = None
    positive: bool | None = None
    intensity_level: str | None = None  # INTENSITY_LEVELS
    intensity_units: float | None = None  # calibrated units (relative when not pinned)
    intensity_calibrated: bool = False  # exposure and gain pinned in the config
    patterns: tuple[PatternCall, ...] = ()
    cells: tuple[Hep2Cell, ...] = ()
    cells_interphase: int = 0
    cells_mitotic: int = 0
    warnings: tuple[str, ...] = ()
    um_per_px: float | None = None
    um_per_px_source: str = "unknown"
    # The scale the cell crops were cut at: um_per_px, except on a field too coarse for
    # subtypes (10x), where it is the nearby scale the classifier reads surest.
    crop_um_per_px: float | None = None
    # The focus gate's sharpness measure (quality.py; hep2.cells.min_focus refuses below,
    # soft_focus_below warns); None where it was not measured.
    sharpness: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    supersedes: Supersedes | None = None  # set by the pipeline's report policy

    @property
    def scored(self) -> bool:
        return self.status == "scored"


@dataclass(frozen=True)
class CellCall:
    """The classifier on one single-cell image (`appliance score --assay hep2 --cell`)."""

    file: str
    pattern: str
    icap: str
    confidence: float
    probabilities: dict[str, float]
    mitosis: str
    model: ModelRef
    # Probability that each region (patterns.REGIONS) stains; empty without a region head.
    regions: dict[str, float] = field(default_factory=dict)
    # How the crop was cut (single_cell.py): the scale used (None: the image was taken as
    # one cell filling it), where it came from, where the cell's mask came from.
    um_per_px: float | None = None
    um_per_px_source: str = "unknown"  # config | objective | mask | unknown
    mask_source: str = "threshold"  # file | segmented | threshold
    warnings: tuple[str, ...] = ()
