"""What the live box stores when the user stops on a soft focus, then focuses better.

    python -m tools.probe_refocus [--assay hep2|her2] [--specimens 2]
        [--defocus 0.5,0.75,1,1.5] [--json FILE] [--out PNG]

The HEp-2 focus gate lets a field 0.75-1.5 µm out of focus be scored (docs/hep2.md,
"Focus"), and the box reports a view as soon as it has been still for
``stability.stable_s``. Two rules of the live pipeline answer for that (docs/pipeline.md,
"Report-once rules", 5): a view focused better at the same spot after its report is
reported again (``sharper``); a view held softer than its spot was a moment before is
reported with a warning to focus back (``reporting.sharper_before_warning``).

For each held-out specimen (HEp-2: the eval's kinds, seeds from 1240000; HER2: the four
scores in turn, seeds from 1250000, 10x-40x; 800x600, scale declared) and each blur, this
plays three sequences a user makes through the same pure parts the live pipeline uses
(``StillnessTracker``, ``ReportPolicy``, the warning; no threads, no store), 10 frames a
second with fresh sensor noise on each, a still view scored by the real assay (once per
picture):

1. **refocus**: the view held at the blur for 1.5 s, then held sharp (as drawn) for 1.5 s.
   Printed: how often the soft view is reported (scored); of those, how often the sharp
   view replaces it and the rise of the focus figure (median); the call right (HEp-2:
   the pattern by the eval's rule; HER2: the ASCO/CAP score) in the first report and in
   what the store then counts;
2. **wrong way** (a control): held sharp, then held at the blur: reports after the first,
   which should be none;
3. **past the best**: sharp for 0.3 s (shorter than ``stable_s``: the knob turned through
   it), then held at the blur: how often the soft report carries the warning, and its
   call right.

Also printed: warnings on views that were never sharper before (1 and 2: should be
none), and the largest registration shift between the soft and the sharp view
(fingerprint pixels; the rules ask for at most ``SAME_SPOT_SHIFT_PX``).

Generated data only: a real knob passes through every blur on its way, and a real
camera's focus figure may rise less per µm.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance.assays.results import AnyResult, FieldAssay, open_assay
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.pipeline.field_memory import FieldMemory, fingerprint, register
from appliance.pipeline.reporting import (
    ReportPolicy,
    Tracked,
    sharper_before_warning,
    with_warning,
)
from appliance.pipeline.stability import Stage, StillnessTracker
from tools.eval_hep2 import SpecimenCase, outcome_of, specimen_cases
from tools.her2_dataset import SCORES
from tools.numbers import save_chart
from tools.synth.hep2_fields import generate_hep2_field
from tools.synth.her2_fields import FieldSpec, generate_field

FIRST_SEED = 1_240_000  # HEp-2 specimens
HER2_SEED = 1_250_000  # HER2 fields
FPS = 10.0
HOLD_S = 1.5
OVERSHOOT_S = 0.3  # the sharp view passed through: shorter than stability.stable_s (0.6)
NOISE_GREY = 1.0  # sensor noise added to each frame (grey levels RMS)


@dataclass(frozen=True)
class Report:
    """One report of a played sequence."""

    view: str  # which picture
    reason: str  # the report-once decision's reason
    result: AnyResult  # with the pipeline's warning added, as the store gets it
    warned_sharper_before: bool  # the view's spot was sharper just before it was held


@dataclass(frozen=True)
class Played:
    """What one played sequence reported, and the tracker's focus figure of each view."""

    reports: tuple[Report, ...]
    focus: dict[str, float]


def play(views: Sequence[tuple[str, np.ndarray, float]], score: dict[str, AnyResult],
         cfg: Config, rng: np.random.Generator, assay: FieldAssay, um_per_px: float
         ) -> Played:
    """Hold each (name, picture, seconds) still in turn, as the live pipeline sees it:
    the same tracker, report policy and warning (``pipeline.engine``)."""
    tracker = StillnessTracker(cfg.stability)
    policy = ReportPolicy(FieldMemory(cfg.stability))
    reports: list[Report] = []
    focus: dict[str, float] = {}
    t, seq = 0.0, 0
    for name, image, hold_s in views:
        for _ in range(round(hold_s * FPS)):
            noisy = np.clip(image + rng.normal(0.0, NOISE_GREY, image.shape), 0, 255
                            ).astype(np.uint8)
            state = tracker.update(noisy, t)
            focus[name] = state.sample.focus
            t, seq = t + 1.0 / FPS, seq + 1
            if state.stage is not Stage.STABLE:
                continue
            result = score.get(name)
            if result is None:  # one reading per picture: the noise changes nothing that counts
                result = score[name] = assay.score(Frame(
                    image=image, seq=seq, timestamp=t, source=name, um_per_px=um_per_px))
            frame = Frame(image=noisy, seq=seq, timestamp=t, source="cam0")
            decision = policy.consider(Tracked(frame, state), result)
            if decision is not None and decision.report:
                warning = sharper_before_warning(state, cfg.stability.sharper_factor)
                reports.append(Report(name, decision.reason, with_warning(result, warning),
                                      warning is not None))
    return Played(tuple(reports), focus)


