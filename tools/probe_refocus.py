"""What the live box stores when the user stops on a soft focus, then focuses better.

    python -m tools.probe_refocus [--specimens 2] [--defocus 0.5,0.75,1,1.5] [--json FILE]
        [--out PNG]

The HEp-2 focus gate lets a field 0.75-1.5 µm out of focus be scored (docs/hep2.md,
"Focus"), and the box reports a view as soon as it has been still for
``stability.stable_s``. A user who pauses on a soft focus and then focuses better used to
leave the soft reading in the store: the sharper view was a return to a field already
reported. The report-once rules now report it again when the stillness tracker's focus
figure has risen by ``stability.sharper_factor`` (``pipeline/field_memory.py``).

For each held-out specimen (the eval's kinds, seeds from 1240000, 800x600, scale declared)
and each blur, this plays the sequence a user makes through the same pure parts the live
pipeline uses (``StillnessTracker``, ``ReportPolicy``; no threads, no store): the view
held still at the blur for 1.5 s, then held sharp (as drawn) for 1.5 s, 10 frames a
second with fresh sensor noise on each. A still view is scored by the real assay (once
per picture). Printed per blur:

- how often the soft view is reported, and reported scored;
- of those, how often the sharp view then replaces it (``sharper``, or ``now_scorable``
  when the soft view was refused), and the rise of the focus figure (median);
- the pattern right (the eval's rule) in the first report and in what the store then
  counts (the latest report of the field);
- the control: the sharp view held, then defocused by the same blur (the user turns the
  wrong way after the report): reports after the first, which should be none;
- the largest registration shift between the soft and the sharp view (fingerprint
  pixels): the rule asks for at most ``SAME_SPOT_SHIFT_PX``.

Generated data only: a real focus knob passes through every blur on its way, and a real
camera's focus figure may rise less per µm.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.types import Hep2Result
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.pipeline.field_memory import FieldMemory, fingerprint, register
from appliance.pipeline.reporting import ReportPolicy, Tracked
from appliance.pipeline.stability import Stage, StillnessTracker
from tools.eval_hep2 import SpecimenCase, outcome_of, specimen_cases
from tools.numbers import save_chart
from tools.synth.hep2_fields import Hep2Field, generate_hep2_field

FIRST_SEED = 1_240_000
FPS = 10.0
HOLD_S = 1.5
NOISE_GREY = 1.0  # sensor noise added to each frame (grey levels RMS)


@dataclass(frozen=True)
class Played:
    """What one played sequence reported: (which view, reason, result) per report, and
    the tracker's focus figure of each view."""

    reports: tuple[tuple[str, str, Hep2Result], ...]
    focus: dict[str, float]


def play(views: Sequence[tuple[str, np.ndarray]], score: dict[str, Hep2Result],
         cfg: Config, rng: np.random.Generator, assay: Hep2Assay, um_per_px: float
         ) -> Played:
    """Hold each (name, picture) still for HOLD_S in turn, as the live pipeline sees it."""
    tracker = StillnessTracker(cfg.stability)
    policy = ReportPolicy(FieldMemory(cfg.stability))
    reports: list[tuple[str, str, Hep2Result]] = []
    focus: dict[str, float] = {}
    t, seq = 0.0, 0
    for name, image in views:
        for _ in range(int(HOLD_S * FPS)):
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
                reports.append((name, decision.reason, result))
    return Played(tuple(reports), focus)


