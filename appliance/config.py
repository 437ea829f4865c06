"""One validated configuration file (TOML) with a default for every key.

Every section is a frozen dataclass; every field carries a description and its
bounds in ``metadata``. Loading rejects unknown keys, wrong types and values
out of bounds with a :class:`ConfigError` that names the key and the reason,
so a typo in a hospital's config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of bounds."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config key '{key}': {reason}")
        self.key = key
        self.reason = reason


def _f(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple[Any, ...] | None = None) -> Any:
    """A config field with its description and bounds."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


SOURCE_KINDS = ("replay", "synthetic", "v4l2", "gstreamer", "picamera2")


@dataclass(frozen=True)
class SourceConfig:
    uri: str = _f(
        "replay:samples/her2",
        "Frame source: replay:DIR_OR_VIDEO, synthetic[:SEED], v4l2:/dev/videoN or v4l2:N, "
        "gstreamer:PIPELINE (ending in appsink), picamera2[:CAMERA_INDEX]",
    )
    fps: float = _f(
        10.0, "Frame rate: replay/synthetic pace, camera request; 0 = as fast as possible "
        "(replay) or the driver's default (camera)", lo=0, hi=240,
    )
    loop: bool = _f(False, "Replay/synthetic: start again at the end instead of stopping")
    hold_s: float = _f(
        2.0, "Replay of still images / synthetic fields: how long each field stays in view "
        "(as on a stage left still); 0 = each file is a single frame", lo=0, hi=3600,
    )
    width: int = _f(0, "Requested camera width in pixels; 0 = the driver's default", lo=0,
                    hi=10000)
    height: int = _f(0, "Requested camera height in pixels; 0 = the driver's default", lo=0,
                     hi=10000)
    fourcc: str = _f("MJPG", "v4l2 pixel format requested from a USB camera: MJPG (JPEG, "
                     "the most frames over USB 2) or YUYV (uncompressed: use it for HEp-2, "
                     "whose fine speckles and dots JPEG blurs; every HEp-2 result from MJPG "
                     "frames says so)", choices=("MJPG", "YUYV", "any"))
    read_timeout_s: float = _f(
        2.0, "A camera that delivers no frame for this long is in fault and is reopened",
        lo=0.1, hi=60,
    )
    reconnect_min_s: float = _f(0.5, "First wait before reopening a faulty camera", lo=0.05,
                                hi=60)
    reconnect_max_s: float = _f(10.0, "Longest wait between reopening attempts (back-off cap)",
                                lo=0.1, hi=600)
    exposure_us: float = _f(
        0.0, "Camera exposure in µs; 0 = automatic (never for hep2 intensity)", lo=0,
        hi=10_000_000,
    )
    gain: float = _f(0.0, "Camera analogue gain; 0 = automatic", lo=0, hi=1000)
    auto_white_balance: bool = _f(
        True, "false turns the camera's automatic white balance off, as HEp-2 needs (it "
        "would whiten the green FITC light, which the wrong-stain check reads): picamera2 "
        "fixes the colour gains at colour_gains, a V4L2 camera keeps its present white "
        "balance, a GStreamer pipeline must set it itself",
    )
    colour_gains: list[float] = _f(
        [1.0, 1.0], "picamera2, with auto_white_balance false: the red and blue gains "
        "(libcamera ColourGains; 1.0, 1.0 keeps the sensor's own colour)",
    )
    tuning_file: str = _f(
        "", "picamera2 only: a libcamera tuning file (JSON) used instead of the sensor's own, "
        "e.g. one whose gamma curve (rpi.contrast) is linear, as the HEp-2 intensity needs "
        "(docs/hep2-calibration.md); empty = the sensor's default",
    )

    @property
    def kind(self) -> str:
        """The source kind: the URI's scheme (``replay``, ``v4l2``...)."""
        return self.uri.partition(":")[0]

    @property
    def target(self) -> str:
        """What follows the scheme: a path, a device, a pipeline, a seed (may be empty)."""
        return self.uri.partition(":")[2]


@dataclass(frozen=True)
class OpticsConfig:
    objective: str = _f("auto", "Objective in the nosepiece (a key of objectives) or 'auto'")
    um_per_px: float = _f(
        0.0, "Camera pixel size in µm at the specimen; 0 = from objective or estimated", lo=0, hi=10
    )
    objectives: dict[str, float] = _f(
        {"10x": 1.0, "20x": 0.5, "40x": 0.25}, "µm per camera pixel for each objective"
    )
    assumed_nucleus_diameter_um: float = _f(
        8.5, "Median nucleus diameter assumed when the scale is estimated from the image",
        lo=3, hi=30,
    )


@dataclass(frozen=True)
class InputConfig:
    max_megapixels: float = _f(
        120.0, "Largest still image accepted, in megapixels (decoded RGB)", lo=0.01, hi=2000
    )
    min_side_px: int = _f(64, "Smallest accepted image side in pixels", lo=8, hi=4096)


