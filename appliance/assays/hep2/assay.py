"""The HEp-2 assay: one fluorescence field in, one Hep2Result out.

    quality gates → scale → cell segmentation → brightness → crops → classifier →
    specimen rules (intensity cut-off, pattern votes, metaphase evidence)

Same shape as the HER2 assay (prepare / infer / finish), so the real-time pipeline runs
either; each step is a pure function in its own module.
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

from appliance.assays.hep2 import intensity as brightness_mod
from appliance.assays.hep2.calibration import intensity_is_calibrated
from appliance.assays.hep2.cell_quality import CellRefused, cell_image_issues
from appliance.assays.hep2.crops import crops_for
from appliance.assays.hep2.flat_field import FlatField, FlatFieldError, configured_flat, gain_map
from appliance.assays.hep2.orientations import mean_over_orientations, oriented
from appliance.assays.hep2.patterns import NAMES, REGIONS, pattern
from appliance.assays.hep2.quality import (
    Hep2Quality,
    QualityIssue,
    measure_hep2_quality,
    quality_issues,
    shows_signal,
)
from appliance.assays.hep2.scale import (
    PROVISIONAL_UM_PER_PX,
    SEARCH_MIN_CELLS,
    Hep2Scale,
    best_scale,
    candidate_scales,
    central_cells,
    classifier_fit,
    declared_scale_warning,
    estimate_scale,
    estimate_warning,
    range_warning,
)
from appliance.assays.hep2.segmentation import Hep2Cells, segment_cells
from appliance.assays.hep2.single_cell import scale_from_mask, single_cell_crop
from appliance.assays.hep2.specimen import call_specimen, too_coarse_for_subtypes
from appliance.assays.hep2.types import MITOSIS_CLASSES, CellCall, Hep2Cell, Hep2Result
from appliance.assays.her2.assay import TENSORRT_INT8, ScaleInfo
from appliance.assays.her2.types import FieldContext, ModelRef
from appliance.assays.shell import AssayShell
from appliance.capture.frame import COMPRESSED_FORMATS, Frame
from appliance.config import Config
from appliance.inference.backend import ClassifierBackend
from appliance.inference.manifest import ModelError, ModelManifest, load_manifest, verify_model
from appliance.inference.onnxruntime_backend import OnnxRuntimeBackend

ASSAY = "hep2"
PATTERN_LOGITS = "pattern_logits"
MITOSIS_LOGITS = "mitosis_logits"
REGION_LOGITS = "region_logits"  # hep2-cells-v6 on: does each region of the cell stain?
# Cells per classifier run: bounded memory on a big field. Also the largest batch of the
# TensorRT engine's profile (tools/build_engine.py builds it with this value).
CLASSIFIER_BATCH = 256
AUTO_WHITE_BALANCE_WARNING = (
    "the camera's automatic white balance is on (source.auto_white_balance): it shifts the "
    "colour of fluorescence light, which the wrong-stain check reads; set it false")
WHITE_BALANCE_NOT_HELD_WARNING = (
    "the camera did not hold the fixed white balance asked for (source.auto_white_balance "
    "= false; the service log says what it reported): the colour of fluorescence light, "
    "which the wrong-stain check reads, may shift")
# Reason code of a field with no cell and no light above the noise (not a negative well).
NOTHING_IN_VIEW = "nothing_in_view"
# JPEG-compressed frames (capture.frame.COMPRESSED_FORMATS): measured with
# tools.stress_hep2, MJPG's 4:2:0 chroma and quantisation blur the fine speckles and dots
# the classes differ by, and cost the cells many points of accuracy (docs/hep2.md).
COMPRESSED_WARNING = ("the camera sends JPEG-compressed frames (MJPG): fine speckles and dots "
                      "lose detail and colour, and cells are classified less accurately; set "
                      "source.fourcc = \"YUYV\" where the camera offers it")
_LIGHT_MAPS_KEPT = 4  # frame sizes whose flat-field map is kept (stills come in any size)
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FlatState:
    """The flat field in use, its sha256 and its light maps per frame size: swapped whole
    on a reload, so a field never mixes one flat's light with another's hash."""

    flat: FlatField | None
    sha256: str  # '' without a flat field
    maps: dict[tuple[int, int], np.ndarray | str]  # per frame size; str: why it does not fit


@dataclass
class Hep2Prepared:
    """A field between ``prepare`` and ``finish``."""

    base: Hep2Result  # not scorable until finish; scale, timings so far
    warnings: list[str]
    scale: ScaleInfo
    cells: Hep2Cells | None = None
    crops: np.ndarray | None = None  # (N, 2, S, S)
    cell_ids: np.ndarray | None = None  # (N,) labels of the crops
    brightness: np.ndarray | None = None  # (count,) grey above background, per label - 1
    field_grey: float = 0.0  # the whole field's brightness (when no cell is found)
    exposure_pinned: bool | None = None  # the camera's word (None: a still, or cannot say)
    refusal: Hep2Result | None = None
    flat_sha256: str = ""  # the flat field the brightness was corrected with ('' = none)
    flat_unfit: bool = False  # a flat field is configured but does not fit this image


class Hep2Assay(AssayShell[Hep2Result]):
    """Scores HEp-2 IIF fields with one loaded cell classifier."""

    backend: ClassifierBackend

    def __init__(self, cfg: Config, manifest: ModelManifest, backend: ClassifierBackend,
                 precision: str) -> None:
        self.cfg = cfg
        self.manifest = manifest
        self.backend = backend
        self.model = ModelRef(name=manifest.name, sha256=manifest.sha256(precision),
                              precision=precision, validated_on=manifest.validated_on)
        self._heads = model_heads(manifest)
        # Raises ConfigError naming hep2.intensity.flat_field_file for a bad file.
        self._flat = _FlatState(*configured_flat(cfg.hep2.intensity), {})
        # Cases are the HER2 workflow; the pipeline sets this on every assay.
        self.field_context: Callable[[], FieldContext | None] = lambda: None

    @property
    def flat(self) -> FlatField | None:
        """The flat field in use (None: none configured)."""
        return self._flat.flat

    @property
    def flat_sha256(self) -> str:
        """The sha256 of the flat field in use ('' without one)."""
        return self._flat.sha256

    def reconfigure(self, cfg: Config) -> tuple[str, ...]:
        """Take a reloaded config between fields (``service/reload.py``).

        The flat field it names is read first, again even under the same name (the lab may
        have made a new one in its place): a file that cannot be used is a ConfigError
        and the assay stays as it was. Returns ``hep2.intensity.flat_field_file`` when the
        flat field in use changed (its content, whatever its name), else nothing. The
        crop size is the loaded classifier's: the reload keeps it (a restart changes it).
        """
        flat, sha = configured_flat(cfg.hep2.intensity)
        changed = sha != self._flat.sha256
        if changed:
            self._flat = _FlatState(flat, sha, {})  # before the config: see _FlatState
        self.cfg = cfg
        return ("hep2.intensity.flat_field_file",) if changed else ()

    def reading_inputs(self) -> tuple[str, ...]:
        """The flat field's sha256 ('' without one): a reload that changes its content
        under the same name changes the reading, as a changed setting does."""
        return (self._flat.sha256,)

    @classmethod
    def from_config(cls, cfg: Config) -> Hep2Assay:
        """Load and verify the shipped classifier on the configured backend.

        TensorRT (Jetson) runs the symmetric INT8 file, as for HER2, with an engine whose
        profile spans 1 to ``CLASSIFIER_BATCH`` crops: ``infer`` never sends more at once.
        """
        manifest = load_manifest(cfg.models_path() / ASSAY)
        precision = cfg.inference.precision
        tensorrt = cfg.inference.backend == "tensorrt"
        if tensorrt and precision == "int8":
            precision = TENSORRT_INT8  # TensorRT refuses the CPU file's non-zero zero points
        path = verify_model(manifest, precision)
        side = cfg.hep2.cells.crop_px
        backend: ClassifierBackend
        if tensorrt:
            # Imported here: tensorrt and pycuda exist on a Jetson only.
            from appliance.inference.tensorrt_backend import check_item_side, tensorrt_backend_for

            check_item_side(manifest, side, "hep2.cells.crop_px")
            backend = tensorrt_backend_for(cfg, manifest, precision, path,
                                           max_batch=CLASSIFIER_BATCH)
        else:
            backend = OnnxRuntimeBackend(path, threads=cfg.inference.threads,
                                         input_name=manifest.input.name,
                                         warmup_input=(1, 2, side, side))
        return cls(cfg, manifest, backend, precision)

    def prepare(self, frame: Frame, scale: ScaleInfo | None = None) -> Hep2Prepared:
        """Quality gates, scale, segmentation, brightness and crops (everything but the model).

        ``scale`` reuses what an earlier frame of the same still view found.
        """
        t0 = time.perf_counter()
        ms: dict[str, float] = {}
        image = frame.image
        green = image[..., 1].astype(np.float32)
        declared = scale or self._declared_scale(frame)
        cfg = self.cfg.hep2.cells
        # The gates need a scale for their smoothing: without a declared one, a provisional
        # one, and the gates are measured again at the estimate. Focus is judged per µm, so
        # it waits for the estimate: a sharp 40x field judged as if at 20x looks soft.
        red = self.cfg.hep2.stain.red_counterstain
        quality = measure_hep2_quality(
            image, declared.um_per_px if declared else PROVISIONAL_UM_PER_PX, cfg,
            red_counterstain=red)
        issues = quality_issues(quality, min_focus=cfg.min_focus,
                                soft_focus=cfg.soft_focus_below)
        # Sharpness is reported at a known scale only (focus is judged per µm).
        base = Hep2Result(file=frame.source, seq=frame.seq, status="not_scorable",
                          model=self.model, image_width=frame.width,
                          image_height=frame.height, timings_ms=ms,
                          sharpness=_sharpness(quality) if declared else None)

        ms["quality"] = (time.perf_counter() - t0) * 1000.0
        # First frame of a still view with a declared scale: do the cells agree? The doubt
        # travels with the scale to the view's next frames, and goes with a refusal too: a
        # 40x field declared 10x looks out of focus. A negative well's faint cells say too
        # little (they gave half the false doubts measured).
        doubt = None
        if scale is None and declared is not None and shows_signal(quality):
            t_check = time.perf_counter()
            doubt = declared_scale_warning(green, declared.um_per_px, declared.source, cfg)
            if doubt is not None:
                declared = replace(declared, warnings=(*declared.warnings, doubt))
            ms["scale"] = (time.perf_counter() - t_check) * 1000.0

        def refused(found: ScaleInfo | None, issues: list[QualityIssue]) -> Hep2Prepared | None:
            """The refusal when a gate fails (focus only once the scale is known)."""
            fatal = [i for i in issues if i.fatal
                     and (found is not None or i.code != "out_of_focus")]
            if not fatal:
                return None
            warnings = [i.reason for i in issues if not i.fatal] + ([doubt] if doubt else [])
            prep = Hep2Prepared(base, warnings, found or ScaleInfo(0.0, "unknown", ()))
            prep.refusal = self._refused(base, "; ".join(i.reason for i in fatal),
                                         fatal[0].code, warnings)
            return prep

        early = refused(declared, issues)
        if early is not None:
            return early
        t1 = time.perf_counter()
        found = declared
        if found is None:
            found = self._estimated_scale(green)
            t2 = time.perf_counter()
            quality = measure_hep2_quality(image, found.um_per_px, cfg, red_counterstain=red)
            issues = quality_issues(quality, min_focus=cfg.min_focus,
                                    soft_focus=cfg.soft_focus_below)
            base = replace(base, sharpness=_sharpness(quality))
            ms["quality"] += (time.perf_counter() - t2) * 1000.0
            late = refused(found, issues)
            if late is not None:
                return late
        warnings = [i.reason for i in issues if not i.fatal]
        if frame.pixel_format in COMPRESSED_FORMATS:
            warnings.append(COMPRESSED_WARNING)
        if frame.exposure_pinned is not None and self.cfg.source.auto_white_balance:
            # A live camera's frame (a still cannot say): its white balance follows the scene.
            warnings.append(AUTO_WHITE_BALANCE_WARNING)
        if frame.white_balance_held is False:
            warnings.append(WHITE_BALANCE_NOT_HELD_WARNING)
        outside = range_warning(found.um_per_px, found.source,
                                self.manifest.input.um_per_px_range)
        if outside is not None:
            warnings.append(outside)
        cells = segment_cells(green, found.um_per_px, cfg)
        if cells.count == 0 and not quality.signal > quality.noise_floor:
            # Nothing to call negative on. A negative well still shows its cells faintly
            # (autofluorescence, the conjugate's background), which the segmentation or at
            # least the signal measure finds; a black or featureless frame is a lamp off, a
            # shutter closed, a blocked light path or no well in view.
            base = replace(base, um_per_px=found.um_per_px, um_per_px_source=found.source)
            said = warnings + list(found.warnings)
            prep = Hep2Prepared(base, said, found)
            prep.refusal = self._refused(base, nothing_in_view(quality), NOTHING_IN_VIEW, said)
            return prep
        crop_um = self._crop_scale(green, cells, found)
        found = Hep2Scale(found.um_per_px, found.source, found.warnings, crop_um)
        crops, ids = crops_for(green, cells.labels, crop_um, cfg)
        flat = self._flat  # one flat for the whole field, whatever a reload does meanwhile
        light = _light_map(flat, green.shape)
        if isinstance(light, str):
            warnings.append(light)
        light_map = None if isinstance(light, str) else light
        bright = brightness_mod.cell_brightness(green, cells.labels, cells.background_map,
                                                light_map)
        field_grey = (brightness_mod.field_brightness(green, cells.background_map, light_map)
                      if cells.count == 0 else 0.0)
        ms["cells"] = (time.perf_counter() - t1) * 1000.0
        base = replace(base, um_per_px=found.um_per_px, um_per_px_source=found.source,
                       crop_um_per_px=crop_um)
        return Hep2Prepared(base, warnings + list(found.warnings), found, cells, crops, ids,
                            bright, field_grey, frame.exposure_pinned,
                            flat_sha256=flat.sha256 if light_map is not None else "",
                            flat_unfit=isinstance(light, str))

    def infer(self, prepared: Hep2Prepared) -> dict[str, np.ndarray]:
        """The classifier on every crop: pattern and mitosis logits, each the mean over the
        configured orientations of the crop (orientations.py)."""
        t0 = time.perf_counter()
        crops = prepared.crops if prepared.crops is not None else np.zeros((0, 2, 1, 1))
        out = self._logits(crops, self.cfg.hep2.cells.orientations)
        prepared.base.timings_ms["model"] = (time.perf_counter() - t0) * 1000.0
        return out

    def _logits(self, crops: np.ndarray, orientations: int) -> dict[str, np.ndarray]:
        """Every head's logits for (N, 2, S, S) crops, averaged over ``orientations``."""
        if len(crops) == 0:
            return {name: np.zeros((0, width), np.float32)
                    for name, width in self._heads.items()}
        views = oriented(crops, orientations)
        outs: dict[str, list[np.ndarray]] = {name: [] for name in self._heads}
        for start in range(0, len(views), CLASSIFIER_BATCH):
            got = self.backend.run_named(
                np.ascontiguousarray(views[start:start + CLASSIFIER_BATCH]))
            for key in outs:
                outs[key].append(got[key])
        return {k: mean_over_orientations(np.concatenate(v), orientations)
                for k, v in outs.items()}

    def finish(self, prepared: Hep2Prepared, outputs: dict[str, np.ndarray]) -> Hep2Result:
        """Cells with their classes, the specimen intensity, and the specimen rules."""
        t0 = time.perf_counter()
        assert prepared.cells is not None and prepared.cell_ids is not None
        assert prepared.brightness is not None
        h2 = self.cfg.hep2
        um = prepared.scale.um_per_px
        cells = _cells(prepared.cells, prepared.cell_ids, prepared.brightness, outputs, um,
                       h2.intensity.units_per_grey, h2.specimen.mitotic_probability)
        interphase = [c for c in cells if not c.mitotic]
        warnings = list(prepared.warnings)
        measured = [c.brightness / h2.intensity.units_per_grey for c in interphase
                    if not c.touches_edge] or [c.brightness / h2.intensity.units_per_grey
                                               for c in interphase]
        if measured:
            grey = float(np.median(measured))
        else:
            # A negative well may show no cell at all: the field itself is measured.
            grey = prepared.field_grey
            warnings.append("no interphase cell found: intensity measured on the whole field")
        units = brightness_mod.to_units(grey, h2.intensity)
        calibrated, why = intensity_is_calibrated(self.cfg.source, h2.intensity,
                                                  prepared.flat_sha256)
        if prepared.flat_unfit and not calibrated and intensity_is_calibrated(
                self.cfg.source, h2.intensity, self.flat_sha256)[0]:
            # Calibrated, but this image was not corrected: not a reason to recalibrate.
            why = "the flat field does not fit this image (another shape): relative units"
        if calibrated and prepared.exposure_pinned is False:
            # The config is right, but the camera did not take it (see the service log).
            calibrated, why = False, ("the camera did not take the pinned exposure and gain: "
                                      "relative units")
        if not calibrated:
            warnings.append(why)  # ends in ": relative units"
        call = call_specimen(cells, units, specimen=h2.specimen, intensity=h2.intensity,
                             um_per_px=um)
        prepared.base.timings_ms["rules"] = (time.perf_counter() - t0) * 1000.0
        common = dict(cells=tuple(cells), cells_interphase=len(interphase),
                      cells_mitotic=len(cells) - len(interphase), intensity_units=units,
                      intensity_level=call.intensity_level, intensity_calibrated=calibrated,
                      warnings=tuple(warnings + list(call.warnings)), created_at=_now())
        if call.positive is None:
            return replace(prepared.base, status="not_scorable", reason=call.reason,
                           reason_code=call.reason_code, **common)  # type: ignore[arg-type]
        return replace(prepared.base, status="scored", positive=call.positive,
                       patterns=call.patterns, **common)  # type: ignore[arg-type]

    def classify_cell_image(self, image: np.ndarray, source: str,
                            mask: np.ndarray | None = None) -> CellCall:
        """One single-cell image (the public datasets' form): its pattern and probabilities.

        ``mask``: the cell's mask from a companion file, when the dataset has one. The crop
        is cut at the configured scale when there is one (single_cell.py says how, and
        what is done without it). Raises CellRefused (an ImageRejected) when a gate refuses
        the image: the wrong stain, nothing in it, over-exposed, or a field rather than one
        cell (cell_quality.py); the gates' warnings join the call's.
        """
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        green = rgb[..., 1].astype(np.float32)
        declared = self._configured_scale()
        given = mask if mask is not None and mask.any() else None
        gate_scale = declared.um_per_px if declared is not None else (
            None if given is None else scale_from_mask(given))
        issues = cell_image_issues(rgb, gate_scale,
                                   self.cfg.hep2.cells,
                                   red_counterstain=self.cfg.hep2.stain.red_counterstain)
        fatal = next((i for i in issues if i.fatal), None)
        if fatal is not None:
            raise CellRefused(fatal.code, fatal.reason)
        cut = single_cell_crop(green, self.cfg.hep2.cells, mask=mask,
                               um_per_px=None if declared is None else declared.um_per_px,
                               scale_source="config" if declared is None else declared.source)
        out = self._logits(cut.crop[None], self.cfg.hep2.cells.orientations)
        probs = softmax(out[PATTERN_LOGITS])[0]
        mit = softmax(out[MITOSIS_LOGITS])[0]
        regions = sigmoid(out[REGION_LOGITS])[0] if REGION_LOGITS in out else None
        best = int(np.argmax(probs))
        return CellCall(file=source, pattern=NAMES[best], icap=pattern(NAMES[best]).icap,
                        confidence=float(probs[best]),
                        probabilities={n: float(p) for n, p in zip(NAMES, probs, strict=True)},
                        mitosis=MITOSIS_CLASSES[int(np.argmax(mit))], model=self.model,
                        regions={} if regions is None else _by_region(regions),
                        um_per_px=cut.um_per_px, um_per_px_source=cut.scale_source,
                        mask_source=cut.mask_source,
                        warnings=tuple(i.reason for i in issues) + cut.warnings)

    def refuse_input(self, source: str, seq: int, code: str, reason: str) -> Hep2Result:
        """The result for an input that never became a frame (corrupt or unreadable file)."""
        return Hep2Result(file=source, seq=seq, status="not_scorable", model=self.model,
                          image_width=0, image_height=0, reason=reason, reason_code=code,
                          created_at=_now())

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _refused(base: Hep2Result, reason: str, code: str,
                 warnings: list[str]) -> Hep2Result:
        return replace(base, status="not_scorable", reason=reason, reason_code=code,
                       warnings=tuple(warnings), created_at=_now())

    def _estimated_scale(self, green: np.ndarray) -> ScaleInfo:
        """The scale from the cells' size (scale.py), then checked by the classifier: the
        field's central cells are cut and classified at quarter-octave steps around it,
        and the scale whose crops the classifier reads most surely is kept. The size
        estimate cannot tell every pattern's objects apart (nucleus or whole cell); the
        classifier was trained on cells cut at their true size, so crops cut at the wrong
        one look like none it knows."""
        cfg = self.cfg.hep2.cells
        size = estimate_scale(green, cfg)
        if size.source != "estimated" or cfg.scale_search_steps == 0:
            return size
        candidates = candidate_scales(size.um_per_px, cfg.scale_search_steps)
        fits: list[float | None] = []
        for um in candidates:
            cells = segment_cells(green, um, cfg)
            ids = central_cells(cells, green.shape[:2], cfg.scale_search_cells)
            if len(ids) < SEARCH_MIN_CELLS:
                fits.append(None)  # too few whole cells at this scale to judge it
                continue
            fits.append(self.fit_at(green, cells.labels, ids, um))
        best = best_scale(candidates, fits, size.um_per_px, cfg.scale_search_prior)
        if best is None:
            return size
        return ScaleInfo(best, "estimated", (estimate_warning(best), *size.warnings[1:]))

    def _crop_scale(self, green: np.ndarray, cells: Hep2Cells, found: ScaleInfo) -> float:
        """The scale to cut the crops at: the one found earlier in this still view, the
        estimate (already the classifier's surest), or a declared scale's reading scale."""
        if isinstance(found, Hep2Scale) and found.crop_um_per_px is not None:
            return found.crop_um_per_px
        if found.source == "estimated":
            return found.um_per_px
        return self._reading_scale(green, cells, found.um_per_px)

    def _reading_scale(self, green: np.ndarray, cells: Hep2Cells, um_per_px: float) -> float:
        """The scale to cut a declared field's crops at: the declared one, except on a
        field too coarse for subtypes (10x), where it is the one the classifier reads the
        central cells most surely at, within ``crop_search_steps`` of it. There a cell is
        about 20 pixels wide and blurred, and the classifier reads some such cells surely
        only magnified (docs/hep2.md, "Scale")."""
        cfg = self.cfg.hep2.cells
        if cfg.crop_search_steps == 0 or not too_coarse_for_subtypes(
                um_per_px, self.cfg.hep2.specimen):
            return um_per_px
        ids = central_cells(cells, green.shape[:2], cfg.scale_search_cells)
        if len(ids) < SEARCH_MIN_CELLS:
            return um_per_px
        candidates = candidate_scales(um_per_px, cfg.crop_search_steps)
        fits: list[float | None] = [self.fit_at(green, cells.labels, ids, um)
                                    for um in candidates]
        return best_scale(candidates, fits, um_per_px, cfg.scale_search_prior) or um_per_px

    def fit_at(self, green: np.ndarray, labels: np.ndarray, ids: np.ndarray,
               um_per_px: float) -> float:
        """How surely the classifier reads the cells ``ids`` cut at ``um_per_px``
        (scale.classifier_fit). One orientation: the searches compare scales, they do not
        call the cells."""
        crops, _ = crops_for(green, labels, um_per_px, self.cfg.hep2.cells, only=ids)
        return classifier_fit(softmax(self._logits(crops, 1)[PATTERN_LOGITS]))

    def _declared_scale(self, frame: Frame) -> ScaleInfo | None:
        """µm/px the frame, the config or the objective declares (None: to be estimated)."""
        if frame.um_per_px:
            return ScaleInfo(frame.um_per_px, "frame", ())
        return self._configured_scale()

    def _configured_scale(self) -> ScaleInfo | None:
        """µm/px the config or the objective declares (None: not declared)."""
        optics = self.cfg.optics
        if optics.um_per_px > 0:
            return ScaleInfo(optics.um_per_px, "config", ())
        if optics.objective != "auto":
            return ScaleInfo(optics.objectives[optics.objective], "objective", ())
        return None


