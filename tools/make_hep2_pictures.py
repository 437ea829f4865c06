"""The HEp-2 pictures in the docs, made by the real assay on generated fields.

* ``docs/img/hep2-overlay-homogeneous.png``: the stored overlay of an AC-1 field with
  metaphases (magenta), its banner and the metaphase evidence;
* ``docs/img/hep2-live-mixed.png``: the live display on a mixed specimen;
* ``docs/img/hep2-overlay-nucleolar-10x.png``: a nucleolar field at 10x, whose subtype
  call carries the warning to report the group or confirm at a higher magnification;
* ``docs/img/hep2-overlay-faint-second.png``: a weak AC-1 + AC-8 field (both in every
  cell) whose nucleoli the region head finds although AC-1 takes most of the votes;
* ``docs/img/hep2-overlay-counterstain-mono.png``: a negative well with a red counterstain
  that a monochrome camera records through a long-pass filter, refused as
  ``unstained_light`` instead of being called positive;
* ``docs/img/hep2-live-case.png``: the live display in a HEp-2 case during a titration:
  the 1:320 field's own call, then the case's call so far (the 1:80 screening well's,
  with the titres the wells read up to now) and the kit controls' state (docs/cases.md,
  "HEp-2 cases");
* ``docs/examples/hep2-case-report.pdf`` and ``.html``: that case's report once its
  1:640 well is read and it is closed (its negative kit control still unchecked);
* ``docs/img/hep2-crops-by-objective.png``: the crops the classifier sees of the
  few-spots patterns (nuclear dots, nucleolar) at 40x, 20x and 10x, cut as the assay cuts
  them: why their subtypes are read well at 20x and 40x and not at 10x;
* ``docs/img/hep2-overlay-soft-focus.png``: a fine speckled field 1 µm out of focus
  that passes the focus gate: its cells split between fine speckled, dense fine speckled
  and homogeneous, the call is still AC-4, and the soft-focus and low-confidence warnings
  ask for a look (docs/hep2.md, "Focus");
* ``docs/img/hep2-live-past-focus.png``: the live display on a fine speckled field held
  0.75 µm past the best focus, which the user had just turned through: the view is
  reported with the warning to focus back (docs/pipeline.md, "Report-once rules", 5);
* ``docs/img/hep2-control-chart.png``: a kit control's Levey-Jennings chart as
  ``appliance case controls --chart`` draws it, from the box's readings of 27 generated
  AC-1 control wells on a calibrated microscope: 20 runs in control, then 7 with the
  lamp brighter each run.

    python -m tools.make_hep2_pictures [--only control-chart | soft-focus | past-focus]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.control_trend import ControlReading, control_trend
from appliance.assays.hep2.patterns import BY_NAME, NAMES
from appliance.assays.hep2.well import call_well
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.outputs.display.live import LiveStatus, compose_live
from appliance.outputs.hep2_overlay import render_overlay
from appliance.outputs.qc_chart import render_chart
from appliance.outputs.report.hep2_html import write_hep2_report
from appliance.outputs.store import ResultStore
from appliance.pipeline.reporting import sharper_before_warning, with_warning
from appliance.pipeline.stability import StillnessTracker
from appliance.service.cases import CaseWorkflow
from appliance.service.hep2_case_report import hep2_report_data
from appliance.service.hep2_case_summary import Hep2CaseSummary
from appliance.service.recorder import Recorder
from tools.hep2_dataset import field_cell_crops
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

REPO = Path(__file__).resolve().parent.parent
IMG = REPO / "docs" / "img"


def _write(name: str, rgb: np.ndarray) -> None:
    path = IMG / name
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    print(path.relative_to(REPO))


# The crop sheet: the patterns told apart by a few bright spots in the nucleus, and the
# objectives' pixel sizes (µm at the specimen) it compares.
SPOTS = ("multiple_nuclear_dots", "few_nuclear_dots", "nucleolar_homogeneous",
         "nucleolar_clumpy", "nucleolar_punctate")
OBJECTIVES = (("40x", 0.3), ("20x", 0.5), ("10x", 0.95))
PER_GROUP = 4
TILE = 128  # a 64 px crop shown at twice its size
GROUP_W = PER_GROUP * TILE + 16  # one objective's crops and the gap after them
LABEL_W = 230
HEADER_H = 40


def _interphase_crops(name: str, um_per_px: float, cfg: Config, count: int) -> list[np.ndarray]:
    """The signal channel of ``count`` interphase crops of one pattern, cut from bright
    generated fields (no defocus or bleaching) as the assay's segmentation finds them."""
    out: list[np.ndarray] = []
    seed = 62_000 + 100 * NAMES.index(name) + int(um_per_px * 10)
    while len(out) < count:
        field = generate_hep2_field(Hep2FieldSpec(
            seed=seed, width=640, height=480, um_per_px=um_per_px, patterns=((name, 1.0),),
            intensity=120.0, defocus_um=0.0, photobleaching=0.0))
        crops = field_cell_crops(field, cfg.hep2.cells, np.random.default_rng(seed),
                                 (name,), segmented=True)
        out += [c[0] for c, m in zip(crops.crops, crops.mitosis, strict=True) if m == 0]
        seed += 1
    return out[:count]


