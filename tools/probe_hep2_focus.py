"""How much blur the HEp-2 classifier tolerates, and whether the focus gate stops the rest.

    python -m tools.probe_hep2_focus [--part cells|fields|both|looks] [--per-class 20]
        [--specimens 2] [--scales 0.25,0.5,0.9] [--defocus 0,0.5,1,1.5,2,3] [--json FILE]
        [--out PNG]
    python -m tools.probe_hep2_focus --replot FILE --out PNG

The generator draws a field with a defocus (Gaussian blur at the specimen, in µm RMS,
beyond the objective's own; its evaluation sets draw 0-0.5 µm). For each defocus:

- **cells** (single-cell images, `appliance score --assay hep2 --cell`, which judges no
  focus): held-out cells (seeds from 997000, cut as the cell folder cuts them: bounding box,
  15% margin, the cell's mask) of one-pattern fields at each scale; the box told the scale
  and given the mask. Printed: mean class accuracy over the 17 classes, and the field's
  sharpness measure on the cell (``quality._focus`` with its mask at the known scale):
  5th / 50th / 95th percentile and the share below the field's limit ``quality.MIN_FOCUS``.
- **fields** (the field path, whose focus gate refuses ``out_of_focus``): held-out
  single-pattern and negative specimens (seeds from 1200000, 800x600, a random 0.25-1 µm/px,
  scale declared). Printed: the share refused as out of focus, and of the fields scored
  the specimen pattern accuracy, positive / negative agreement and the cells' mean class
  accuracy, with the fields' sharpness percentiles (also judged at 1 µm/px, a variant).

- **looks** (sharp fields as drawn, through the cameras `tools.stress_hep2` draws: how
  often a sharp field warns of soft focus or low confidence, or is refused as out of
  focus, when the camera differs from the generator's): the stress set's specimens
  (seeds from 780000), scale declared.

``--out`` charts accuracy and refusals against the blur (``--replot`` redraws the chart
from a ``--json`` file without measuring again).

The same cells and specimens are drawn at every defocus: only the blur differs. Generated
data only: a real camera's blur and noise may read otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2 import quality
from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.cell_quality import CellRefused
from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.specimen import LOW_CONFIDENCE
from appliance.config import Config, with_overrides
from tools.eval_hep2 import (
    CellTally,
    mean_class_accuracy,
    score_generated,
    score_specimen,
    specimen_cases,
)
from tools.numbers import save_chart
from tools.synth.hep2_cell_folder import HEIGHT, WIDTH, cut_cell
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

CELL_SEED = 997_000  # + 50000 per scale; shared with probe_hep2_carried_scale (held out)
FIELD_SEED = 1_200_000
CELLS_PER_FIELD = 12
# The camera looks of tools.stress_hep2 asked in --part looks (not the flat-fielded one,
# which needs a flat field made through it).
LOOK_NAMES = ("as_drawn", "monochrome", "colour_mosaic", "gamma_2.2", "mjpg_q75", "noisy",
              "soft_focus", "vignetting", "long_pass", "stray_light", "scale_+20%",
              "scale_-20%")


def cells_at(per_class: int, um_per_px: float, defocus_um: float, first_seed: int
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(class index, green, mask) of ``per_class`` whole interphase cells of each class."""
    seed = first_seed
    for k, name in enumerate(NAMES):
        written = 0
        while written < per_class:
            f = generate_hep2_field(Hep2FieldSpec(
                seed=seed, width=WIDTH, height=HEIGHT, um_per_px=um_per_px,
                patterns=((name, 1.0),), defocus_um=defocus_um))
            whole = [c for c in f.cells if not c.touches_edge and not c.mitotic]
            for cell in whole[:min(CELLS_PER_FIELD, per_class - written)]:
                green, mask = cut_cell(f.image, f.cell_labels, cell.cell_id, 0.15)
                yield k, green, mask
                written += 1
            seed += 1


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    """5th / 50th / 95th percentile of the measured (non-zero) sharpness values."""
    s = np.asarray(values, dtype=np.float64)
    measured = s[s > 0]
    if not measured.size:
        return {"p5": 0.0, "p50": 0.0, "p95": 0.0, "not_measured": 1.0, "below_limit": 0.0}
    return {"p5": float(np.percentile(measured, 5)), "p50": float(np.median(measured)),
            "p95": float(np.percentile(measured, 95)), "not_measured": float(np.mean(s <= 0)),
            "below_limit": float(np.mean((s > 0) & (s < quality.MIN_FOCUS)))}


