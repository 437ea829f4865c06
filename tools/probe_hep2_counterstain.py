"""What a red counterstain seen through a long-pass emission filter does to the HEp-2 assay.

    python -m tools.probe_hep2_counterstain [--per-level 8] [--seed 771000]
                                            [--out-dir build/probe] [--json FILE]

Some FITC conjugates carry a red counterstain (Evans blue), so that every cell shows red
and the stained ones green on it (Newkirk & Mack 1992, Biotechniques 13:536). A
band-pass emission filter blocks that red; a long-pass one lets it through to the
camera. The generator draws no counterstain, so this probe adds one to generated fields
(``camera_looks.red_counterstain``: red on every cell, a little of it recorded by the
green pixels) and scores them through the real assay, scale declared, ``units_per_grey``
1 (the generator's grey scale).

Specimens: ``--per-level`` each of negatives (2-15 units) and positives at 30 (weak), 90
(intermediate) and 200 (strong) units, the positives cycling through every stained
pattern, scales drawn (10x-40x). Looks:

- ``long_pass``: the filter with no counterstain (its FITC tail at 0.3 of the green in the
  red pixels): the baseline;
- ``red N``: that, with the counterstain at N grey in the red pixels over the cytoplasm,
  the green pixels recording 5 % of it (``leak 15%``: 15 %);
- ``mono``: a monochrome camera behind the long-pass filter, no counterstain;
- ``mono red 40``: the same camera with the counterstain at 40, recorded at 0.6 of its
  green sensitivity;
- ``mode: ...``: colour pictures as above, scored with ``hep2.stain.red_counterstain``
  set (the colour test weighs green against blue only), from none to red at 100 with 15%
  of it in the green pixels.

For each look and level it prints how many fields are refused (and why), called positive,
and the median intensity against the baseline's, and draws the outcomes
(``OUT_DIR/hep2_counterstain.png``; about 4 min for the default 32 specimens).
Generated images and an assumed counterstain (its brightness, where it sits in a cell,
the camera's response): this measures what the box's checks do with such light, not what
a real kit looks like.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.specimen import looks_unstained
from appliance.assays.hep2.types import Hep2Result
from appliance.config import with_overrides
from tools.eval_hep2 import STAINED, Look, score_generated, tool_config
from tools.numbers import save_chart, write_numbers
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

FIRST_SEED = 771_000
LEVELS: tuple[tuple[str, float | None], ...] = (
    ("negative", None), ("weak 30", 30.0), ("intermediate 90", 90.0), ("strong 200", 200.0))
FITC_TAIL = 0.3  # the long-pass filter's FITC light in the red pixels, of the green
GREEN_LEAK = 0.05
MONO_RED = 0.6

# A look: (the drawn field) -> the picture the box gets.
FieldLook = Callable[[Hep2Field], np.ndarray]


def _counterstained(red: float, leak: float) -> FieldLook:
    def look(f: Hep2Field) -> np.ndarray:
        lp = camera_looks.long_pass(f.image, FITC_TAIL)
        return camera_looks.red_counterstain(lp, f.cell_labels, f.nucleus_labels,
                                             f.um_per_px, red, leak,
                                             np.random.default_rng(f.spec.seed))
    return look


LOOKS: dict[str, FieldLook] = {
    "long_pass": lambda f: camera_looks.long_pass(f.image, FITC_TAIL),
    "red 15": _counterstained(15.0, GREEN_LEAK),
    "red 40": _counterstained(40.0, GREEN_LEAK),
    "red 100": _counterstained(100.0, GREEN_LEAK),
    "red 40, leak 15%": _counterstained(40.0, 0.15),
    "mono": lambda f: camera_looks.monochrome_sum(
        camera_looks.long_pass(f.image, FITC_TAIL), MONO_RED),
    "mono red 40": lambda f: camera_looks.monochrome_sum(
        _counterstained(40.0, 0.0)(f), MONO_RED),
}
# The same pictures scored with hep2.stain.red_counterstain set (the colour test weighs
# green against blue only).
MODE = "mode: "
LOOKS.update({
    f"{MODE}no counterstain": LOOKS["long_pass"],
    f"{MODE}red 15": LOOKS["red 15"],
    f"{MODE}red 40": LOOKS["red 40"],
    f"{MODE}red 100": LOOKS["red 100"],
    f"{MODE}red 40, leak 15%": LOOKS["red 40, leak 15%"],
    f"{MODE}red 100, leak 15%": _counterstained(100.0, 0.15),
})
BASELINE = {"mono": "mono", "mono red 40": "mono"}  # other looks compare with long_pass


def _given(picture: np.ndarray) -> Look:
    """A look that hands the box ``picture`` (made from the drawn field's labels too)."""
    def look(_rgb: np.ndarray, _um: float) -> np.ndarray:
        return picture
    return look


@dataclass(frozen=True)
class Scored:
    """One field through one look."""

    seed: int
    level: str
    look: str
    truth_pattern: str
    code: str | None  # refusal code, None when scored
    positive: bool | None
    intensity: float | None
    pattern: str | None  # first reported pattern
    negative_look_share: float  # whole interphase cells that look unstained (the rule's test)


def cases(per_level: int, first_seed: int) -> list[tuple[str, Hep2FieldSpec]]:
    """``per_level`` specimens of each level, seeds consecutive from ``first_seed``."""
    out: list[tuple[str, Hep2FieldSpec]] = []
    for i in range(per_level):
        for j, (level, units) in enumerate(LEVELS):
            seed = first_seed + i * len(LEVELS) + j
            pattern = "negative" if units is None else STAINED[(i * 3 + j) % len(STAINED)]
            out.append((level, Hep2FieldSpec(seed=seed, patterns=((pattern, 1.0),),
                                             intensity=units)))
    return out


def scored(level: str, look: str, truth: Hep2Field, result: Hep2Result) -> Scored:
    """What one result says, against its truth."""
    whole = [c for c in result.cells if not c.mitotic and not c.touches_edge]
    neg = sum(looks_unstained(c) for c in whole) / len(whole) if whole else 0.0
    return Scored(seed=truth.spec.seed, level=level, look=look,
                  truth_pattern=truth.patterns[0], code=result.reason_code,
                  positive=result.positive, intensity=result.intensity_units,
                  pattern=result.patterns[0].name if result.patterns else None,
                  negative_look_share=round(neg, 3))


def summary(rows: Sequence[Scored]) -> list[dict[str, object]]:
    """Per look and level: refused (by code), positive, median intensity ratio to the
    baseline look's, first pattern unchanged from it, median negative-looking share."""
    base = {(r.seed, r.look): r for r in rows}
    out = []
    for look in LOOKS:
        for level, _ in LEVELS:
            mine = [r for r in rows if r.look == look and r.level == level]
            if not mine:
                continue
            ref = [base.get((r.seed, BASELINE.get(look, "long_pass"))) for r in mine]
            ratios = [r.intensity / b.intensity for r, b in zip(mine, ref, strict=True)
                      if b is not None and r.intensity and b.intensity]
            same = [r.pattern == b.pattern for r, b in zip(mine, ref, strict=True)
                    if b is not None and r.code is None and b.code is None]
            out.append({
                "look": look, "level": level, "fields": len(mine),
                "refused": dict(Counter(r.code for r in mine if r.code is not None)),
                "positive": sum(bool(r.positive) for r in mine),
                "intensity_ratio": round(statistics.median(ratios), 3) if ratios else None,
                "pattern_unchanged": f"{sum(same)}/{len(same)}",
                "negative_look_share": round(statistics.median(
                    r.negative_look_share for r in mine), 3)})
    return out


def format_summary(table: Sequence[dict[str, object]]) -> str:
    """One line per look and level."""
    lines = [f"{'look':18s} {'level':16s} {'refused':26s} {'positive':>8s} "
             f"{'intensity':>9s} {'pattern':>8s} {'neg-look':>8s}"]
    for row in table:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(row["refused"].items())) or "-"  # type: ignore[attr-defined]
        ratio = row["intensity_ratio"]
        lines.append(f"{row['look']!s:18s} {row['level']!s:16s} {refused:26s} "
                     f"{row['positive']!s:>5s}/{row['fields']!s:<2s} "
                     f"{'-' if ratio is None else f'{ratio:.2f}x':>9s} "
                     f"{row['pattern_unchanged']!s:>8s} {row['negative_look_share']!s:>8s}")
    return "\n".join(lines)