def crop_sheet(cfg: Config) -> np.ndarray:
    """RGB sheet: a row per few-spots pattern, a group of crops per objective."""
    width = LABEL_W + len(OBJECTIVES) * GROUP_W
    sheet = np.zeros((HEADER_H + len(SPOTS) * TILE, width, 3), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for g, (objective, um) in enumerate(OBJECTIVES):
        x0 = LABEL_W + g * GROUP_W
        cv2.putText(sheet, f"{objective} ({um:g} um/px)", (x0 + 8, 28), font, 0.8,
                    (255, 255, 255), 2, cv2.LINE_AA)
        for r, name in enumerate(SPOTS):
            for k, crop in enumerate(_interphase_crops(name, um, cfg, PER_GROUP)):
                # One fixed display scale (not each crop's own), so brightness compares.
                grey = (np.clip(crop / 1.2, 0.0, 1.0) * 255).astype(np.uint8)
                tile = cv2.resize(grey, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
                y, x = HEADER_H + r * TILE, x0 + k * TILE
                sheet[y:y + TILE, x:x + TILE, 1] = tile  # FITC green
    for r, name in enumerate(SPOTS):
        y = HEADER_H + r * TILE + TILE // 2
        cv2.putText(sheet, BY_NAME[name].icap, (10, y - 6), font, 0.8, (255, 255, 255), 2,
                    cv2.LINE_AA)
        cv2.putText(sheet, name.replace("_", " "), (10, y + 22), font, 0.5, (200, 200, 200),
                    1, cv2.LINE_AA)
    return sheet


def counterstained_negative() -> np.ndarray:
    """A negative well whose conjugate carries a red counterstain, seen by a monochrome
    camera through a long-pass emission filter (tools.probe_hep2_counterstain's look)."""
    neg = generate_hep2_field(Hep2FieldSpec(
        seed=61_007, width=800, height=600, um_per_px=0.5, patterns=(("negative", 1.0),),
        intensity=6.0, photobleaching=0.0))
    lp = camera_looks.long_pass(neg.image, 0.3)
    red = camera_looks.red_counterstain(lp, neg.cell_labels, neg.nucleus_labels, 0.5, 40.0,
                                        0.05, np.random.default_rng(1))
    return camera_looks.monochrome_sum(red, 0.6)


# The titration of the live-case picture: (dilution, brightness the generator draws the
# serum at: half for each doubling, a model of dilution, not a measured serum).
TITRATION = ((80, 160.0), (80, 160.0), (160, 80.0), (320, 40.0), (640, 16.0))
LIVE_AT = 3  # the picture shows the 1:320 field, the fourth patient field


def live_in_a_case(assay: Hep2Assay, cfg: Config) -> np.ndarray:
    """The live display during the titration of a centromere + Golgi-like serum, in a case
    whose positive kit control was checked and whose negative one was not; the case's
    report once its last well (1:640) is read."""
    shown = []
    with tempfile.TemporaryDirectory() as tmp:
        case_cfg = with_overrides(cfg, {"store.path": str(Path(tmp) / "r.sqlite")})
        with ResultStore(case_cfg.store.path) as store:
            cases = CaseWorkflow(case_cfg, store)
            recorder = Recorder(store=store, config_sha256=case_cfg.sha256(), overlay_dir=None,
                                out=io.StringIO(), after_store=[cases.after_field],
                                companion_for=lambda r, img: cases.companion(
                                    r, img, source="pipeline"))

            def show(seq: int, patterns: tuple[tuple[str, float], ...], seed: int,
                     intensity: float) -> None:
                image = generate_hep2_field(Hep2FieldSpec(
                    seed=seed, width=1024, height=768, um_per_px=0.5, patterns=patterns,
                    intensity=intensity)).image
                result = assay.score(Frame(image=image, seq=seq, timestamp=0.0,
                                           source="camera", um_per_px=0.5))
                recorder.record(result, image)
                shown.append((image, result, cases.live()))

            cases.start_case("S26-0412-W3", source="mqtt")
            cases.start_control("AC-1", source="mqtt")
            show(1, (("homogeneous", 1.0),), 61_010, 120.0)
            cases.end_control(source="mqtt")
            for k, (dilution, intensity) in enumerate(TITRATION):
                cases.set_dilution(dilution, source="mqtt")
                show(k + 2, (("centromere", 0.5), ("golgi", 0.5)), 61_011 + k, intensity)
            cases.end_case(None, source="mqtt")
            summary = cases.summary("S26-0412-W3", thumbnails=True)
            assert isinstance(summary, Hep2CaseSummary)
            data = hep2_report_data(summary, device_id="scope-3",
                                    config_sha256=case_cfg.sha256())
            for path in write_hep2_report(data, REPO / "docs" / "examples",
                                          "hep2-case-report"):
                print(path.relative_to(REPO))
    image, result, live = shown[1 + LIVE_AT]
    status = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                        reported=True, result_in_view=True, capture_fps=30.0,
                        processed_fps=3.9, latency_ms=320.0, case=live)
    return compose_live(image, result, status, size=(1280, 720))


# The kit control's chart: the box's readings of generated AC-1 control wells, one per
# run, on a microscope whose exposure and gain are pinned and calibrated.
CHART_CALIBRATION = {"source.exposure_us": 20000.0, "source.gain": 2.0,
                     "hep2.intensity.exposure_ms": 20.0, "hep2.intensity.gain": 2.0}
CHART_BASELINE_RUNS, CHART_DRIFT_RUNS = 20, 7
CHART_STAIN = 110.0  # the generator's staining level of the control serum
CHART_RUN_CV = 0.06  # run-to-run variation of the staining
CHART_DRIFT = 0.05  # the lamp brighter by this share each drifting run
CHART_FIELDS = 3  # fields read per control well


def control_chart() -> tuple[np.ndarray, list[float]]:
    """A kit control's chart from the box's own readings (and the readings): 20 runs in
    control, then 7 runs with the lamp brighter each run."""
    cfg = with_overrides(Config(), {"assay": "hep2", **CHART_CALIBRATION})
    rng = np.random.default_rng(991_500)
    levels = [CHART_STAIN * (1.0 + CHART_RUN_CV * float(z))
              for z in rng.standard_normal(CHART_BASELINE_RUNS)]
    levels += [CHART_STAIN * (1.0 + CHART_DRIFT) ** k for k in range(1, CHART_DRIFT_RUNS + 1)]
    readings: list[ControlReading] = []
    units: list[float] = []
    with Hep2Assay.from_config(cfg) as assay:
        for i, level in enumerate(levels):
            # A control well is read as the box reads one: a few fields, pooled.
            fields = []
            for k in range(CHART_FIELDS):
                well = generate_hep2_field(Hep2FieldSpec(
                    seed=991_510 + CHART_FIELDS * i + k, width=640, height=480, um_per_px=0.5,
                    patterns=(("homogeneous", 1.0),), intensity=level,
                    camera_seed=991_509,  # one box: the same camera every run
                    defocus_um=0.0))  # focused, as the lab does before it reads a control
                fields.append(assay.score(Frame(image=well.image, seq=k + 1, timestamp=0.0,
                                                source=f"run-{i + 1}-{k + 1}.png",
                                                um_per_px=0.5)))
            pooled = call_well(fields, cfg.hep2)
            if not pooled.scored or pooled.intensity_units is None:
                raise RuntimeError(f"control run {i + 1} was not scored: {pooled.reason}")
            units.append(round(pooled.intensity_units, 1))
            readings.append(ControlReading(
                decided_at=f"2026-11-{1 + i:02d}T08:00:00.000+00:00", case_id=f"run-{i + 1}",
                expected="homogeneous", valid=True, units=units[-1],
                calibrated=pooled.intensity_calibrated))
    trend = control_trend(readings, "homogeneous")
    picture = render_chart(trend, f"Kit control AC-1 nuclear homogeneous: {len(readings)} "
                                  "readings")
    return picture, units


def soft_focus(assay: Hep2Assay) -> np.ndarray:
    """The stored overlay of a fine speckled field blurred by 1 µm RMS, which the focus
    gate passes, with its warnings."""
    blurred = generate_hep2_field(Hep2FieldSpec(
        seed=1_220_001, width=960, height=720, um_per_px=0.4,
        patterns=(("fine_speckled", 1.0),), intensity=120.0, defocus_um=1.0))
    result = assay.score(Frame(image=blurred.image, seq=6, timestamp=0.0,
                               source="ac4-soft-focus.png", um_per_px=0.4))
    return render_overlay(blurred.image, result)


def past_best_focus(assay: Hep2Assay, cfg: Config) -> np.ndarray:
    """The live display on a field held 0.75 µm past the best focus it was turned through:
    the real tracker sees the frames (0.3 s sharp, then held soft), and its verdict gives
    the result the pipeline's warning."""
    spec = Hep2FieldSpec(seed=1_220_101, width=960, height=720, um_per_px=0.5,
                         patterns=(("fine_speckled", 1.0),), intensity=110.0, defocus_um=0.0)
    sharp = generate_hep2_field(spec).image
    soft = generate_hep2_field(replace(spec, defocus_um=0.75)).image
    tracker = StillnessTracker(cfg.stability)
    rng = np.random.default_rng(1_220_102)
    frames = [sharp] * 3 + [soft] * 12  # 10 frames a second
    for i, image in enumerate(frames):
        noisy = np.clip(image + rng.normal(0.0, 1.0, image.shape), 0, 255).astype(np.uint8)
        state = tracker.update(noisy, i / 10.0)
    warning = sharper_before_warning(state, cfg.stability.sharper_factor)
    if warning is None:
        raise RuntimeError(f"the held view was not warned about: {state}")
    result = assay.score(Frame(image=soft, seq=7, timestamp=0.0, source="camera",
                               um_per_px=0.5))
    status = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                        reported=True, result_in_view=True, capture_fps=30.0,
                        processed_fps=3.9, latency_ms=320.0)
    return compose_live(soft, with_warning(result, warning), status, size=(1280, 720))


