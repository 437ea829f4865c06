"""How the HEp-2 assay holds up when the camera or microscope is not the generator's.

    python -m tools.stress_hep2 [--specimens 3] [--seed 780000] [--looks NAME ...]
                                [--out-dir build/stress_hep2] [--json FILE]

The generator (tools/synth/hep2_fields.py) draws a linear colour camera that records every
colour at every pixel, with little read noise, and JPEG only at quality 82-98 with
full-resolution chroma. Real eyepiece cameras differ. Each *look* below changes the
generated picture (tools/synth/camera_looks.py) or the scale the box is told, the way one
real difference would, and the same held-out specimens are scored under each, scale
declared, as tools/eval_hep2.py scores them:

- ``as_drawn``: the generator's picture, the baseline;
- ``monochrome``: a monochrome camera (its grey in all three channels);
- ``colour_mosaic``: a colour sensor's RGGB mosaic, demosaiced bilinearly, as a cheap
  colour camera does (green is sampled at half the pixels, red and blue at a quarter);
- ``gamma_2.2``: a camera left on its display tone curve (sRGB-like), not linear;
- ``mjpg_q75``: JPEG at quality 75 with the usual 4:2:0 chroma (a USB camera's MJPG);
- ``noisy``: 4 grey levels more read noise (a camera at high gain);
- ``soft_focus``: 0.4 µm more blur (a field a little off the focal plane);
- ``vignetting``: the light falling to half at the corners (a misaligned lamp);
- ``vignetting_flat``: the same, scored with a flat field the box made from three frames
  of a uniform slide seen through the same light (``appliance flat-iif``; the frames from
  ``camera_looks.uniform_slide``);
- ``long_pass``: a long-pass emission filter, so that the red pixels see half as much
  of the FITC light as the green;
- ``stray_light``: room light leaking in at the eyepiece, white, 10 grey at the left edge
  rising to 20 at the right;
- ``scale_+20%`` / ``scale_-20%``: the declared scale 20% above / below the true one (the
  camera adapter's magnification unlike the config's, or cells larger or smaller than
  the generator's 15-25 µm).

Per look: specimen pattern accuracy, positive / negative agreement, mixed specimens that
report both, cell mean class accuracy (single-pattern and negative specimens), fields not
scorable and why, and the intensity each specimen reads against its reading as drawn.
A chart of the first four goes to ``--out-dir``, and, when ``vignetting`` and
``vignetting_flat`` are both scored, a picture of the flat field with the intensities read
under the uneven light without and with it. Generated data only: this shows which
differences matter and how much, not how real slides read. Seeds from 780000 by default,
apart from every training, tuning and evaluation set.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.flat_field import flat_from_frames, gain_map, load_flat, save_flat
from appliance.config import with_overrides
from tools.eval_hep2 import (
    Look,
    SpecimenOutcome,
    cell_summary,
    evaluate,
    specimen_cases,
    specimen_summary,
    tool_config,
)
from tools.numbers import save_chart, write_numbers
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2Field

FIRST_SEED = 780_000
DEFAULT_SPECIMENS = 3
GAMMA = 2.2
MJPG_QUALITY = 75
EXTRA_NOISE_GREY = 4.0
EXTRA_BLUR_UM = 0.4
CORNER_LIGHT = 0.5
SCALE_ERROR = 1.2
LONG_PASS_RED = 0.5
STRAY_GREY = 20.0


def _noisy(rgb: np.ndarray, _um: float) -> np.ndarray:
    """The same extra noise in every field of a size (seeded by it): looks compare fields."""
    rng = np.random.default_rng(rgb.shape[0] * 10_007 + rgb.shape[1])
    return camera_looks.read_noise(rgb, EXTRA_NOISE_GREY, rng)


def _vignetted(rgb: np.ndarray, _um: float) -> np.ndarray:
    return camera_looks.vignetting(rgb, CORNER_LIGHT)


# name -> (change to the picture or None, declared scale / true scale)
LOOKS: dict[str, tuple[Look | None, float]] = {
    "as_drawn": (None, 1.0),
    "monochrome": (lambda rgb, _um: camera_looks.monochrome(rgb), 1.0),
    "colour_mosaic": (lambda rgb, _um: camera_looks.colour_mosaic(rgb), 1.0),
    "gamma_2.2": (lambda rgb, _um: camera_looks.tone_curve(rgb, GAMMA), 1.0),
    "mjpg_q75": (lambda rgb, _um: camera_looks.mjpg(rgb, MJPG_QUALITY), 1.0),
    "noisy": (_noisy, 1.0),
    "soft_focus": (lambda rgb, um: camera_looks.defocus(rgb, um, EXTRA_BLUR_UM), 1.0),
    "vignetting": (_vignetted, 1.0),
    "vignetting_flat": (_vignetted, 1.0),
    "long_pass": (lambda rgb, _um: camera_looks.long_pass(rgb, LONG_PASS_RED), 1.0),
    "stray_light": (lambda rgb, _um: camera_looks.stray_light(rgb, STRAY_GREY), 1.0),
    "scale_+20%": (None, SCALE_ERROR),
    "scale_-20%": (None, 1.0 / SCALE_ERROR),
}
BASELINE = "as_drawn"
# Looks scored with a flat field made through them: name -> the look the flat's frames see.
FLAT_FIELDED = {"vignetting_flat": "vignetting"}
FLAT_FRAMES = 3


def flat_field_file(look_name: str, height: int, width: int, out_dir: Path) -> Path:
    """Make the flat field of a look as a lab would: frames of a uniform slide through it
    (seeded, dust in other places each time), written beside the chart."""
    look, _ = LOOKS[look_name]
    assert look is not None
    rng = np.random.default_rng(FIRST_SEED)
    frames = [look(camera_looks.uniform_slide(height, width, rng), 1.0)
              for _ in range(FLAT_FRAMES)]
    path = out_dir / f"flat_field_{look_name}.json"
    save_flat(flat_from_frames(frames), path)
    return path


def intensity_ratios(outcomes: Sequence[SpecimenOutcome],
                     baseline: Sequence[SpecimenOutcome]) -> list[float]:
    """Each positive specimen's intensity under a look over its intensity as drawn."""
    base = {o.seed: o.intensity for o in baseline}
    return [o.intensity / b for o in outcomes
            if o.truth_positive and o.intensity is not None
            and (b := base.get(o.seed)) is not None and b > 0]