def probe(specimens: int, defocus: Sequence[float]) -> list[dict[str, object]]:
    """One row per blur (module docstring)."""
    cfg = with_overrides(Config(), {"assay": "hep2"})
    levels = cfg.hep2.intensity
    cases: list[SpecimenCase] = specimen_cases(specimens, first_seed=FIRST_SEED)
    rows: list[dict[str, object]] = []
    sharp_fields: dict[int, Hep2Field] = {}
    sharp_scores: dict[int, Hep2Result] = {}
    with Hep2Assay.from_config(cfg) as assay:
        for blur in defocus:
            rng = np.random.default_rng(int(blur * 1000))
            tally: dict[str, list[Any]] = {k: [] for k in (
                "soft_stable", "soft_scored", "replaced", "replaced_why", "focus_rise",
                "right_first", "right_stored", "control_extra", "shift")}
            for case in tqdm(cases, desc=f"blur {blur:g} um"):
                seed = case.spec.seed
                if seed not in sharp_fields:
                    sharp_fields[seed] = generate_hep2_field(replace(case.spec, defocus_um=0.0))
                sharp = sharp_fields[seed]
                soft = generate_hep2_field(replace(case.spec, defocus_um=blur))
                um = sharp.um_per_px
                # The registration shift between the two views: the stage did not move.
                tally["shift"].append(register(fingerprint(soft.image),
                                               fingerprint(sharp.image)).shift)
                score: dict[str, Hep2Result] = {}
                if seed in sharp_scores:
                    score["sharp"] = sharp_scores[seed]
                played = play([("soft", soft.image), ("sharp", sharp.image)], score, cfg, rng,
                              assay, um)
                if "sharp" in score:
                    sharp_scores[seed] = score["sharp"]

                def right(result: Hep2Result, case: SpecimenCase = case,
                          truth: Hep2Field = sharp) -> bool:
                    return outcome_of(case.kind, truth, result, 0.0, levels).pattern_correct

                first = played.reports[0] if played.reports else None
                soft_first = first is not None and first[0] == "soft"
                tally["soft_stable"].append(soft_first)
                if soft_first and first is not None and first[2].scored:
                    tally["soft_scored"].append(True)
                    later = played.reports[1:]
                    tally["replaced"].append(bool(later))
                    tally["replaced_why"] += [why for _, why, _ in later]
                    tally["focus_rise"].append(played.focus["sharp"] / played.focus["soft"])
                    tally["right_first"].append(right(first[2]))
                    tally["right_stored"].append(right(played.reports[-1][2]))
                else:
                    tally["soft_scored"].append(False)
                # The control: sharp first, then the user turns the wrong way.
                control = play([("sharp", sharp.image), ("soft", soft.image)],
                               dict(score), cfg, rng, assay, um)
                tally["control_extra"].append(max(0, len(control.reports) - 1))
            n = len(cases)
            scored = sum(tally["soft_scored"])
            row: dict[str, object] = {
                "defocus_um": blur, "specimens": n,
                "soft_reported": sum(tally["soft_stable"]) / n,
                "soft_reported_scored": scored / n,
                "replaced_when_sharp": (float(np.mean(tally["replaced"])) if scored else None),
                "replaced_reasons": sorted(set(tally["replaced_why"])),
                "focus_rise_p50": (float(np.median(tally["focus_rise"])) if scored else None),
                "pattern_right_first_report": (float(np.mean(tally["right_first"]))
                                               if scored else None),
                "pattern_right_stored": (float(np.mean(tally["right_stored"]))
                                         if scored else None),
                "control_extra_reports": int(sum(tally["control_extra"])),
                "registration_shift_max_px": float(max(tally["shift"])),
            }
            rows.append(row)
            print(f"blur {blur:4g} um: soft view reported {row['soft_reported']:.2f} (scored "
                  f"{row['soft_reported_scored']:.2f}); of those replaced when sharp "
                  f"{_fmt(row['replaced_when_sharp'])}, focus figure x"
                  f"{_fmt(row['focus_rise_p50'])}; pattern right first report "
                  f"{_fmt(row['pattern_right_first_report'])}, stored "
                  f"{_fmt(row['pattern_right_stored'])}; control: "
                  f"{row['control_extra_reports']} extra reports of {n}", flush=True)
    return rows


def _fmt(value: object) -> str:
    return "-" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Pattern right in the first report and in what the store counts, against the blur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blur = [r["defocus_um"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for key, label, style in (
            ("soft_reported_scored", "soft view reported scored", dict(ls="--", marker="x")),
            ("replaced_when_sharp", "of those, replaced by the sharp view", dict(marker="o")),
            ("pattern_right_first_report", "pattern right: first report", dict(marker="s")),
            ("pattern_right_stored", "pattern right: what the store counts",
             dict(marker="D", lw=2.0, color="black"))):
        ax.plot(blur, [r[key] if r[key] is not None else np.nan for r in rows], label=label,
                **style)
    ax.set_xlabel("blur of the view the user paused on, µm RMS")
    ax.set_ylabel("share of specimens")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("HEp-2: a soft view reported, then focused better (generated data)",
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
    parser.add_argument("--specimens", type=int, default=2,
                        help="specimens of each kind (the eval's 16 patterns, negative and "
                             "4 mixed pairs: 21 per unit)")
    parser.add_argument("--defocus", type=_floats, default=(0.5, 0.75, 1.0, 1.5),
                        help="blurs of the soft view, µm RMS (comma-separated)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--out", type=Path, help="write the chart here (PNG)")
    args = parser.parse_args(argv)
    if args.specimens < 1:
        parser.error("--specimens must be at least 1")
    rows = probe(args.specimens, args.defocus)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")
    if args.out:
        plot(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