def nothing_in_view(q: Hep2Quality) -> str:
    """The reason a field with no cell and no light above the noise is refused."""
    return (f"nothing in view: no cell and no light above the sensor noise (brightest green "
            f"{q.signal:.1f} grey over a {q.background:.0f} background, noise floor "
            f"{q.noise_floor:.1f}): is the lamp on, the shutter open, the light path clear and "
            "a well in view? A negative well still shows its cells faintly: if this is one, "
            "lengthen the exposure until they show")


def model_heads(manifest: ModelManifest) -> dict[str, int]:
    """The classifier's outputs by name, with their widths: pattern and mitosis always, the
    region head where the manifest lists it (its regions in ``patterns.REGIONS`` order)."""
    heads = {PATTERN_LOGITS: len(NAMES), MITOSIS_LOGITS: len(MITOSIS_CLASSES)}
    listed = manifest.raw.get("outputs", {})
    if isinstance(listed, dict) and REGION_LOGITS in listed:
        got = tuple(listed[REGION_LOGITS].get("classes", ()))
        if got != REGIONS:
            raise ModelError(f"model {manifest.name}: its region head lists {list(got)}, "
                             f"this version reads {list(REGIONS)}")
        heads[REGION_LOGITS] = len(REGIONS)
    return heads


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic: independent yes / no probabilities (the region head)."""
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
    return out


def _by_region(probabilities: np.ndarray) -> dict[str, float]:
    """One cell's region-head probabilities by region name."""
    return {r: float(v) for r, v in zip(REGIONS, probabilities, strict=True)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits: the class probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _cells(seg: Hep2Cells, ids: np.ndarray, bright: np.ndarray,
           outputs: dict[str, np.ndarray], um_per_px: float, units_per_grey: float,
           mitotic_probability: float) -> list[Hep2Cell]:
    """Segmented cells with their classes, in source-image coordinates.

    A cell is a metaphase only when the mitosis head is sure of it: a false metaphase
    would take a voter away from the pattern call.
    """
    probs = softmax(outputs[PATTERN_LOGITS]) if len(ids) else np.zeros((0, len(NAMES)))
    mit = softmax(outputs[MITOSIS_LOGITS]) if len(ids) else np.zeros((0, 3))
    regions = (sigmoid(outputs[REGION_LOGITS]) if REGION_LOGITS in outputs and len(ids)
               else None)
    out = []
    for row, label in enumerate(ids):
        i = int(label) - 1
        p = probs[row]
        best = int(np.argmax(p))
        m = 0 if 1.0 - mit[row, 0] < mitotic_probability else 1 + int(np.argmax(mit[row, 1:]))
        value = float(bright[i]) if i < len(bright) and np.isfinite(bright[i]) else 0.0
        out.append(Hep2Cell(
            cell_id=int(label), x=float(seg.centroids[i, 0]), y=float(seg.centroids[i, 1]),
            area_um2=float(seg.areas_px[i]) * um_per_px**2,
            brightness=max(0.0, value) * units_per_grey, pattern=NAMES[best],
            confidence=float(p[best]),
            probabilities={n: float(v) for n, v in zip(NAMES, p, strict=True)},
            mitosis=MITOSIS_CLASSES[m], mitosis_confidence=float(mit[row, m]),
            touches_edge=bool(seg.touches_edge[i]), outline=_outline(seg, i, int(label)),
            regions={} if regions is None else _by_region(regions[row])))
    return out


def _outline(seg: Hep2Cells, index: int, label: int) -> tuple[tuple[int, int], ...]:
    """The cell's outer contour in image pixels, traced in its bounding box only."""
    x, y, w, h = (int(v) for v in seg.bboxes[index])
    window = (seg.labels[y:y + h, x:x + w] == label).astype(np.uint8)
    contours, _ = cv2.findContours(window, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                   offset=(x, y))
    if not contours:
        return ()
    return tuple((int(px), int(py)) for px, py in max(contours, key=len).reshape(-1, 2))


def _sharpness(quality: Hep2Quality) -> float | None:
    """The field's sharpness as reported (None: not measurable: no signal, too few cell
    pixels)."""
    return round(quality.focus, 3) if quality.focus > 0 else None


def _light_map(state: _FlatState, shape: tuple[int, ...]) -> np.ndarray | str | None:
    """The flat field's light at every pixel of a frame of ``shape``; None without a flat,
    the reason in words when the flat does not fit the frame (kept per size: a camera
    sends one or two)."""
    if state.flat is None:
        return None
    key = (int(shape[0]), int(shape[1]))
    maps = state.maps
    if key not in maps:
        if len(maps) >= _LIGHT_MAPS_KEPT:
            maps.clear()
        try:
            maps[key] = gain_map(state.flat, *key)
        except FlatFieldError as exc:
            maps[key] = str(exc)
    return maps[key]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