def look_summary(outcomes: Sequence[SpecimenOutcome], cells: dict[str, object],
                 baseline: Sequence[SpecimenOutcome] | None) -> dict[str, object]:
    """The figures of one look (see the module docstring)."""
    spec = specimen_summary(outcomes)
    refused = Counter(o.reason_code or (o.reason or "").split(":")[0] for o in outcomes
                      if o.status != "scored")
    ratios = intensity_ratios(outcomes, baseline) if baseline is not None else []
    return {
        "specimens": len(outcomes),
        "pattern_accuracy": spec["pattern_accuracy"],
        "positive_negative_agreement": spec["positive_negative_agreement"],
        "mixed_both_reported": spec["mixed_both_reported"],
        "cell_mean_class_accuracy": cells["mean_class_accuracy"],
        "detection_recall": cells["detection_recall"],
        "not_scorable": sum(refused.values()),
        "not_scorable_reasons": dict(refused),
        "intensity_vs_as_drawn_median": float(np.median(ratios)) if ratios else None,
        "intensity_vs_as_drawn_p05": float(np.percentile(ratios, 5)) if ratios else None,
        "intensity_vs_as_drawn_p95": float(np.percentile(ratios, 95)) if ratios else None,
    }


def _fmt(value: object, pattern: str = "{:.3f}") -> str:
    return "-" if not isinstance(value, (int, float)) else pattern.format(value)