@dataclass(frozen=True)
class InferenceConfig:
    backend: str = _f(
        "onnxruntime", "Inference backend: onnxruntime (CPU, everywhere) or tensorrt (Jetson: "
        "an INT8 engine built on the device from the shipped Q/DQ model)",
        choices=("onnxruntime", "tensorrt"),
    )
    engine_dir: str = _f(
        "var/engines", "tensorrt: folder of the engines built on this device (stamped with the "
        "TensorRT version, GPU and model sha256; a mismatched one is rebuilt)",
    )
    precision: str = _f("int8", "Which shipped model to run", choices=("int8", "fp32"))
    threads: int = _f(0, "ONNX Runtime intra-op threads; 0 = one per core", lo=0, hi=64)
    models_dir: str = _f(
        "", "Folder with <assay>/manifest.json and models; empty = the models shipped beside "
        "the package"
    )
    tile_px: int = _f(512, "Largest model input side; bigger fields are tiled", lo=64, hi=4096)


@dataclass(frozen=True)
class StainConfig:
    hematoxylin: list[float] = _f([0.65, 0.70, 0.29], "Haematoxylin OD vector (R, G, B)")
    dab: list[float] = _f([0.27, 0.57, 0.78], "DAB OD vector (R, G, B)")
    white_level: float = _f(
        0.0, "Background (glass) brightness 0-255; 0 = estimate per field", lo=0, hi=255
    )
    flat_field: bool = _f(
        True, "Correct uneven illumination (vignetting) estimated from each field"
    )


@dataclass(frozen=True)
class MeasureConfig:
    working_um_per_px: float = _f(
        0.5, "Finest scale the model works at (µm/px); finer images are downsampled",
        lo=0.2, hi=2.0,
    )
    max_working_um_per_px: float = _f(
        1.0, "Coarsest scale the model works at (µm/px)", lo=0.2, hi=2.0
    )
    max_working_megapixels: float = _f(
        0.8, "Pixel budget per field at working scale (keeps real time at low power)",
        lo=0.05, hi=100,
    )
    intensity_thresholds: list[float] = _f(
        [0.2, 0.4, 0.6], "DAB OD thresholds for faint / moderate / strong membrane"
    )
    complete_fraction: float = _f(
        0.9, "Membrane coverage of the circumference at or above which a cell is complete",
        lo=0.5, hi=1.0,
    )
    membrane_reach_um: float = _f(
        12.0, "Furthest a cell's cytoplasm reaches from its nucleus edge", lo=1, hi=40
    )
    membrane_band_um: float = _f(
        3.0, "Membrane counted beyond the edge of a cell's cytoplasm (both cells of a shared "
        "border see it)", lo=0.2, hi=10,
    )
    min_membrane_fraction: float = _f(
        0.03, "Less stained circumference than this is no staining (specks, noise)", lo=0, hi=0.5
    )
    min_observed_fraction: float = _f(
        0.6, "Cells with less of their circumference inside the picture are not measured",
        lo=0.1, hi=1.0,
    )
    angular_bins: int = _f(36, "Sectors around each cell for the completeness", lo=8, hi=360)
    min_nucleus_area_um2: float = _f(12.0, "Smaller tumour-nucleus objects are noise", lo=0, hi=500)


@dataclass(frozen=True)
class RulesConfig:
    positive_percent: float = _f(
        10.0, "ASCO/CAP percentage of tumour cells (strictly above) for 1+/2+/3+", lo=0, hi=100
    )
    min_tumour_cells: int = _f(
        20, "Fewer tumour cells in a field: not scorable", lo=1, hi=100000
    )
    unusual_intense_min_percent: float = _f(
        0.0,
        "Complete intense staining in more than this and at most positive_percent of "
        "tumour cells is the unusual 2+ pattern; 0 = any, as the guideline reads",
        lo=0, hi=100,
    )
    ultralow_min_percent: float = _f(
        0.0, "IHC 0 with faint staining in more than this percent is HER2-ultralow",
        lo=0, hi=100,
    )


@dataclass(frozen=True)
class QualityConfig:
    min_tissue_fraction: float = _f(
        0.05, "Fraction of the field that must be stained tissue", lo=0, hi=1
    )
    min_focus: float = _f(
        1.9, "Sharpness below which a field is out of focus: RMS OD gradient at 1 px over "
        "that at 4 px (working scale) on the strongest edges; ~1 blurred, 2-4 sharp",
        lo=0, hi=100,
    )
    max_saturated_fraction: float = _f(
        0.6, "Fraction of pixels clipped (>= 250) in any channel above which the field is "
        "over-exposed", lo=0, hi=1,
    )
    max_dark_fraction: float = _f(
        0.5, "Fraction of near-black pixels above which the field is under-exposed "
        "(or not brightfield)", lo=0, hi=1,
    )
    max_cytoplasm_dab: float = _f(
        0.2, "Median DAB OD inside the tumour cells above which diffuse cytoplasmic staining "
        "hides the membranes (not a HER2 membrane pattern): the field is not scorable",
        lo=0, hi=5,
    )
    max_stain_residual: float = _f(
        0.25, "Median share of the tissue's OD off the H-DAB plane (colour-deconvolution "
        "residual) above which the stain is not H-DAB; ~0.07 for H-DAB, ~0.4 for H&E",
        lo=0, hi=5,
    )


CONTROL_LEVELS = ("0", "1+", "2+", "3+")
CALIBRATING_LEVELS = ("2+", "3+")  # controls whose membranes sit well above the faint cut


