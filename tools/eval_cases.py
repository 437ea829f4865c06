"""Evaluate the case workflow's positive-control check and calibration on generated slides.

    python -m tools.eval_cases [--slides 12] [--seed 1000] [--scales 0.35,0.5,...]
                               [--out docs/img/eval_cases.png] [--json FILE] [--quick]

Every slide (tools/synth/her2_slide.py) is a 3+ control region of three fields and three
tumour fields of random scores (seeded), 640x480 at 0.5 µm/px, generated at each stain-run
strength (``dab_scale``: 0.7 is a run that deposits 70% of the usual DAB). Each slide goes
through the real workflow twice, as `appliance score --case` would run it: once with the
default configuration (calibration on) and once with ``her2.control.calibration = false``,
each into its own fresh results store: open the case, check the control, show the tumour
fields, close the case. Compared with the generator's truth: whether the control passed,
its measured stain ratio, the pooled case score and every tumour field's own score.

The same slide seeds are used at every strength, so the conditions differ only in the
stain. Seeds start at 1000, apart from the unit tests' slides (3, 5, 7, 11). Generated
data only: this says nothing yet about real tissue or a real stain run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.her2.assay import Her2Assay, PreparedField
from appliance.assays.her2.control import ControlCheck
from appliance.assays.her2.types import FieldResult
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.outputs.store import ResultStore
from appliance.service.cases import CaseWorkflow
from appliance.service.recorder import Recorder
from tools.numbers import save_chart
from tools.synth.her2_fields import SCORES
from tools.synth.her2_slide import SlideField, SlideSpec, generate_slide, slide_truth

UM_PER_PX = 0.5
WIDTH, HEIGHT = 640, 480
CONTROL_FIELDS = 3
TUMOUR_FIELDS = 3
CONTROL_LEVEL = "3+"
DEFAULT_SCALES = (0.35, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.5)
QUICK_SCALES = (0.5, 1.0)
DEFAULT_SLIDES = 12
QUICK_SLIDES = 2
# Held out from the unit tests' slide seeds (3, 5, 7, 11).
DEFAULT_SEED = 1000
CASE_ID = "eval-case"  # each slide and setting has its own store: one id fits all
SETTINGS = (True, False)  # calibration on (the default configuration), off
NOT_SCORABLE = "not scorable"


@dataclass(frozen=True)
class CaseOutcome:
    """One slide at one stain strength through the workflow with one calibration setting."""

    seed: int
    dab_scale: float
    calibration: bool
    control_valid: bool
    ratio: float | None  # the control's measured / reference membrane OD (None: not measured)
    truth: str | None  # the pooled truth of the distinct tumour fields
    score: str | None  # the case score the workflow closed with
    field_truth: tuple[str | None, ...]  # each tumour field's own truth
    field_scores: tuple[str | None, ...]  # what each tumour field scored when it was shown
    control_reasons: tuple[str, ...] = ()  # the check's decision in words
    borderline: tuple[str, ...] = ()  # the case's borderline flags ("look again")

    @property
    def case_correct(self) -> bool:
        """The closed case's score is the slide's pooled truth."""
        return self.score == self.truth

    @property
    def fields_correct(self) -> int:
        """Tumour fields whose own score (or refusal) matches their truth."""
        return sum(s == t for s, t in zip(self.field_scores, self.field_truth, strict=True))


@dataclass(frozen=True)
class SettingStats:
    """One calibration setting at one stain strength, over all slides."""

    slides: int
    control_pass: float  # fraction of slides whose control was valid
    case_accuracy: float
    field_accuracy: float
    valid_slides: int
    # What a pathologist would act on: only the cases whose control passed (None: none did).
    case_accuracy_when_valid: float | None
    field_accuracy_when_valid: float | None


@dataclass(frozen=True)
class ScaleStats:
    """Everything measured at one stain strength."""

    dab_scale: float
    ratio_mean: float | None  # over the slides whose control ratio was measured
    ratio_sd: float | None
    ratios_measured: int
    on: SettingStats  # calibration on (default)
    off: SettingStats  # calibration off


# ------------------------------------------------------------------------------- slides


def tumour_scores(seed: int, count: int = TUMOUR_FIELDS) -> tuple[str, ...]:
    """The slide's tumour-field scores, drawn from 0/1+/2+/3+ by its seed."""
    rng = np.random.default_rng([seed, 0x5C0E])
    return tuple(str(s) for s in rng.choice(SCORES, size=count))