def main() -> int:
    """Write the pictures (``--only NAME``: that one alone)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=("control-chart", "soft-focus", "past-focus"),
                    help="write this picture only")
    args = ap.parse_args()
    if args.only in (None, "control-chart"):
        chart, units = control_chart()
        _write("hep2-control-chart.png", chart)
        print("control readings:", ", ".join(f"{u:g}" for u in units))
    cfg = with_overrides(Config(), {"assay": "hep2"})
    if args.only in (None, "soft-focus"):
        with Hep2Assay.from_config(cfg) as assay:
            _write("hep2-overlay-soft-focus.png", soft_focus(assay))
    if args.only in (None, "past-focus"):
        with Hep2Assay.from_config(cfg) as assay:
            _write("hep2-live-past-focus.png", past_best_focus(assay, cfg))
    if args.only:
        return 0
    with Hep2Assay.from_config(cfg) as assay:
        ac1 = generate_hep2_field(Hep2FieldSpec(
            seed=61_001, width=960, height=720, um_per_px=0.5,
            patterns=(("homogeneous", 1.0),), intensity=110.0, mitotic_fraction=0.08))
        result = assay.score(Frame(image=ac1.image, seq=1, timestamp=0.0,
                                   source="ac1.png", um_per_px=0.5))
        _write("hep2-overlay-homogeneous.png", render_overlay(ac1.image, result))
        mixed = generate_hep2_field(Hep2FieldSpec(
            seed=61_002, width=1024, height=768, um_per_px=0.5,
            patterns=(("centromere", 0.5), ("cyto_fibrillar", 0.5)), intensity=120.0))
        result = assay.score(Frame(image=mixed.image, seq=2, timestamp=0.0,
                                   source="camera", um_per_px=0.5))
        status = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                            reported=True, result_in_view=True, capture_fps=30.0,
                            processed_fps=3.9, latency_ms=320.0)
        _write("hep2-live-mixed.png", compose_live(mixed.image, result, status,
                                                   size=(1280, 720)))
        nucleolar = generate_hep2_field(Hep2FieldSpec(
            seed=61_003, width=800, height=600, um_per_px=0.95,
            patterns=(("nucleolar_homogeneous", 1.0),), intensity=120.0))
        result = assay.score(Frame(image=nucleolar.image, seq=3, timestamp=0.0,
                                   source="ac8-10x.png", um_per_px=0.95))
        _write("hep2-overlay-nucleolar-10x.png", render_overlay(nucleolar.image, result))
        faint = generate_hep2_field(Hep2FieldSpec(
            seed=61_006, width=960, height=720, um_per_px=0.5, combined=True,
            patterns=(("homogeneous", 0.5), ("nucleolar_homogeneous", 0.5)), intensity=45.0))
        result = assay.score(Frame(image=faint.image, seq=4, timestamp=0.0,
                                   source="ac1-ac8.png", um_per_px=0.5))
        _write("hep2-overlay-faint-second.png", render_overlay(faint.image, result))
        mono = counterstained_negative()
        result = assay.score(Frame(image=mono, seq=5, timestamp=0.0,
                                   source="negative-red-mono.png", um_per_px=0.5))
        _write("hep2-overlay-counterstain-mono.png", render_overlay(mono, result))
        _write("hep2-live-case.png", live_in_a_case(assay, cfg))
    _write("hep2-crops-by-objective.png", crop_sheet(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