def format_table(summaries: dict[str, dict[str, object]]) -> str:
    """One row per look."""
    head = (f"{'look':15s} {'pattern':>8s} {'pos/neg':>8s} {'mixed':>6s} {'cells':>6s} "
            f"{'found':>6s} {'refused':>8s} {'intensity (p5-p95)':>22s}")
    rows = [head, "-" * len(head)]
    for name, s in summaries.items():
        spread = ("-" if s["intensity_vs_as_drawn_median"] is None else
                  f"{_fmt(s['intensity_vs_as_drawn_median'], '{:.2f}')} "
                  f"({_fmt(s['intensity_vs_as_drawn_p05'], '{:.2f}')}-"
                  f"{_fmt(s['intensity_vs_as_drawn_p95'], '{:.2f}')})")
        rows.append(f"{name:15s} {_fmt(s['pattern_accuracy']):>8s} "
                    f"{_fmt(s['positive_negative_agreement']):>8s} "
                    f"{_fmt(s['mixed_both_reported'], '{:.2f}'):>6s} "
                    f"{_fmt(s['cell_mean_class_accuracy']):>6s} "
                    f"{_fmt(s['detection_recall']):>6s} "
                    f"{s['not_scorable']:>8d} {spread:>22s}")
        reasons = s["not_scorable_reasons"]
        if isinstance(reasons, dict) and reasons:
            rows.append(" " * 16 + "refused: " + ", ".join(f"{k} {v}"
                                                            for k, v in reasons.items()))
    return "\n".join(rows)