_KEYS = ("soft_first", "soft_scored", "replaced", "replaced_why", "focus_rise", "right_first",
         "right_stored", "false_warning", "control_extra", "overshoot_warned",
         "overshoot_right", "shift")


@dataclass(frozen=True)
class Case:
    """One specimen of the probe: its picture at any blur, and whether a reading is right."""

    key: int  # its seed
    um_per_px: float
    sharp: np.ndarray  # its picture as drawn (no blur beyond the objective's)
    draw: Callable[[float], np.ndarray]  # blur (µm RMS) -> RGB picture
    right: Callable[[AnyResult], bool]  # the pattern (HEp-2) or the score (HER2) is right


def hep2_cases(specimens: int) -> list[Case]:
    """``specimens`` of each of the eval's kinds (tools.eval_hep2), the pattern judged by
    the eval's rule."""
    levels = Config().hep2.intensity
    cases = []
    for case in specimen_cases(specimens, first_seed=FIRST_SEED):
        truth = generate_hep2_field(replace(case.spec, defocus_um=0.0))

        def draw(blur: float, spec: Any = case.spec) -> np.ndarray:
            return generate_hep2_field(replace(spec, defocus_um=blur)).image

        def right(result: AnyResult, case: SpecimenCase = case, truth: Any = truth) -> bool:
            return outcome_of(case.kind, truth, result, 0.0,  # type: ignore[arg-type]
                              levels).pattern_correct

        cases.append(Case(case.spec.seed, truth.um_per_px, truth.image, draw, right))
    return cases


def her2_cases(count: int) -> list[Case]:
    """``count`` HER2 fields, the four scores in turn, at 10x-40x; the ASCO/CAP score
    judged against the drawn one."""
    cases = []
    for i in range(count):
        spec = FieldSpec(seed=HER2_SEED + i, width=800, height=600,
                         target_score=SCORES[i % len(SCORES)])
        truth = generate_field(replace(spec, defocus_um=0.0))

        def draw(blur: float, spec: FieldSpec = spec) -> np.ndarray:
            return generate_field(replace(spec, defocus_um=blur)).image

        def right(result: AnyResult, want: str | None = truth.score) -> bool:
            score = getattr(result, "score", None)
            return result.scored and score is not None and score.value == want

        cases.append(Case(spec.seed, truth.um_per_px, truth.image, draw, right))
    return cases


def probe(cases: Sequence[Case], defocus: Sequence[float], assay_name: str = "hep2"
          ) -> list[dict[str, object]]:
    """One row per blur (module docstring)."""
    cfg = with_overrides(Config(), {"assay": assay_name})
    rows: list[dict[str, object]] = []
    sharp_scores: dict[int, AnyResult] = {}
    assay = open_assay(cfg)
    try:
        for blur in defocus:
            rng = np.random.default_rng(int(blur * 1000))
            tally: dict[str, list[Any]] = {k: [] for k in _KEYS}
            for case in tqdm(cases, desc=f"blur {blur:g} um"):
                sharp, soft, um = case.sharp, case.draw(blur), case.um_per_px
                # The registration shift between the two views: the stage did not move.
                tally["shift"].append(register(fingerprint(soft), fingerprint(sharp)).shift)
                score: dict[str, AnyResult] = {}
                if case.key in sharp_scores:
                    score["sharp"] = sharp_scores[case.key]
                # 1. Paused soft, then focused better.
                played = play([("soft", soft, HOLD_S), ("sharp", sharp, HOLD_S)],
                              score, cfg, rng, assay, um)
                first = played.reports[0] if played.reports else None
                tally["soft_first"].append(first is not None and first.view == "soft")
                tally["false_warning"] += [r.warned_sharper_before for r in played.reports
                                           if r.view == "soft"]
                if first is not None and first.view == "soft" and first.result.scored:
                    tally["soft_scored"].append(True)
                    later = played.reports[1:]
                    tally["replaced"].append(bool(later))
                    tally["replaced_why"] += [r.reason for r in later]
                    tally["focus_rise"].append(played.focus["sharp"] / played.focus["soft"])
                    tally["right_first"].append(case.right(first.result))
                    tally["right_stored"].append(case.right(played.reports[-1].result))
                else:
                    tally["soft_scored"].append(False)
                # 2. The control: held sharp, then the user turns the wrong way.
                control = play([("sharp", sharp, HOLD_S), ("soft", soft, HOLD_S)],
                               score, cfg, rng, assay, um)
                tally["control_extra"].append(max(0, len(control.reports) - 1))
                tally["false_warning"] += [r.warned_sharper_before for r in control.reports]
                # 3. Turned through the best focus (shorter than stable_s), held soft.
                past = play([("sharp", sharp, OVERSHOOT_S), ("soft", soft, HOLD_S)],
                            score, cfg, rng, assay, um)
                soft_reports = [r for r in past.reports if r.view == "soft" and r.result.scored]
                if soft_reports:
                    tally["overshoot_warned"].append(soft_reports[0].warned_sharper_before)
                    tally["overshoot_right"].append(case.right(soft_reports[0].result))
                if "sharp" in score:
                    sharp_scores[case.key] = score["sharp"]
            rows.append(_row(blur, len(cases), tally))
            print(_line(rows[-1]), flush=True)
    finally:
        assay.close()
    return rows