def slide_spec(seed: int, dab_scale: float) -> SlideSpec:
    """The evaluation's slide for ``seed`` at one stain-run strength."""
    return SlideSpec(seed=seed, control_level=CONTROL_LEVEL, control_fields=CONTROL_FIELDS,
                     tumour_scores=tumour_scores(seed), dab_scale=dab_scale,
                     um_per_px=UM_PER_PX, width=WIDTH, height=HEIGHT)


def _score_of(result: FieldResult) -> str:
    return result.score.value if result.scored and result.score is not None else NOT_SCORABLE


def _truth_of(value: str | None) -> str:
    return NOT_SCORABLE if value is None else value


# ----------------------------------------------------------------------------- workflow


class CaseBench:
    """One calibration setting: its own store, case workflow and recorder.

    Fields are stored as `appliance score --case` does it: through the recorder, with the
    workflow's companion hook (case link and audit entry in the result's transaction).
    """

    def __init__(self, base: Config, store_path: Path, *, calibration: bool) -> None:
        self.cfg = with_overrides(base, {"store.path": str(store_path),
                                         "her2.control.calibration": calibration})
        self.calibration = calibration
        self.store = ResultStore(self.cfg.store.path)
        self.cases = CaseWorkflow(self.cfg, self.store)
        self.recorder = Recorder(
            store=self.store, config_sha256=self.cfg.sha256(), overlay_dir=None,
            out=io.StringIO(), companion_for=lambda r, img: self.cases.companion(
                r, img, source="score"), after_store=[self.cases.after_field])

    def finish(self, assay: Her2Assay, prepared: PreparedField, logits: np.ndarray,
               image: np.ndarray) -> FieldResult:
        """Measure a prepared field under this setting's open case and store it."""
        assay.cfg = self.cfg
        assay.field_context = self.cases.context
        return self.store_result(assay.finish(prepared, logits), image)

    def store_result(self, result: FieldResult, image: np.ndarray) -> FieldResult:
        """Record a result as the service does; a store error stops the evaluation."""
        self.recorder.record(result, image)
        if self.recorder.counts["store_errors"]:
            # The recorder keeps going on a store error (as the service must); an evaluation
            # that lost a field would report figures for fields it never counted.
            raise RuntimeError(f"results store {self.cfg.store.path} refused {result.file}: "
                               "see the log above")
        return result

    def close(self) -> None:
        """Close the store (idempotent through the store's own close)."""
        self.store.close()


def show_fields(assay: Her2Assay, fields: Sequence[SlideField],
                benches: Sequence[CaseBench], first_seq: int) -> list[list[FieldResult]]:
    """Show fields to every bench; results per bench, in the fields' order.

    Scale, quality gates and the model do not depend on the case (only the thresholds
    and tag applied after the model do), so they run once per field for all settings.
    """
    results: list[list[FieldResult]] = [[] for _ in benches]
    for seq, f in enumerate(fields, start=first_seq):
        frame = Frame(image=f.image, seq=seq, timestamp=time.monotonic(),
                      source=f"{f.name}.png", um_per_px=UM_PER_PX)
        prepared = assay.prepare(frame)
        logits = None if prepared.refusal is not None else assay.infer(prepared)
        for out, bench in zip(results, benches, strict=True):
            if logits is None:  # refused by a quality gate: no model, no case thresholds
                assert prepared.refusal is not None
                out.append(bench.store_result(prepared.refusal, f.image))
            else:
                out.append(bench.finish(assay, prepared, logits, f.image))
    return results