OUTCOMES = (("called positive", "#d55e00"), ("called negative", "#0072b2"),
            ("refused: wrong stain", "#999999"), ("refused: unstained light", "#e69f00"),
            ("refused: other", "#cccccc"))


def outcome(r: Scored) -> str:
    """What the box said of one field, in the chart's words."""
    if r.code is None:
        return "called positive" if r.positive else "called negative"
    return {"wrong_stain": "refused: wrong stain",
            "unstained_light": "refused: unstained light"}.get(r.code, "refused: other")


def plot(rows: Sequence[Scored], path: Path) -> None:
    """One panel per level: for each look, how many fields were called positive,
    negative, or refused (and why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    looks = list(dict.fromkeys(r.look for r in rows))
    fig, axes = plt.subplots(1, len(LEVELS), figsize=(17, 5.0), sharey=True)
    for ax, (level, _) in zip(axes, LEVELS, strict=True):
        bottom = np.zeros(len(looks))
        for name, colour in OUTCOMES:
            counts = np.array([sum(outcome(r) == name for r in rows
                                   if r.look == look and r.level == level) for look in looks])
            ax.bar(range(len(looks)), counts, bottom=bottom, color=colour, label=name)
            bottom += counts
        ax.set_xticks(range(len(looks)), looks, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{level} ({'truth negative' if level == 'negative' else 'positive'})",
                     fontsize=9)
    axes[0].set_ylabel("fields")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("HEp-2 fields with a red counterstain through a long-pass filter "
                 "(generated; the counterstain drawn, not measured)", fontsize=10)
    save_chart(fig, path, dpi=110)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_counterstain",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-level", type=int, default=8)
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--looks", nargs="+", choices=list(LOOKS), default=list(LOOKS))
    ap.add_argument("--json", default="", help="write the rows and the summary here")
    ap.add_argument("--out-dir", default="build/probe", help="folder for the chart")
    ap.add_argument("--config", type=Path, default=None, help="score with this config file")
    ap.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Score every specimen through every look and print the summary."""
    args = parse_args(argv)
    cfg = tool_config(args)
    if cfg is None:
        return 2
    rows: list[Scored] = []
    todo = cases(args.per_level, args.seed)
    red_cfg = with_overrides(cfg, {"hep2.stain.red_counterstain": True})
    with Hep2Assay.from_config(cfg) as plain, Hep2Assay.from_config(red_cfg) as red_mode:
        for seq, (level, spec) in enumerate(tqdm(todo, desc="specimens")):
            truth = generate_hep2_field(spec)
            fields = {spec.seed: truth}
            for name in args.looks:
                assay = red_mode if name.startswith(MODE) else plain
                _, _, result, _ = score_generated(assay, spec, seq, fields=fields,
                                                  look=_given(LOOKS[name](truth)))
                rows.append(scored(level, name, truth, result))
    table = summary(rows)
    print(format_summary(table))
    chart = Path(args.out_dir) / "hep2_counterstain.png"
    plot(rows, chart)
    print(f"chart: {chart}")
    if args.json:
        write_numbers(Path(args.json), {"rows": [r.__dict__ for r in rows], "summary": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