def _mean(values: Sequence[Any]) -> float | None:
    return float(np.mean(values)) if values else None


def _row(blur: float, n: int, tally: dict[str, list[Any]]) -> dict[str, object]:
    """The printed and saved figures of one blur."""
    return {
        "defocus_um": blur, "specimens": n,
        "soft_reported": _mean(tally["soft_first"]),
        "soft_reported_scored": _mean(tally["soft_scored"]),
        "replaced_when_sharp": _mean(tally["replaced"]),
        "replaced_reasons": sorted(set(tally["replaced_why"])),
        "focus_rise_p50": (float(np.median(tally["focus_rise"])) if tally["focus_rise"]
                           else None),
        "right_first_report": _mean(tally["right_first"]),
        "right_stored": _mean(tally["right_stored"]),
        "control_extra_reports": int(sum(tally["control_extra"])),
        "overshoot_reported_soft": len(tally["overshoot_warned"]),
        "overshoot_warned": _mean(tally["overshoot_warned"]),
        "overshoot_right": _mean(tally["overshoot_right"]),
        "false_warnings": int(sum(tally["false_warning"])),
        "reports_that_could_warn_falsely": len(tally["false_warning"]),
        "registration_shift_max_px": float(max(tally["shift"])),
    }


def _line(row: dict[str, object]) -> str:
    return (f"blur {row['defocus_um']:4g} um: soft view reported {_fmt(row['soft_reported'])}"
            f" (scored {_fmt(row['soft_reported_scored'])}); of those replaced when sharp "
            f"{_fmt(row['replaced_when_sharp'])}, focus figure x{_fmt(row['focus_rise_p50'])};"
            f" call right first report {_fmt(row['right_first_report'])}, stored "
            f"{_fmt(row['right_stored'])}; wrong-way control: "
            f"{row['control_extra_reports']} extra reports of {row['specimens']}; past the "
            f"best focus: warned {_fmt(row['overshoot_warned'])} of "
            f"{row['overshoot_reported_soft']} soft reports (call right "
            f"{_fmt(row['overshoot_right'])}); false warnings "
            f"{row['false_warnings']} of {row['reports_that_could_warn_falsely']}; "
            f"registration shift max {float(row['registration_shift_max_px']):.2f} px")  # type: ignore[arg-type]


def _fmt(value: object) -> str:
    return "-" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "HEp-2") -> None:
    """Pattern right in the first report and in what the store counts, against the blur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blur = [r["defocus_um"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for key, label, style in (
            ("soft_reported_scored", "soft view reported scored", dict(ls="--", marker="x")),
            ("replaced_when_sharp", "of those, replaced by the sharp view", dict(marker="o")),
            ("right_first_report", "call right: first report", dict(marker="s")),
            ("right_stored", "call right: what the store counts",
             dict(marker="D", lw=2.0, color="black")),
            ("overshoot_warned", "held soft past the best focus: warned",
             dict(marker="^", ls=":"))):
        ax.plot(blur, [r[key] if r[key] is not None else np.nan for r in rows], label=label,
                **style)
    ax.set_xlabel("blur of the view the user paused on, µm RMS")
    ax.set_ylabel("share of specimens")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(f"{title}: a soft view reported, then focused better (generated data)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    save_chart(fig, path, dpi=110)
    print(f"chart: {path}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assay", choices=("hep2", "her2"), default="hep2")
    parser.add_argument("--specimens", type=int, default=2,
                        help="HEp-2: specimens of each kind (the eval's 16 patterns, negative "
                             "and 4 mixed pairs: 21 per unit); HER2: fields of each score")
    parser.add_argument("--defocus", type=_floats, default=(0.5, 0.75, 1.0, 1.5),
                        help="blurs of the soft view, µm RMS (comma-separated)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--out", type=Path, help="write the chart here (PNG)")
    args = parser.parse_args(argv)
    if args.specimens < 1:
        parser.error("--specimens must be at least 1")
    cases = (hep2_cases(args.specimens) if args.assay == "hep2"
             else her2_cases(len(SCORES) * args.specimens))
    rows = probe(cases, args.defocus, args.assay)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")
    if args.out:
        plot(rows, args.out, "HEp-2" if args.assay == "hep2" else "HER2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