def run_slide(assay: Her2Assay, fields: Sequence[SlideField], spec: SlideSpec,
              benches: Sequence[CaseBench]) -> list[CaseOutcome]:
    """One slide through the whole case workflow on every bench; one outcome per bench."""
    controls = [f for f in fields if f.role == "control"]
    tumours = [f for f in fields if f.role == "tumour" and f.duplicate_of is None]
    for b in benches:
        b.cases.start_case(CASE_ID, source="cli")
        b.cases.start_control(CONTROL_LEVEL, source="cli")
    show_fields(assay, controls, benches, first_seq=1)
    checks: list[ControlCheck] = []
    for b in benches:
        check = b.cases.end_control(source="cli")
        assert isinstance(check, ControlCheck)  # a HER2 case's
        checks.append(check)
    shown = show_fields(assay, tumours, benches, first_seq=len(controls) + 1)
    truth = slide_truth(fields)[0]
    outcomes = []
    for bench, check, results in zip(benches, checks, shown, strict=True):
        summary = bench.cases.end_case(None, source="cli")
        outcomes.append(CaseOutcome(
            seed=spec.seed, dab_scale=spec.dab_scale, calibration=bench.calibration,
            control_valid=check.valid, ratio=check.ratio, truth=truth,
            score=summary["score"], control_reasons=check.reasons,
            borderline=tuple(summary["borderline"]),
            field_truth=tuple(_truth_of(f.score) for f in tumours),
            field_scores=tuple(_score_of(r) for r in results)))
    return outcomes


def evaluate(assay: Her2Assay, seeds: Sequence[int], scales: Sequence[float], *,
             progress: bool = False) -> list[CaseOutcome]:
    """Every slide at every strength, calibration on and off, each in fresh stores."""
    jobs = [(seed, scale) for scale in scales for seed in seeds]
    outcomes: list[CaseOutcome] = []
    cfg, context = assay.cfg, assay.field_context
    try:
        with tempfile.TemporaryDirectory(prefix="eval_cases_") as tmp:
            for n, (seed, scale) in enumerate(tqdm(jobs, desc="slides x strengths",
                                                   disable=not progress)):
                spec = slide_spec(seed, scale)
                fields = generate_slide(spec)  # once for both settings
                benches = [CaseBench(cfg, Path(tmp) / f"{n:04d}_{'on' if on else 'off'}.sqlite",
                                     calibration=on) for on in SETTINGS]
                try:
                    outcomes += run_slide(assay, fields, spec, benches)
                finally:
                    for b in benches:
                        b.close()
    finally:
        # The assay is shared: hand it back with its own configuration and case context.
        assay.cfg, assay.field_context = cfg, context
    return outcomes


# ---------------------------------------------------------------------------- figures