def plot_looks(summaries: dict[str, dict[str, object]], path: Path) -> None:
    """Grouped bars: pattern accuracy, positive / negative, mixed both, cells, per look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("pattern_accuracy", "specimen pattern"), ("positive_negative_agreement",
            "positive / negative"), ("mixed_both_reported", "mixed: both"),
            ("cell_mean_class_accuracy", "cell mean class acc."))
    names = list(summaries)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(names) + 2), 4.2))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        values = [float(v) if isinstance(v := summaries[n][key], (int, float)) else 0.0
                  for n in names]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    lowest = min((float(v) for n in names for key, _l in keys
                  if isinstance(v := summaries[n][key], (int, float))), default=1.0)
    ax.set_ylim(min(0.5, lowest - 0.05), 1.02)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("share right")
    ax.set_title("HEp-2 assay under camera and microscope looks the generator does not draw")
    ax.legend(loc="lower left", fontsize=8)
    save_chart(fig, path, dpi=110)


def plot_flat_field(flat_path: Path, uneven: Sequence[float], corrected: Sequence[float],
                    path: Path) -> None:
    """The flat field the box made (its relative light), and each positive specimen's
    intensity over its reading as drawn, under the uneven light without and with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat, _sha = load_flat(flat_path)
    light = gain_map(flat, flat.height, flat.width)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    shown = left.imshow(light, cmap="viridis", vmin=min(0.4, float(light.min())), vmax=1.0)
    contours = left.contour(light, levels=[0.6, 0.7, 0.8, 0.9], colors="white",
                            linewidths=0.7)
    left.clabel(contours, fmt="%.1f", fontsize=7)
    left.set_title(f"flat field from {flat.frames} frames of a uniform slide", fontsize=9)
    left.set_axis_off()
    fig.colorbar(shown, ax=left, fraction=0.04, label="relative light")
    bins = np.linspace(0.6, 1.2, 31)
    right.hist(uneven, bins=bins, alpha=0.7, label=f"uneven light (median "
               f"{np.median(uneven):.2f})" if len(uneven) else "uneven light")
    right.hist(corrected, bins=bins, alpha=0.7, label=f"with the flat field (median "
               f"{np.median(corrected):.2f})" if len(corrected) else "with the flat field")
    right.axvline(1.0, color="grey", lw=0.8, ls="--")
    right.set_xlabel("specimen intensity / intensity as drawn")
    right.set_ylabel("positive specimens")
    right.legend(fontsize=8)
    right.set_title("the same specimens, light at half in the corners", fontsize=9)
    save_chart(fig, path, dpi=110)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.stress_hep2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specimens", type=int, default=DEFAULT_SPECIMENS,
                   help="specimens of each kind (as tools.eval_hep2 --specimens)")
    p.add_argument("--seed", type=int, default=FIRST_SEED, help="first specimen seed")
    p.add_argument("--looks", nargs="+", choices=list(LOOKS), default=list(LOOKS),
                   help="the looks to score (as_drawn is always scored first)")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--models-dir", default="", help="default: the shipped models/")
    p.add_argument("--config", type=Path, default=None, help="score with this config file")
    p.add_argument("--out-dir", type=Path, default=Path("build/stress_hep2"))
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.specimens < 1:
        p.error(f"--specimens must be at least 1, got {args.specimens}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Score the specimens under every look; print, chart and (optionally) save."""
    args = parse_args(argv)
    cfg = tool_config(args)
    if cfg is None:
        return 2
    cases = specimen_cases(args.specimens, first_seed=args.seed)
    names = [BASELINE] + [n for n in args.looks if n != BASELINE]
    summaries: dict[str, dict[str, object]] = {}
    t0 = time.perf_counter()
    with Hep2Assay.from_config(cfg) as assay:
        model = assay.model
        baseline: list[SpecimenOutcome] | None = None
        scored: dict[str, list[SpecimenOutcome]] = {}
        flats: dict[str, Path] = {}
        # Each specimen is generated once and seen through every look (about 0.5 GB for
        # the 63 specimens of --specimens 3; a look never changes the drawn field).
        fields: dict[int, Hep2Field] = {}
        for name in names:
            look, factor = LOOKS[name]
            if name in FLAT_FIELDED:
                spec = cases[0].spec
                flat = flats[name] = flat_field_file(FLAT_FIELDED[name], spec.height,
                                                     spec.width, args.out_dir)
                flat_cfg = with_overrides(cfg, {"hep2.intensity.flat_field_file": str(flat)})
                with Hep2Assay.from_config(flat_cfg) as flat_assay:
                    outcomes, tally = evaluate(flat_assay, cases, progress=True, look=look,
                                               declared_factor=factor, desc=name,
                                               fields=fields)
            else:
                outcomes, tally = evaluate(assay, cases, progress=True, look=look,
                                           declared_factor=factor, desc=name, fields=fields)
            summaries[name] = look_summary(outcomes, cell_summary(tally), baseline)
            baseline = outcomes if baseline is None else baseline
            scored[name] = outcomes
    seconds = time.perf_counter() - t0
    print(format_table(summaries))
    print(f"{len(cases)} specimens (seeds {cases[0].spec.seed}..{cases[-1].spec.seed}) x "
          f"{len(names)} looks in {seconds:.0f} s; model {model.name} {args.precision}")
    chart = args.out_dir / "hep2_looks.png"
    plot_looks(summaries, chart)
    print(f"chart: {chart}")
    for name, flat in flats.items():
        uneven = scored.get(FLAT_FIELDED[name])
        if uneven is not None and baseline is not None:
            picture = args.out_dir / f"hep2_flat_field_{FLAT_FIELDED[name]}.png"
            plot_flat_field(flat, intensity_ratios(uneven, baseline),
                            intensity_ratios(scored[name], baseline), picture)
            print(f"flat field: {picture}")
    if args.json is not None:
        write_numbers(args.json, {
            "run": {"specimens_per_class": args.specimens, "first_seed": args.seed,
                    "precision": args.precision, "model": model.name,
                    "sha256": model.sha256, "seconds": round(seconds, 1),
                    "config_sha256": cfg.sha256()},
            "looks": summaries})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
