"""The HER2 assay: one frame in, one FieldResult out.

    scale → resample → colour deconvolution → quality gates → model →
    nucleus instances → membrane measurement → ASCO/CAP rules

Each step is a pure function in its own module; this class only holds the
model and the configuration and times the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TypeVar

import cv2
import numpy as np

from appliance.assays.her2 import cells as cellmod
from appliance.assays.her2.quality import measure_quality, quality_issues
from appliance.assays.her2.rules import classify_cell, score_field
from appliance.assays.her2.scale import estimate_um_per_px
from appliance.assays.her2.stain import StainMaps, deconvolve
from appliance.assays.her2.types import (
    CellMeasurement,
    FieldContext,
    FieldResult,
    ModelRef,
    NotScorable,
)
from appliance.assays.her2.working_scale import choose_working_scale, resample
from appliance.assays.shell import AssayShell
from appliance.capture.frame import Frame
from appliance.config import Config, MeasureConfig
from appliance.inference.backend import SegmentationBackend, to_model_input
from appliance.inference.manifest import ModelManifest, load_manifest, verify_model
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend
from appliance.inference.tiling import run_tiled

ASSAY = "her2"
TENSORRT_INT8 = "int8_trt"  # the manifest's file for TensorRT's explicit INT8
# Scale estimation runs on a small copy, and on a larger one when the nuclei in the small
# one are under _ESTIMATE_MIN_NUCLEUS_PX across (low power, large frames).
_ESTIMATE_BUDGETS_PX = (300_000, 1_000_000)
_ESTIMATE_MIN_NUCLEUS_PX = 6.0
# Camera pixels at the specimen from a 4x to a 63x objective; an estimate outside is clamped.
_PLAUSIBLE_UM_PER_PX = (0.15, 2.0)
# 10x to 40x (with some margin): what the model was trained and validated for.
_VALIDATED_UM_PER_PX = (0.2, 1.2)
# A declared scale more than this factor from the nuclear-size estimate is questioned.
_SCALE_DISAGREES = 1.8
_DECLARED = ("frame", "config", "objective")
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleInfo:
    """The scale of a field and how it was found, with the warnings that go with it."""

    um_per_px: float
    source: str  # frame | config | objective | estimated | assumed
    warnings: tuple[str, ...]


@dataclass
class PreparedField:
    """A field between ``prepare`` and ``finish``: the working picture and what is known."""

    base: FieldResult  # scale, quality, timings so far; status still not_scorable
    warnings: list[str]
    rgb: np.ndarray  # working-scale picture
    stains: StainMaps
    scale: ScaleInfo
    working_um_per_px: float
    refusal: FieldResult | None = None  # a quality gate refused the field: no model run


class _Timer:
    """Adds the wall time of each call to a per-stage total in milliseconds."""

    def __init__(self, ms: dict[str, float] | None = None) -> None:
        self.ms = {} if ms is None else ms

    def __call__(self, stage: str, fn: Callable[[], _T]) -> _T:
        t0 = time.perf_counter()
        value = fn()
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t0) * 1000.0
        return value


class Her2Assay(AssayShell[FieldResult]):
    """Scores HER2 IHC fields with one loaded model."""

    backend: SegmentationBackend

    def __init__(self, cfg: Config, manifest: ModelManifest, backend: SegmentationBackend,
                 precision: str) -> None:
        self.cfg = cfg
        self.manifest = manifest
        self.backend = backend
        self.model = ModelRef(
            name=manifest.name, sha256=manifest.sha256(precision), precision=precision,
            validated_on=manifest.validated_on,
        )
        # The open case's say on each field (its tag, calibrated thresholds); the
        # composition root sets it when cases are kept. Asked once per field, in finish.
        self.field_context: Callable[[], FieldContext | None] = lambda: None

    @classmethod
    def from_config(cls, cfg: Config) -> Her2Assay:
        """Load and verify the shipped model named by the configuration."""
        manifest = load_manifest(cfg.models_path() / ASSAY)
        precision = cfg.inference.precision
        if cfg.inference.backend == "tensorrt" and precision == "int8":
            # TensorRT takes only symmetric INT8 Q/DQ: its own file (tools/quantise_model.py
            # --symmetric); the CPU model's activations have non-zero zero points.
            precision = TENSORRT_INT8
        path = verify_model(manifest, precision)
        backend: SegmentationBackend
        if cfg.inference.backend == "tensorrt":
            # Imported here: tensorrt and pycuda exist on a Jetson only.
            from appliance.inference.tensorrt_backend import tensorrt_backend_for

            backend = tensorrt_backend_for(cfg, manifest, precision, path)
        else:
            backend = OnnxRuntimeBackend(path, threads=cfg.inference.threads,
                                         input_name=manifest.input.name)
        return cls(cfg, manifest, backend, precision)

    def prepare(self, frame: Frame, scale: ScaleInfo | None = None) -> PreparedField:
        """Everything before the model: scale, resampling, deconvolution, quality gates.

        A field refused by a quality gate comes back with ``refusal`` set and needs
        no model run. ``scale`` reuses what an earlier frame of the same view found
        (the real-time pipeline passes it within one still period: the objective
        cannot change without the view changing), which skips the nuclear-size
        estimate and the declared-scale check.
        """
        timer = _Timer()
        h3 = self.cfg.her2
        if scale is None:
            native, scale_source, scale_warnings = timer("preprocess", lambda: self._scale(frame))
        else:
            native, scale_source, scale_warnings = (scale.um_per_px, scale.source,
                                                    list(scale.warnings))
        working = choose_working_scale(native, frame.height, frame.width, h3.measure)
        rgb = timer("preprocess", lambda: resample(frame.image, native, working))
        stains = timer("preprocess", lambda: deconvolve(rgb, h3.stain))
        if scale is None and scale_source in _DECLARED:
            scale_warnings += timer("preprocess", lambda: self._check_declared(
                native, scale_source, working, rgb, stains))
        report = timer("quality", lambda: measure_quality(rgb, stains))
        issues = quality_issues(report, h3.quality)
        warnings = scale_warnings + [i.reason for i in issues if not i.fatal]
        base = FieldResult(
            file=frame.source, seq=frame.seq, assay=ASSAY, status="not_scorable",
            model=self.model, image_width=frame.width, image_height=frame.height,
            um_per_px=native, um_per_px_source=scale_source, quality=report,
            timings_ms=timer.ms,
        )
        prepared = PreparedField(
            base=base, warnings=warnings, rgb=rgb, stains=stains,
            scale=ScaleInfo(native, scale_source, tuple(scale_warnings)),
            working_um_per_px=working,
        )
        fatal = [i for i in issues if i.fatal]
        if fatal:
            prepared.refusal = self._refused(
                NotScorable("; ".join(i.reason for i in fatal), fatal[0].code), base, warnings)
        return prepared

    def infer(self, prepared: PreparedField) -> np.ndarray:
        """The model on the working-scale picture (tiled when large): class logits."""
        t0 = time.perf_counter()
        logits = self._infer(prepared.rgb)
        prepared.base.timings_ms["model"] = (time.perf_counter() - t0) * 1000.0
        return logits

    def finish(self, prepared: PreparedField, logits: np.ndarray) -> FieldResult:
        """Everything after the model: cells, membranes, cytoplasm gate, ASCO/CAP rules.

        The intensity thresholds are the open case's (calibrated by its control) when a
        case is open, else the configured ones; the result records which.
        """
        timer = _Timer(prepared.base.timings_ms)
        h3, warnings = self.cfg.her2, prepared.warnings
        context = self.field_context()
        measure = h3.measure if context is None else replace(
            h3.measure, intensity_thresholds=list(context.thresholds))
        t = measure.intensity_thresholds
        base = replace(prepared.base, intensity_thresholds=(t[0], t[1], t[2]),
                       case=None if context is None else context.case)
        working, native = prepared.working_um_per_px, prepared.scale.um_per_px
        measured = timer("postprocess", lambda: self._measure(
            logits, prepared.rgb.shape[:2], prepared.stains.dab, working, measure))
        stained_cytoplasm = _cytoplasm_refusal(measured, h3.quality.max_cytoplasm_dab)
        if stained_cytoplasm is not None:
            return self._refused(stained_cytoplasm, base, warnings)
        cells = timer("rules", lambda: self._to_cells(measured, native, working, measure))
        verdict = timer("rules", lambda: score_field([c.membrane_class for c in cells],
                                                     h3.rules))
        if isinstance(verdict, NotScorable):
            return self._refused(verdict, base, warnings, cells=tuple(cells))
        return replace(
            base, status="scored", score=verdict.score, category=verdict.category,
            rule=verdict.rule, tumour_cells=verdict.tumour_cells,
            percent={k: round(v, 3) for k, v in verdict.percent.items()},
            cells=tuple(cells), warnings=tuple(warnings), created_at=_now(),
        )

    def refuse_input(self, source: str, seq: int, code: str, reason: str) -> FieldResult:
        """The result for an input that never became a frame (corrupt or unreadable file)."""
        return FieldResult(file=source, seq=seq, assay=ASSAY, status="not_scorable",
                           model=self.model, image_width=0, image_height=0, reason=reason,
                           reason_code=code, created_at=_now())

    @staticmethod
    def _refused(why: NotScorable, base: FieldResult, warnings: list[str],
                 cells: tuple[CellMeasurement, ...] = ()) -> FieldResult:
        return replace(
            base, status="not_scorable", reason=why.reason, reason_code=why.code,
            tumour_cells=why.tumour_cells, cells=cells, warnings=tuple(warnings),
            created_at=_now(),
        )

    def _scale(self, frame: Frame) -> tuple[float, str, list[str]]:
        """µm/px of the frame and where it came from: frame, config, objective or estimate."""
        optics = self.cfg.optics
        if frame.um_per_px:
            declared, source = frame.um_per_px, "frame"
        elif optics.um_per_px > 0:
            declared, source = optics.um_per_px, "config"
        elif optics.objective != "auto":
            declared, source = optics.objectives[optics.objective], "objective"
        else:
            return self._estimated_scale(frame.image)
        return declared, source, []

    def _check_declared(self, declared: float, source: str, working: float,
                        rgb: np.ndarray, stains: StainMaps) -> list[str]:
        """Warnings when a declared scale is out of range or contradicts the nuclei.

        A wrong objective setting is the classic way to get every size-based measure wrong
        at once; the nuclei in the picture are an independent check. It is made on the
        working-scale picture already deconvolved: a declared scale k times wrong shows
        as nuclei k times off their assumed size there.
        """
        warnings = []
        if not _VALIDATED_UM_PER_PX[0] <= declared <= _VALIDATED_UM_PER_PX[1]:
            warnings.append(f"scale {declared:g} um/px ({source}) is outside the 10x-40x range "
                            "the model was validated for")
        seen = estimate_um_per_px(rgb, stains, self.cfg.optics.assumed_nucleus_diameter_um)
        if seen is not None and not 1 / _SCALE_DISAGREES < seen / working < _SCALE_DISAGREES:
            measured = declared * seen / working
            warnings.append(f"scale {declared:g} um/px ({source}) disagrees with the nuclear "
                            f"size (about {measured:.2f} um/px): check the objective setting")
        return warnings

    def _measure_scale(self, image: np.ndarray) -> float | None:
        """µm/px from the median nucleus size (None when too few nuclei).

        Tried first on a small copy (fast); when the nuclei there are too small to
        measure well, again on a larger one.
        """
        h, w = image.shape[:2]
        assumed = self.cfg.optics.assumed_nucleus_diameter_um
        native = None
        for budget in _ESTIMATE_BUDGETS_PX:
            shrink = min(1.0, float(np.sqrt(budget / (h * w))))
            small = image if shrink == 1.0 else cv2.resize(
                image, (max(1, round(w * shrink)), max(1, round(h * shrink))),
                interpolation=cv2.INTER_AREA)
            estimate = estimate_um_per_px(small, deconvolve(small, self.cfg.her2.stain),
                                          assumed)
            native = None if estimate is None else estimate * shrink
            if shrink == 1.0 or (estimate is not None
                                 and assumed / estimate >= _ESTIMATE_MIN_NUCLEUS_PX):
                break
        return native

    def _estimated_scale(self, image: np.ndarray) -> tuple[float, str, list[str]]:
        native = self._measure_scale(image)
        fallback = self.cfg.her2.measure.working_um_per_px
        if native is None:
            return fallback, "assumed", [
                f"scale unknown: too few nuclei to estimate it; assumed {fallback} um/px "
                "(set optics.objective or optics.um_per_px)"]
        lo, hi = _PLAUSIBLE_UM_PER_PX
        warnings = [f"scale estimated from nuclear size: {native:.2f} um/px"]
        if not lo <= native <= hi:
            warnings.append(f"estimated scale {native:.2f} um/px is implausible; clamped")
            native = min(hi, max(lo, native))
        return native, "estimated", warnings

    def _infer(self, rgb: np.ndarray) -> np.ndarray:
        x = to_model_input(rgb, self.manifest.input)
        stride = self.manifest.output_stride
        return run_tiled(self.backend, x, tile=self.cfg.inference.tile_px, overlap=32,
                         multiple=self.manifest.input.multiple_of, stride=stride)

    def _measure(self, logits: np.ndarray, shape: tuple[int, int], dab: np.ndarray,
                 working: float, m: MeasureConfig) -> list[cellmod.WorkingCell]:
        classes = cellmod.class_map_from_logits(logits, shape)
        nuclei = cellmod.nucleus_instances(
            classes, min_area_px=max(1, round(m.min_nucleus_area_um2 / working**2)),
            min_separation_px=max(1, round(2.5 / working)),
        )
        return cellmod.measure_cells(nuclei, classes == cellmod.MEMBRANE, dab,
                                     um_per_px=working, cfg=m)

    def _to_cells(self, measured: list[cellmod.WorkingCell], native: float,
                  working: float, measure: MeasureConfig) -> list[CellMeasurement]:
        """Working-scale cells → classified cells in source-image coordinates."""
        to_src = working / native
        out = []
        for i, c in enumerate(measured, start=1):
            intensity, membrane = classify_cell(c.intensity_od, c.completeness, measure)
            points = np.rint(c.outline * to_src).astype(int).tolist()
            outline = tuple((x, y) for x, y in points)
            out.append(CellMeasurement(
                cell_id=i, x=c.x * to_src, y=c.y * to_src,
                nucleus_area_um2=c.nucleus_area_px * working**2,
                completeness=c.completeness, intensity_od=c.intensity_od,
                intensity=intensity, membrane_class=membrane, outline=outline,
            ))
        return out


def _cytoplasm_refusal(cells: list[cellmod.WorkingCell], limit: float) -> NotScorable | None:
    """A refusal when the tumour cells' cytoplasm is brown: membranes cannot be judged.

    HER2 is a membrane stain; diffuse cytoplasmic DAB (another antibody, or a failed
    stain) would otherwise read as complete membranes all round.
    """
    if not cells:
        return None
    median = float(np.median([c.cytoplasm_od for c in cells]))
    if median <= limit:
        return None
    return NotScorable(
        f"diffuse cytoplasmic DAB (median {median:.2f} OD inside the tumour cells, above "
        f"{limit:g}, her2.quality.max_cytoplasm_dab) hides the membranes: not a HER2 "
        "membrane staining pattern", "cytoplasmic_stain", len(cells))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