def _fraction(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def setting_stats(outcomes: Sequence[CaseOutcome]) -> SettingStats:
    """Pass rate and accuracies of one setting's outcomes (all slides, then valid ones)."""
    valid = [o for o in outcomes if o.control_valid]
    fields = sum(len(o.field_truth) for o in outcomes)
    valid_fields = sum(len(o.field_truth) for o in valid)
    return SettingStats(
        slides=len(outcomes),
        control_pass=_fraction(len(valid), len(outcomes)),
        case_accuracy=_fraction(sum(o.case_correct for o in outcomes), len(outcomes)),
        field_accuracy=_fraction(sum(o.fields_correct for o in outcomes), fields),
        valid_slides=len(valid),
        case_accuracy_when_valid=(_fraction(sum(o.case_correct for o in valid), len(valid))
                                  if valid else None),
        field_accuracy_when_valid=(_fraction(sum(o.fields_correct for o in valid),
                                             valid_fields) if valid else None),
    )


def scale_stats(outcomes: Sequence[CaseOutcome]) -> list[ScaleStats]:
    """Figures per stain strength, in increasing strength."""
    rows = []
    for scale in sorted({o.dab_scale for o in outcomes}):
        here = [o for o in outcomes if o.dab_scale == scale]
        on = [o for o in here if o.calibration]
        off = [o for o in here if not o.calibration]
        # The ratio is measured from the control's cells before any calibration: the same
        # for both settings, so it is taken once per slide.
        ratios = [o.ratio for o in on if o.ratio is not None]
        rows.append(ScaleStats(
            dab_scale=scale,
            ratio_mean=statistics.fmean(ratios) if ratios else None,
            ratio_sd=statistics.stdev(ratios) if len(ratios) > 1 else None,
            ratios_measured=len(ratios), on=setting_stats(on), off=setting_stats(off)))
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def _ratio(row: ScaleStats) -> str:
    if row.ratio_mean is None:
        return "-"
    sd = "-" if row.ratio_sd is None else f"{row.ratio_sd:.2f}"
    return f"{row.ratio_mean:.2f} +- {sd}"


# (group, column, width): two header lines, one row per strength.
_COLUMNS = (
    ("dab", "scale", 5), ("", "slides", 6),
    ("control pass %", "on", 5), ("", "off", 5), ("control ratio", "mean +- sd", 13),
    ("case acc. %", "on", 5), ("", "off", 5), ("field acc. %", "on", 5), ("", "off", 5),
    ("case acc. % | control passed", "on (n)", 10), ("", "off (n)", 10),
)


def _row_cells(r: ScaleStats) -> list[str]:
    return [f"{r.dab_scale:.2f}", str(r.on.slides), _pct(r.on.control_pass),
            _pct(r.off.control_pass), _ratio(r), _pct(r.on.case_accuracy),
            _pct(r.off.case_accuracy), _pct(r.on.field_accuracy), _pct(r.off.field_accuracy),
            f"{_pct(r.on.case_accuracy_when_valid)} ({r.on.valid_slides})",
            f"{_pct(r.off.case_accuracy_when_valid)} ({r.off.valid_slides})"]


def format_table(rows: Sequence[ScaleStats]) -> str:
    """The figures as a fixed-width text table (for the closing note)."""
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, (_, _, w) in zip(cells, _COLUMNS, strict=True))

    # A group title spans its own column and the untitled ones after it.
    spans: list[tuple[str, int]] = []
    for group, _, width in _COLUMNS:
        if group or not spans:
            spans.append((group, width))
        else:
            spans[-1] = (spans[-1][0], spans[-1][1] + 2 + width)
    header = "  ".join(g.center(w) for g, w in spans)
    columns = line([c for _, c, _ in _COLUMNS])
    body = [line(_row_cells(r)) for r in rows]
    return "\n".join([header, columns, "-" * len(columns), *body])


def missed_with_valid_control(outcomes: Sequence[CaseOutcome]) -> list[str]:
    """One line per wrong case score whose control passed: the errors a pathologist sees."""
    return [f"seed {o.seed} at {o.dab_scale:g}, calibration {'on' if o.calibration else 'off'}: "
            f"case {o.score or NOT_SCORABLE}, truth {o.truth}; fields "
            f"{'/'.join(map(str, o.field_scores))} vs {'/'.join(map(str, o.field_truth))}; "
            + (f"flagged borderline ({'; '.join(o.borderline)})" if o.borderline
               else "not flagged borderline")
            for o in outcomes if o.control_valid and not o.case_correct]