@dataclass(frozen=True)
class ControlConfig:
    calibration: bool = _f(
        True, "Calibrate a case's intensity thresholds from its valid 3+ or 2+ control: the "
        "thresholds scale by (control's measured OD / reference_od), so a weaker stain run "
        "keeps its scores; false = nominal thresholds, the control is only checked",
    )
    reference_od: dict[str, float] = _f(
        {"3+": 0.75, "2+": 0.40},
        "Median membrane DAB OD of the completely stained tumour cells of a good control at "
        "each level, on this microscope and camera; set it from the lab's validated runs "
        "(`appliance case control-check` prints the measured value)", lo=0.05, hi=3.0,
    )
    min_ratio: float = _f(
        0.6, "A control whose measured / reference OD is below this is too weak: failed",
        lo=0.05, hi=1.0,
    )
    max_ratio: float = _f(
        1.6, "A control whose measured / reference OD is above this is too strong: failed",
        lo=1.0, hi=20.0,
    )
    min_cells: int = _f(
        50, "Fewer tumour cells measured over the control's fields: the control is not "
        "assessable (failed)", lo=1, hi=100000,
    )
    min_percent: dict[str, float] = _f(
        {"3+": 50.0, "2+": 30.0, "1+": 30.0, "0": 0.0},
        "Share of the control's tumour cells that must show its level's staining: complete "
        "intense (3+), complete (2+), any membrane staining (1+); a 0 control must score 0",
        lo=0, hi=100,
    )
    default_expected: str = _f(
        "3+", "Expected level of a control check started without one (button, bare command)",
        choices=CONTROL_LEVELS,
    )


@dataclass(frozen=True)
class CaseConfig:
    borderline_margin_percent: float = _f(
        3.0, "A pooled percentage within this many percentage points of the positive_percent "
        "cut-off (10%) is flagged borderline", lo=0, hi=50,
    )
    borderline_od_margin: float = _f(
        0.05, "A mean membrane OD within this of an intensity threshold is flagged borderline",
        lo=0, hi=1,
    )
    duplicate_similarity: float = _f(
        0.85, "A field whose fingerprint matches an earlier field of the case this well is the "
        "same field: kept in the record, counted once", lo=0.5, hi=1.0,
    )
    auto_id_prefix: str = _f(
        "b", "Prefix of the case ids the box makes up (button, `case start` without an id)"
    )