def probe_cells(per_class: int, scales: Sequence[float], defocus: Sequence[float]
                ) -> list[dict[str, float]]:
    """One row per (scale, defocus): the single-cell accuracy and the cells' sharpness."""
    rows = []
    base = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(base) as first:
        for i, scale in enumerate(scales):
            told = Hep2Assay(with_overrides(base, {"optics.um_per_px": scale}), first.manifest,
                             first.backend, first.model.precision)
            for blur in defocus:
                confusion = np.zeros((len(NAMES), len(NAMES) + 1), np.int64)
                sharpness = []
                for k, green, mask in tqdm(cells_at(per_class, scale, blur,
                                                    CELL_SEED + i * 50_000),
                                           total=per_class * len(NAMES),
                                           desc=f"cells {scale:g} um/px, defocus {blur:g} um"):
                    sharpness.append(quality._focus(green.astype(np.float32), mask, scale))
                    try:
                        call = told.classify_cell_image(green, "probe", mask=mask)
                    except CellRefused:
                        confusion[k, len(NAMES)] += 1  # a refusal counts as misread
                        continue
                    confusion[k, NAMES.index(call.pattern)] += 1
                row = {"um_per_px": scale, "defocus_um": blur,
                       "mean_class_accuracy": mean_class_accuracy(confusion.tolist()),
                       **_percentiles(sharpness)}
                rows.append(row)
                print(f"cells {scale:5g} um/px  defocus {blur:4g} um  accuracy "
                      f"{row['mean_class_accuracy']:.3f}  sharpness p5/p50/p95 "
                      f"{row['p5']:.2f}/{row['p50']:.2f}/{row['p95']:.2f}  below "
                      f"{quality.MIN_FOCUS}: {row['below_limit']:.2f}", flush=True)
    return rows


def probe_fields(specimens: int, defocus: Sequence[float],
                 per_field: list[tuple[float, float, str, bool, float, float]] | None = None
                 ) -> list[dict[str, object]]:
    """One row per defocus: what the field path refuses and how well it reads the rest.

    ``per_field`` receives (defocus, µm/px, status, pattern right, sharpness, sharpness
    judged at 1 µm/px) of every field, for choosing a limit."""
    per_field = [] if per_field is None else per_field
    rows: list[dict[str, object]] = []
    cfg = with_overrides(Config(), {"assay": "hep2"})
    cases = [c for c in specimen_cases(specimens, first_seed=FIELD_SEED) if c.kind != "mixed"]
    with Hep2Assay.from_config(cfg) as assay:
        for blur in defocus:
            tally = CellTally()
            outcomes, sharpness, coarse = [], [], []
            for seq, case in enumerate(tqdm(cases, desc=f"fields, defocus {blur:g} um")):
                blurred = replace(case, spec=replace(case.spec, defocus_um=blur))
                kept: dict[int, Hep2Field] = {}
                outcomes.append(score_specimen(assay, blurred, seq, tally,
                                               cfg.hep2.intensity, fields=kept))
                truth = kept[blurred.spec.seed]
                sharpness.append(quality.measure_hep2_quality(
                    truth.image, truth.um_per_px, cfg.hep2.cells).focus)
                green = truth.image[..., 1].astype(np.float32)
                mask, _ = quality.foreground_mask(green, truth.um_per_px, cfg.hep2.cells)
                coarse.append(quality._focus(green, mask, truth.um_per_px, 1.0))
                per_field.append((blur, truth.um_per_px, outcomes[-1].status,
                                  outcomes[-1].pattern_correct, sharpness[-1], coarse[-1]))
            scored = [o for o in outcomes if o.status == "scored"]
            single = [o for o in scored if o.kind == "single"]
            at_1um = _percentiles(coarse)
            row = {
                "defocus_um": blur, "fields": len(outcomes),
                "refused_out_of_focus": float(np.mean(
                    [o.reason_code == "out_of_focus" for o in outcomes])),
                "refused_other": float(np.mean([o.status != "scored"
                                                and o.reason_code != "out_of_focus"
                                                for o in outcomes])),
                "pattern_accuracy_scored": (float(np.mean([o.pattern_correct for o in single]))
                                            if single else 0.0),
                "positive_negative_scored": (float(np.mean([o.sign_correct for o in scored]))
                                             if scored else 0.0),
                "cell_mean_class_accuracy": mean_class_accuracy(tally.confusion),
                **_percentiles(sharpness),
                "at_1um": at_1um,
            }
            rows.append(row)
            print(f"fields defocus {blur:4g} um  refused out of focus "
                  f"{row['refused_out_of_focus']:.2f} (other {row['refused_other']:.2f})  "
                  f"of the scored: pattern {row['pattern_accuracy_scored']:.3f}, pos/neg "
                  f"{row['positive_negative_scored']:.3f}, cells "
                  f"{row['cell_mean_class_accuracy']:.3f}  sharpness p5/p50/p95 "
                  f"{row['p5']:.2f}/{row['p50']:.2f}/{row['p95']:.2f}; judged at 1 um/px "
                  f"{at_1um['p5']:.2f}/{at_1um['p50']:.2f}/{at_1um['p95']:.2f}", flush=True)
    return rows