def plot(rows: Sequence[ScaleStats], path: Path) -> None:
    """Control pass rate and case-score accuracy against stain strength, on and off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.dab_scale for r in rows]

    def pct(values: Sequence[float | None]) -> list[float]:
        return [np.nan if v is None else 100 * v for v in values]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, pct([r.on.control_pass for r in rows]), "o-", label="calibration on")
    left.plot(x, pct([r.off.control_pass for r in rows]), "s--", label="calibration off")
    left.set_title("3+ control passes")
    left.set_ylabel("control pass rate (%)")
    right.plot(x, pct([r.on.case_accuracy for r in rows]), "o-", label="calibration on")
    right.plot(x, pct([r.off.case_accuracy for r in rows]), "s--", label="calibration off")
    right.plot(x, pct([r.on.case_accuracy_when_valid for r in rows]), "^:",
               label="on, control passed")
    right.set_title("case score = pooled truth")
    right.set_ylabel("case-score accuracy (%)")
    for ax in (left, right):
        ax.set_xlabel("stain-run strength (dab_scale; 1 = usual)")
        ax.set_ylim(-5, 105)
        ax.axvline(1.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower center", fontsize=8)
    n = rows[0].on.slides if rows else 0
    fig.suptitle(f"Positive control and calibration on generated slides ({n} per strength)")
    save_chart(fig, path, dpi=100)


def to_json(rows: Sequence[ScaleStats], outcomes: Sequence[CaseOutcome],
            meta: dict[str, object]) -> str:
    """All numbers: the run's settings, the figures per strength and every case."""
    return json.dumps({"run": meta, "per_scale": [asdict(r) for r in rows],
                       "cases": [asdict(o) for o in outcomes]}, indent=2) + "\n"


# -------------------------------------------------------------------------------- CLI


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: not a list of numbers") from exc
    if not values:
        raise argparse.ArgumentTypeError("--scales: at least one strength")
    bad = [v for v in values if not 0.05 <= v <= 3.0]
    if bad:
        raise argparse.ArgumentTypeError(f"--scales: {bad} outside 0.05..3 (the generator's "
                                         "range)")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick replaces --slides and --scales."""
    ap = argparse.ArgumentParser(prog="python -m tools.eval_cases", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=_positive, default=DEFAULT_SLIDES,
                    help=f"slides per strength (default {DEFAULT_SLIDES})")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED,
                    help=f"first slide seed (default {DEFAULT_SEED}; the tests use 3, 5, 7, 11)")
    ap.add_argument("--scales", type=_scales, default=DEFAULT_SCALES,
                    help="comma-separated stain-run strengths (default "
                         f"{','.join(str(s) for s in DEFAULT_SCALES)})")
    ap.add_argument("--out", type=Path, default=Path("docs/img/eval_cases.png"),
                    help="the plot (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_SLIDES} slides at {','.join(map(str, QUICK_SCALES))}")
    args = ap.parse_args(argv)
    if args.quick:
        args.slides, args.scales = QUICK_SLIDES, QUICK_SCALES
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: slide seeds are not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation, print the table, write the plot (and the JSON)."""
    args = parse_args(argv)
    # A failed control is logged as a warning by the workflow; here it is what is being
    # counted, so only errors reach the terminal.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    seeds = [args.seed + i for i in range(args.slides)]
    t0 = time.perf_counter()
    with Her2Assay.from_config(Config()) as assay:
        model = {"name": assay.model.name, "sha256": assay.model.sha256,
                 "precision": assay.model.precision}
        outcomes = evaluate(assay, seeds, args.scales, progress=True)
    seconds = time.perf_counter() - t0
    rows = scale_stats(outcomes)
    print(format_table(rows))
    missed = missed_with_valid_control(outcomes)
    print(f"wrong case scores with a passed control: {len(missed)}")
    for line in missed:
        print(f"  {line}")
    print(f"{len(seeds)} slides x {len(args.scales)} strengths x 2 settings in {seconds:.0f} s; "
          f"seeds {seeds[0]}..{seeds[-1]}; model {model['name']} {model['sha256'][:16]}")
    plot(rows, args.out)
    print(f"plot: {args.out}")
    if args.json is not None:
        meta = {"slides": args.slides, "seeds": seeds, "scales": list(args.scales),
                "control_level": CONTROL_LEVEL, "control_fields": CONTROL_FIELDS,
                "tumour_fields": TUMOUR_FIELDS, "width": WIDTH, "height": HEIGHT,
                "um_per_px": UM_PER_PX, "model": model, "seconds": round(seconds, 1)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(to_json(rows, outcomes, meta), encoding="utf-8")
        print(f"numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