@dataclass(frozen=True)
class Her2Config:
    stain: StainConfig = field(default_factory=StainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    case: CaseConfig = field(default_factory=CaseConfig)


@dataclass(frozen=True)
class Hep2CellsConfig:
    nucleus_diameter_um: float = _f(
        14.0, "Typical HEp-2 interphase nucleus diameter (µm): segmentation scale and the "
        "scale estimate when optics do not say", lo=4, hi=40,
    )
    min_area_um2: float = _f(40.0, "Smaller bright objects are debris, not cells", lo=1,
                             hi=2000)
    max_area_um2: float = _f(1500.0, "Larger objects are clumps, not one cell", lo=10,
                             hi=20000)
    crop_px: int = _f(64, "Side of the normalised cell crop the classifier sees", lo=16,
                      hi=256)
    crop_um: float = _f(
        32.0, "Side of the cell crop at the specimen (µm): a cell and a margin", lo=8, hi=120,
    )
    orientations: int = _f(
        4, "Each cell crop is classified this many ways (as drawn, mirrored, turned half a "
        "turn, both; 8 adds the quarter turns) and the logits averaged: a cell's pattern does "
        "not depend on how it lies. Costs that many times the classifier (tools/bench_hep2)",
        choices=(1, 2, 4, 8),
    )
    scale_search_steps: int = _f(
        3, "Where no scale is declared, the size estimate is checked by the classifier at "
        "this many quarter-octave steps either side (the scale whose crops it reads most "
        "surely wins); 0 = the size estimate alone", lo=0, hi=8,
    )
    scale_search_cells: int = _f(
        48, "Whole cells nearest the centre classified at each scale of that search", lo=5,
        hi=1000,
    )
    crop_search_steps: int = _f(
        3, "With a declared scale coarser than hep2.specimen.subtype_max_um_per_px (a 10x "
        "objective), the crops are cut at the scale the classifier reads the central cells "
        "most surely at, within this many quarter-octave steps of it; the segmentation, "
        "every size and the reported scale stay the declared ones. 0 = off", lo=0, hi=8,
    )
    scale_search_prior: float = _f(
        0.02, "Fit (mean top probability) a candidate scale loses per octave away from the "
        "size estimate in that search (in the 10x crop search: from the declared scale)",
        lo=0, hi=1,
    )
    min_focus: float = _f(
        1.6, "Sharpness (fine- over coarse-scale gradient on the strongest edges, judged at "
        "0.5 µm per pixel; ~1 blurred, 2-4 sharp; every result reports it) below which a "
        "field is refused as out of focus. Sharp generated fields of weak homogeneous "
        "staining read as low as 1.64, so a higher limit refuses good fields, while blur "
        "of 1 µm RMS, which costs two fifths of the pattern calls, still reads about 2.2 "
        "(docs/hep2.md, Focus). Set it from the lab's own sharp and defocused fields", lo=0, hi=100,
    )
    soft_focus_below: float = _f(
        1.76, "Sharpness below which a scored field warns that its focus is soft (speckles "
        "and dots blur into a homogeneous look); at least min_focus", lo=0, hi=100,
    )


@dataclass(frozen=True)
class Hep2SpecimenConfig:
    min_cells: int = _f(
        8, "Fewer confidently classified interphase cells: the field is not scorable (a 40x "
        "field may hold only a dozen cells)", lo=1, hi=100000,
    )
    low_confidence_below: float = _f(
        0.65, "A positive call warns when its whole interphase cells hold, on average, less "
        "probability than this for the pattern(s) they vote for: blur, a wrong objective or "
        "an unfamiliar stain make the pattern uncertain (of sharp generated positive "
        "fields, 1 in 80 and 2 in 40 warned in two sets; docs/hep2.md, Focus). 0 = never",
        lo=0, hi=1,
    )
    few_cells: int = _f(
        20, "Fewer voting cells than this: the call carries a warning to look at more fields",
        lo=1, hi=100000,
    )
    second_vote: float = _f(
        0.2, "A cell also votes for its best pattern of another region of the cell (nucleus, "
        "nucleolus, envelope, cytoplasm) when that pattern has at least this probability: "
        "mixed patterns in the same cells (e.g. AC-1 + AC-15)", lo=0.05, hi=1,
    )
    mitotic_probability: float = _f(
        0.7, "A cell is a metaphase when the mitosis head gives it at least this probability "
        "(otherwise interphase: a false metaphase would drop a voter)", lo=0.34, hi=1,
    )
    mixed_share: float = _f(
        0.22, "A second pattern holding at least this share of the classified cells is "
        "reported too (mixed pattern)", lo=0.05, hi=0.5,
    )
    region_presence: float = _f(
        0.6, "A cell shows a region (nucleoplasm, nucleolus, envelope, cytoplasm) stained "
        "when the model's region head gives it at least this probability", lo=0.05, hi=0.99,
    )
    region_share: float = _f(
        0.4, "A stained region that no reported pattern covers, shown by at least this share "
        "of the classified cells, adds its most probable pattern (a faint second pattern in "
        "the same cells, e.g. AC-8 under AC-1). Models without a region head skip this",
        lo=0.05, hi=1,
    )
    min_confidence: float = _f(
        0.5, "Cells whose votes (best pattern, plus a second region's pattern when it "
        "reaches second_vote) hold less probability than this are not counted for the "
        "pattern (they still count for the intensity)", lo=0, hi=1,
    )
    mitotic_min_cells: int = _f(
        2, "Metaphase cells needed before their plate staining may confirm or correct the "
        "interphase call (AC-1 vs AC-4/5)", lo=1, hi=1000,
    )
    unstained_share: float = _f(
        0.3, "A field read above the cut-off whose whole interphase cells look unstained "
        "(most probable class: negative) in at least this share is not scorable: the light "
        "is not FITC staining (a red counterstain recorded by a monochrome camera through a "
        "long-pass filter, autofluorescence, stray light)", lo=0.05, hi=1,
    )
    subtype_max_um_per_px: float = _f(
        0.7, "Fields coarser than this many µm per pixel (a 10x objective, which resolves "
        "about 1 µm) give an expert-level subtype call (AC-2/4/5, AC-6/7, AC-8/9/10, "
        "AC-11/12) a warning: report its competent-level group or confirm at 20x or higher",
        lo=0.1, hi=5,
    )


@dataclass(frozen=True)
class Hep2IntensityConfig:
    negative_below: float = _f(
        20.0, "Specimen intensity (calibrated units) below which it is negative (the lab's "
        "screening cut-off, e.g. the 1:80 or 1:160 reference)", lo=0, hi=10000,
    )
    levels: list[float] = _f(
        [60.0, 150.0], "Calibrated units from which a positive specimen is intermediate, and "
        "strong (from negative_below up to the first: weak)"
    )
    borderline_percent: float = _f(
        35.0, "A specimen intensity within this percentage of negative_below, either side, "
        "carries a borderline warning: photobleaching alone can move a weak positive below "
        "the cut-off (0 = off)", lo=0, hi=100,
    )
    exposure_ms: float = _f(
        0.0, "Camera exposure the calibration was made at; 0 = not pinned (intensity is then "
        "relative only, and results say so). Auto-exposure must be off", lo=0, hi=60000,
    )
    gain: float = _f(0.0, "Camera analogue gain the calibration was made at; 0 = not pinned",
                     lo=0, hi=1000)
    units_per_grey: float = _f(
        1.0, "Calibrated units per 8-bit grey level above background at the pinned exposure "
        "(from the reference slide: `appliance calibrate-iif`)", lo=0.0001, hi=10000,
    )
    flat_field_file: str = _f(
        "", "Flat field of the light path (`appliance flat-iif`, from a uniformly "
        "fluorescent slide): each cell's brightness is divided by the relative light where "
        "it lies. '' = none: a cell at a dim corner reads dimmer"
    )
    flat_field_sha256: str = _f(
        "", "sha256 of the flat-field file the calibration was made with ('' = none), "
        "written by `appliance calibrate-iif`: another flat makes intensities relative"
    )


@dataclass(frozen=True)
class Hep2StainConfig:
    red_counterstain: bool = _f(
        False, "The kit's conjugate carries a red counterstain (Evans blue) and the emission "
        "filter passes it (long-pass), so every cell shows red: the wrong-stain colour test "
        "then weighs green against blue only. A colour camera only; the intensity is read "
        "in green as always, with the counterstain's share in the green pixels "
        "uncorrected (check the kit's negative control reads negative)",
    )


@dataclass(frozen=True)
class Hep2ControlConfig:
    default_expected: str = _f(
        "homogeneous", "What a kit control check started without saying (the case button's "
        "long press, a bare command) must read: 'negative', or a pattern's class name or "
        "ICAP code (most kits' positive control is homogeneous, AC-1)",
    )
    positive_units: list[float] = _f(
        [], "The lab's accepted range [low, high] of the kit's positive control (the pattern "
        "of default_expected) in calibrated intensity units, from its own validated runs "
        "(e.g. mean +/- 2 SD of 20 runs): outside it the control fails, as does one measured "
        "without calibration. Empty: that control is checked for its pattern only", lo=0,
    )
    positive_target: list[float] = _f(
        [], "The lab's established [mean, SD] of the kit's positive control in calibrated "
        "units, fixed once per kit lot (from that lot's first 20 runs, or carried over from "
        "the previous lot): each run's positive control is judged on it with the Westgard "
        "rules (a rejection fails the control) and so is `appliance case controls`' chart. "
        "Empty: no rules live, and the chart's target is its first 20 calibrated readings of "
        "passed checks", lo=0,
    )
    kit_lot: str = _f(
        "", "The kit lot in use, as printed on the kit (e.g. E231107AB): kept with every kit "
        "control check, shown with each reading of `appliance case controls`, and the live "
        "Westgard rules judge a run with the readings of its own lot only. Empty: not "
        "recorded",
    )
    target_since: str = _f(
        "", "The first day of the kit lot that positive_target belongs to (an ISO date or "
        "time; without an offset, the box's local time): readings before it are not judged "
        "on the target, live or in `appliance case controls`. Needed with positive_target",
    )
    slide_max_age_h: float = _f(
        12.0, "A HEp-2 case on a slide (start_case's slide) counts the kit control checks "
        "made in the slide's other cases up to this many hours before it opened: the "
        "controls of one run, not of a slide id reused on another day", lo=0.1, hi=72,
    )


@dataclass(frozen=True)
class Hep2Config:
    cells: Hep2CellsConfig = field(default_factory=Hep2CellsConfig)
    specimen: Hep2SpecimenConfig = field(default_factory=Hep2SpecimenConfig)
    intensity: Hep2IntensityConfig = field(default_factory=Hep2IntensityConfig)
    stain: Hep2StainConfig = field(default_factory=Hep2StainConfig)
    control: Hep2ControlConfig = field(default_factory=Hep2ControlConfig)


@dataclass(frozen=True)
class StoreConfig:
    path: str = _f("var/results.sqlite", "SQLite results store")


@dataclass(frozen=True)
class OverlayConfig:
    enabled: bool = _f(True, "Write an overlay PNG of every reported field")
    dir: str = _f("var/overlays", "Folder for the overlay PNGs of reported fields")


@dataclass(frozen=True)
class StabilityConfig:
    stable_s: float = _f(
        0.6, "A field is reported once the view has been still and sharp this long", lo=0,
        hi=60,
    )
    motion_threshold: float = _f(
        0.04, "Frame-to-frame change (mean absolute difference of a normalised thumbnail) "
        "above which the stage is moving", lo=0.001, hi=1,
    )
    drift_threshold: float = _f(
        0.12, "Change since the start of a still period above which the view has drifted "
        "(slow stage motion) and stillness starts again", lo=0.001, hi=2,
    )
    min_focus: float = _f(
        1.1, "Cheap sharpness (4x gradient energy at 1 px over 2 px on the strongest edges of "
        "a 320 px grey copy, noise removed: ~1.0 blurred or blank, 1.3-1.7 sharp) below which "
        "a still view is taken for focusing and not reported yet. Kept low on purpose: the "
        "assay's own focus gate decides whether a field can be scored, and a threshold above "
        "what a real camera reads when sharp would report nothing at all",
        lo=0, hi=100,
    )
    sharper_factor: float = _f(
        1.1, "A return to a reported field at the same spot (the stage not moved) is "
        "reported again, replacing the earlier report, when the view is now sharper: its "
        "focus figure (see min_focus) at least this many times the one it was reported at "
        "(the user focused better after the box had reported it). The same factor warns "
        "of a view held softer than its spot was in the seconds before (turned past the "
        "best focus). A large value (100) turns both off",
        lo=1.0, hi=100,
    )
    same_field_similarity: float = _f(
        0.85, "Fingerprint correlation (after registration) at or above which a field is "
        "one already reported", lo=0, hi=1,
    )
    memory: int = _f(256, "Reported fields remembered to recognise a return to one", lo=1,
                     hi=100000)


@dataclass(frozen=True)
class DisplayConfig:
    sink: str = _f(
        "file", "Where the live overlay goes: kmsdrm (HDMI, no X), window (desktop), "
        "offscreen (tests), picamera2 (Pi preview overlay), file (latest picture on disk), none",
        choices=("kmsdrm", "window", "offscreen", "picamera2", "file", "none"),
    )
    path: str = _f("var/display/latest.jpg", "file sink: picture written atomically (.jpg/.png)")
    max_fps: float = _f(
        30.0, "Most pictures per second composed for the display (file sink: see "
        "file_interval_s)", lo=0.1, hi=240,
    )
    file_interval_s: float = _f(1.0, "file sink: shortest time between two writes", lo=0,
                                hi=3600)
    width: int = _f(0, "Screen/window width; 0 = the screen's own (window: 1280)", lo=0,
                    hi=10000)
    height: int = _f(0, "Screen/window height; 0 = the screen's own (window: 720)", lo=0,
                     hi=10000)
    show_cells: bool = _f(True, "Draw cell outlines over the live picture while it is still")


@dataclass(frozen=True)
class PipelineConfig:
    drain_timeout_s: float = _f(
        30.0, "On stop, longest wait for results in flight to reach the store", lo=1, hi=600
    )
    metrics_interval_s: float = _f(60.0, "How often the metrics snapshot is logged", lo=1,
                                   hi=86400)
    latency_window: int = _f(512, "Samples kept for the p50/p95 figures", lo=16, hi=100000)
    model_thread: str = _f(
        "auto", "Run the model in a thread of its own (yes), or in the preparing thread (no); "
        "auto = yes with 4 or more CPU cores. On 2 cores 'no' scores as fast with half the "
        "latency (tools/bench_pipeline.py)", choices=("auto", "yes", "no"),
    )


@dataclass(frozen=True)
class MqttConfig:
    url: str = _f(
        "", "Broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS); empty = no MQTT (results "
        "stay in the local store)",
    )
    device_id: str = _f("", "This box's id in topics and payloads; empty = the host name")
    topic_prefix: str = _f(
        "eyepiece/{device_id}/", "Prefix of every topic; {device_id} is replaced"
    )
    protocol: str = _f(
        "5", "MQTT protocol version. 5 by default: a broker that refuses a message (ACL) "
        "says so in the PUBACK, where 3.1.1 acknowledges it and drops it",
        choices=("3.1.1", "5"),
    )
    keepalive_s: int = _f(30, "MQTT keepalive; the broker declares the box offline after "
                          "1.5x this without a packet", lo=5, hi=3600)
    tls_ca: str = _f("", "CA certificate file (mqtts://); empty = the system's CAs")
    tls_cert: str = _f("", "Client certificate file (mutual TLS); empty = none")
    tls_key: str = _f("", "Client private key file (mutual TLS); empty = none")
    username: str = _f("", "Broker user name; empty = anonymous")
    password_file: str = _f(
        "", "File holding the broker password (e.g. a systemd credential); never logged"
    )
    password_env: str = _f(
        "EYEPIECE_MQTT_PASSWORD", "Environment variable holding the broker password when "
        "password_file is empty; never logged",
    )
    metrics_interval_s: float = _f(10.0, "How often metrics are published", lo=1, hi=3600)
    replay_rate_per_s: float = _f(
        50.0, "Backlog messages sent per second after a reconnect (live results keep flowing)",
        lo=1, hi=10000,
    )
    max_in_flight: int = _f(20, "Messages sent but not yet acknowledged (PUBACK)", lo=1,
                            hi=1000)
    outbox_max_messages: int = _f(
        200000, "Most unsent messages kept on disk; beyond it the oldest are dropped and "
        "recorded", lo=10, hi=100000000,
    )
    outbox_warn_fraction: float = _f(
        0.5, "Outbox fill at which health turns degraded (long before anything is dropped)",
        lo=0.01, hi=1,
    )
    max_command_bytes: int = _f(16384, "Larger command payloads are refused", lo=256,
                                hi=1048576)
    case_salt_file: str = _f(
        "", "Per-site secret to hash case ids with; empty = case ids must already be opaque"
    )


@dataclass(frozen=True)
class LedsConfig:
    backend: str = _f(
        "none", "Status light: sysfs (/sys/class/leds, blinking by the kernel's timer trigger), "
        "gpiod (libgpiod v2 lines) or none", choices=("none", "sysfs", "gpiod"),
    )
    sysfs_root: str = _f("/sys/class/leds", "sysfs: where the LED class devices are")
    red: str = _f("eyepiece:red", "sysfs: LED name, or gpiod: line offset, of the red light")
    green: str = _f("eyepiece:green", "sysfs: LED name, or gpiod: line offset, of the green light")
    blue: str = _f("eyepiece:blue", "sysfs: LED name, or gpiod: line offset, of the blue light")
    gpiochip: str = _f("/dev/gpiochip0", "gpiod: the GPIO chip of the three lines")
    active_low: bool = _f(False, "gpiod: the LEDs light when the line is low")


@dataclass(frozen=True)
class ButtonConfig:
    backend: str = _f(
        "none", "Case button: gpiod (a push button on one libgpiod v2 line) or none. A short "
        "press opens a case or closes the open one; a long press starts or ends a control "
        "check", choices=("none", "gpiod"),
    )
    gpiochip: str = _f("/dev/gpiochip0", "gpiod: the GPIO chip of the button's line")
    line: str = _f("", "gpiod: the button's line offset or name")
    active_low: bool = _f(
        True, "The line reads low while pressed (button to ground, pull-up on)"
    )
    bias: str = _f("pull_up", "gpiod: the line's bias", choices=("pull_up", "pull_down",
                                                                     "disabled", "as_is"))
    debounce_ms: float = _f(30.0, "Edges closer than this are contact bounce", lo=0, hi=1000)
    long_press_s: float = _f(2.0, "A press held this long is a long press", lo=0.3, hi=30)


@dataclass(frozen=True)
class ServiceConfig:
    watchdog_stall_s: float = _f(
        30.0, "No frame taken by the analysis (analysed, or passed over as part of a view "
        "already decided) while the camera streams for this long is a stall: the systemd "
        "watchdog pings stop and systemd restarts the service", lo=1, hi=3600,
    )


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _f("INFO", "Log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Config:
    assay: str = _f("her2", "Assay to run: her2 (brightfield IHC) or hep2 (ANA IIF)",
                    choices=("her2", "hep2"))
    source: SourceConfig = field(default_factory=SourceConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    input: InputConfig = field(default_factory=InputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    her2: Her2Config = field(default_factory=Her2Config)
    hep2: Hep2Config = field(default_factory=Hep2Config)
    store: StoreConfig = field(default_factory=StoreConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def models_path(self) -> Path:
        """Where the models are: the configured folder, or the shipped ``models/``."""
        if self.inference.models_dir:
            return Path(self.inference.models_dir)
        # A source checkout or editable install keeps the shipped models beside the package.
        return Path(__file__).resolve().parent.parent / "models"

    def sha256(self) -> str:
        """Hash of the effective configuration, stored beside every result."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading


def _check_scalar(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {typ} at {key}")  # a bug in this module


def _check_value(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_check_scalar(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return {str(k): _check_scalar(f"{key}.{k}", v, item) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"optional config types are not supported ({key})")
    return _check_scalar(key, value, typ)


def _check_bounds(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    values = value if isinstance(value, list) else (
        list(value.values()) if isinstance(value, dict) else [value]
    )
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    for v in values:
        if lo is not None and v < lo:
            raise ConfigError(key, f"{v} is below the minimum {lo}")
        if hi is not None and v > hi:
            raise ConfigError(key, f"{v} is above the maximum {hi}")
        if choices is not None and v not in choices:
            raise ConfigError(key, f"{v!r} is not one of {', '.join(map(str, choices))}")


def _build(cls: Any, data: typing.Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}", f"unknown key (known here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, typ, value = f"{prefix}{name}", hints[name], data[name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a table [{key}], got {value!r}")
            kwargs[name] = _build(typ, value, f"{key}.")
        else:
            kwargs[name] = _check_value(key, value, typ)
            _check_bounds(key, kwargs[name], f.metadata)
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    th = cfg.her2.measure.intensity_thresholds
    if len(th) != 3 or not (0 < th[0] < th[1] < th[2]):
        raise ConfigError(
            "her2.measure.intensity_thresholds",
            f"need three increasing positive OD values (faint, moderate, strong), got {th}",
        )
    for key in ("hematoxylin", "dab"):
        vec = getattr(cfg.her2.stain, key)
        if len(vec) != 3 or min(vec) < 0 or sum(v * v for v in vec) == 0:
            raise ConfigError(f"her2.stain.{key}", f"need 3 non-negative OD values, got {vec}")
    m = cfg.her2.measure
    if m.max_working_um_per_px < m.working_um_per_px:
        raise ConfigError(
            "her2.measure.max_working_um_per_px",
            f"{m.max_working_um_per_px} is finer than working_um_per_px {m.working_um_per_px}",
        )
    o = cfg.optics
    for name, um in o.objectives.items():
        if not 0 < um <= 10:
            raise ConfigError(f"optics.objectives.{name}", f"{um} µm/px is not in (0, 10]")
    if o.objective != "auto" and o.objective not in o.objectives:
        raise ConfigError(
            "optics.objective",
            f"{o.objective!r} is neither 'auto' nor one of {', '.join(o.objectives)}",
        )
    _check_source(cfg.source)
    _check_mqtt(cfg.mqtt)
    _check_control(cfg.her2.control)
    hc = cfg.hep2.cells
    if hc.soft_focus_below < hc.min_focus:
        raise ConfigError("hep2.cells.soft_focus_below", f"{hc.soft_focus_below} is below "
                          f"hep2.cells.min_focus {hc.min_focus}: the warning must start above "
                          "the refusal")
    hi = cfg.hep2.intensity
    if len(hi.levels) != 2 or not (hi.negative_below < hi.levels[0] < hi.levels[1]):
        raise ConfigError("hep2.intensity.levels", "need two increasing values (intermediate, "
                          f"strong) above negative_below {hi.negative_below}, got {hi.levels}")
    if hi.flat_field_sha256 and not re.fullmatch(r"[0-9a-f]{64}", hi.flat_field_sha256):
        raise ConfigError("hep2.intensity.flat_field_sha256", "must be '' or 64 lower-case hex "
                          f"digits (a sha256), got {hi.flat_field_sha256!r}")
    # The pattern table is plain data (no import back here): one source for the names.
    from appliance.assays.hep2.patterns import canonical
    try:
        canonical(cfg.hep2.control.default_expected)
    except ValueError:
        raise ConfigError("hep2.control.default_expected",
                          f"{cfg.hep2.control.default_expected!r} is neither 'negative' nor a "
                          "pattern's class name or ICAP code (e.g. homogeneous, AC-1)") from None
    pu = cfg.hep2.control.positive_units
    if pu and (len(pu) != 2 or not 0 < pu[0] < pu[1]):
        raise ConfigError("hep2.control.positive_units", "need [] or two increasing positive "
                          f"values [low, high] in calibrated units, got {pu}")
    from appliance.assays.hep2.control_trend import since_utc
    try:
        since_utc(cfg.hep2.control.target_since, "value")
    except ValueError as exc:
        raise ConfigError("hep2.control.target_since", str(exc)) from None
    lot = cfg.hep2.control.kit_lot
    if lot and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,39}", lot):
        raise ConfigError("hep2.control.kit_lot", "letters, digits and . _ / - only, at most "
                          f"40, as printed on the kit, got {lot!r}")
    pt = cfg.hep2.control.positive_target
    if pt and (len(pt) != 2 or not (pt[0] > 0 and pt[1] > 0)):
        raise ConfigError("hep2.control.positive_target", "need [] or [mean, SD], both above "
                          f"0, in calibrated units, got {pt}")
    if pt and not cfg.hep2.control.target_since:
        # Without it a new lot's target would judge the old lot's runs: false rejections.
        raise ConfigError("hep2.control.target_since", "positive_target is set: give the "
                          "first day of the kit lot it belongs to (e.g. 2026-11-15)")
    c = cfg.hep2.cells
    if c.max_area_um2 <= c.min_area_um2:
        raise ConfigError("hep2.cells.max_area_um2", f"{c.max_area_um2} is not above "
                          f"min_area_um2 {c.min_area_um2}")
    if cfg.button.backend == "gpiod" and not cfg.button.line:
        raise ConfigError("button.line", "backend gpiod needs the button's line offset or name")
    if cfg.display.sink == "picamera2" and cfg.source.kind != "picamera2":
        raise ConfigError("display.sink", "picamera2 draws over the Pi camera's own preview: "
                          f"it needs a picamera2: source, not {cfg.source.uri!r}")


def _check_control(c: ControlConfig) -> None:
    for key in c.reference_od:
        if key not in CALIBRATING_LEVELS:
            raise ConfigError(f"her2.control.reference_od.{key}",
                              f"only {', '.join(CALIBRATING_LEVELS)} controls calibrate")
    for key in c.min_percent:
        if key not in CONTROL_LEVELS:
            raise ConfigError(f"her2.control.min_percent.{key}",
                              f"not a control level ({', '.join(CONTROL_LEVELS)})")
    if c.calibration and not c.reference_od:
        raise ConfigError("her2.control.reference_od",
                          "calibration = true needs a reference OD for 3+ or 2+")


def _check_mqtt(m: MqttConfig) -> None:
    if m.url and not (m.url.startswith("mqtt://") or m.url.startswith("mqtts://")):
        raise ConfigError("mqtt.url", f"{m.url!r}: expected mqtt://HOST[:PORT] or "
                          "mqtts://HOST[:PORT]")
    if bool(m.tls_cert) != bool(m.tls_key):
        raise ConfigError("mqtt.tls_key", "set tls_cert and tls_key together (mutual TLS)")
    if "{device_id}" not in m.topic_prefix and not m.device_id:
        raise ConfigError("mqtt.topic_prefix", "must contain {device_id} unless device_id is "
                          "set: two boxes would publish under one prefix")
    bad = set(m.device_id) & set("+#/ ")
    if bad:
        raise ConfigError("mqtt.device_id", f"{m.device_id!r} contains {''.join(sorted(bad))!r}, "
                          "not allowed in an MQTT topic level")


def _check_source(src: SourceConfig) -> None:
    if src.kind not in SOURCE_KINDS:
        raise ConfigError("source.uri", f"{src.uri!r}: the scheme must be one of "
                          f"{', '.join(k + ':' for k in SOURCE_KINDS)}")
    if src.kind in ("replay", "v4l2", "gstreamer") and not src.target:
        raise ConfigError("source.uri", f"{src.uri!r}: {src.kind}: needs a path, device or "
                          "pipeline after the colon")
    if src.kind in ("synthetic", "picamera2") and src.target and not src.target.isdigit():
        raise ConfigError("source.uri", f"{src.uri!r}: after {src.kind}: only a number "
                          f"({'seed' if src.kind == 'synthetic' else 'camera index'})")
    if src.reconnect_max_s < src.reconnect_min_s:
        raise ConfigError("source.reconnect_max_s",
                          f"{src.reconnect_max_s} is below reconnect_min_s {src.reconnect_min_s}")
    if (src.width == 0) != (src.height == 0):
        raise ConfigError("source.width", "set both width and height, or neither (0)")
    if len(src.colour_gains) != 2 or not all(0.0 < g <= 32.0 for g in src.colour_gains):
        raise ConfigError("source.colour_gains", "need two gains (red, blue) above 0 and at "
                          f"most 32, got {src.colour_gains}")


def config_from_dict(data: typing.Mapping[str, Any]) -> Config:
    """Validate a parsed mapping and return the full configuration."""
    cfg: Config = _build(Config, data, "")
    _cross_checks(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return config_from_dict({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"{p} is not valid TOML: {exc}") from exc
    return config_from_dict(data)


def with_overrides(cfg: Config, overrides: typing.Mapping[str, Any]) -> Config:
    """Return ``cfg`` with dotted keys replaced (command-line flags), re-validated."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(dotted, "unknown key")
        node[leaf] = value
    return config_from_dict(data)


def describe_defaults() -> str:
    """The default configuration as commented TOML (for `appliance config --defaults`)."""
    lines: list[str] = []

    def emit(cls: Any, prefix: str) -> None:
        nested = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((f.name, hints[f.name]))
                continue
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory())  # type: ignore[operator]
            if isinstance(default, dict):
                nested.append((f.name, default))
                continue
            lines.append(f"# {f.metadata.get('doc', '')}")
            lines.append(f"{f.name} = {json.dumps(default, ensure_ascii=False)}")
        for name, sub in nested:
            lines.append("")
            lines.append(f"[{prefix}{name}]")
            if isinstance(sub, dict):
                lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sub.items())
            else:
                emit(sub, f"{prefix}{name}.")

    emit(Config, "")
    return "\n".join(lines) + "\n"