def plot(out: dict[str, Any], path: Path) -> None:
    """Accuracy against blur: the single cells per scale, and the fields' pattern calls
    with the share the focus gate refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for scale in sorted({r["um_per_px"] for r in out.get("cells", ())}):
        rows = [r for r in out["cells"] if r["um_per_px"] == scale]
        ax.plot([r["defocus_um"] for r in rows], [r["mean_class_accuracy"] for r in rows],
                marker="o", lw=1.2, label=f"single cells at {scale:g} µm/px: mean class accuracy")
    fields = out.get("fields", ())
    if fields:
        blur = [r["defocus_um"] for r in fields]
        ax.plot(blur, [r["pattern_accuracy_scored"] for r in fields], marker="s", lw=2.0,
                color="black", label="fields: pattern right, of those scored")
        ax.plot(blur, [r["refused_out_of_focus"] for r in fields], marker="x", lw=2.0,
                ls="--", color="tab:red", label="fields: refused as out of focus")
    ax.axvspan(0.0, 0.5, color="0.9", zorder=0, label="the eval sets' blur (0-0.5 µm)")
    ax.set_xlabel("blur at the specimen, µm RMS (beyond the objective's own)")
    ax.set_ylabel("share")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("HEp-2: what blur costs and what the focus gate refuses (generated data)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    save_chart(fig, path, dpi=110)
    print(f"chart: {path}")


def probe_looks(specimens: int) -> list[dict[str, object]]:
    """One row per camera look: how often sharp fields warn or are refused for focus."""
    from tools.stress_hep2 import FIRST_SEED as LOOK_SEED
    from tools.stress_hep2 import LOOKS

    rows: list[dict[str, object]] = []
    cfg = with_overrides(Config(), {"assay": "hep2"})
    cases = specimen_cases(specimens, first_seed=LOOK_SEED)
    fields: dict[int, Hep2Field] = {}
    with Hep2Assay.from_config(cfg) as assay:
        for name in LOOK_NAMES:
            look, factor = LOOKS[name]
            refused = positive = unsure = soft = 0
            for seq, case in enumerate(tqdm(cases, desc=name)):
                result = score_generated(assay, case.spec, seq, look=look,
                                         declared_factor=factor, fields=fields)[2]
                refused += result.reason_code == "out_of_focus" and not result.scored
                if result.scored and result.positive:
                    positive += 1
                    unsure += any(w.startswith(LOW_CONFIDENCE) for w in result.warnings)
                    soft += any(w.startswith("soft focus") for w in result.warnings)
            row: dict[str, object] = {
                "look": name, "fields": len(cases), "refused_out_of_focus": refused,
                "positive_scored": positive, "low_confidence": unsure, "soft_focus": soft}
            rows.append(row)
            print(f"look {name:14s} refused out of focus {refused:2d} of {len(cases)}; of "
                  f"{positive} positive fields {unsure} warn of low confidence, {soft} of "
                  "soft focus", flush=True)
    return rows


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"comma-separated numbers expected: {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--part", choices=("cells", "fields", "both", "looks"), default="both")
    ap.add_argument("--per-class", type=int, default=20, help="cells per class and scale")
    ap.add_argument("--specimens", type=int, default=2, help="fields per pattern")
    ap.add_argument("--scales", type=_floats, default=(0.25, 0.5, 0.9))
    ap.add_argument("--defocus", type=_floats, default=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0))
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--out", type=Path, help="chart the rows here (PNG)")
    ap.add_argument("--replot", type=Path, help="chart this --json file instead of measuring")
    args = ap.parse_args(argv)
    if args.replot:
        if not args.out:
            ap.error("--replot needs --out")
        plot(json.loads(args.replot.read_text(encoding="utf-8")), args.out)
        return 0
    out: dict[str, Any] = {}
    if args.part in ("cells", "both"):
        out["cells"] = probe_cells(args.per_class, args.scales, args.defocus)
    if args.part in ("fields", "both"):
        fields: list[tuple[float, float, str, bool, float, float]] = []
        out["fields"] = probe_fields(args.specimens, args.defocus, fields)
        out["per_field"] = fields
    if args.part == "looks":
        out["looks"] = probe_looks(args.specimens)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    if args.out:
        plot(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
