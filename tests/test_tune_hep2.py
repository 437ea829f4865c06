"""The HEp-2 specimen-rule tuning tool: its specimens, its figures and its choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from appliance.assays.hep2.patterns import NAMES
from appliance.assays.hep2.types import Hep2Cell
from appliance.config import Config, Hep2IntensityConfig, Hep2SpecimenConfig, with_overrides
from tools import tune_hep2
from tools.eval_hep2 import FIRST_SEED as EVAL_SEED
from tools.eval_hep2 import MIXED_PAIRS, STAINED, specimen_cases
from tools.hep2_dataset import TRAIN_SEEDS
from tools.tune_hep2 import GridPoint, KeptSpecimen, choose, measure, mixed_pairs, tuning_specs

RULES, INTENSITY = Hep2SpecimenConfig(), Hep2IntensityConfig()


def cell(name: str, p: float = 0.9) -> Hep2Cell:
    probs = dict.fromkeys(NAMES, 0.0)
    probs[name] = p
    probs["negative"] = 1.0 - p
    return Hep2Cell(cell_id=0, x=0.0, y=0.0, area_um2=200.0, brightness=80.0, pattern=name,
                    confidence=p, probabilities=probs, mitosis="interphase",
                    mitosis_confidence=0.9, touches_edge=False)


def kept(kind: str, truth: tuple[str, ...], split: dict[str, int]) -> KeptSpecimen:
    cells = tuple(cell(name) for name, n in split.items() for _ in range(n))
    return KeptSpecimen(seed=1, kind=kind, truth=truth, cells=cells, units=80.0, um_per_px=0.5,
                        refused=False)


def test_mixed_pairs_leave_out_look_alikes_and_the_eval_pairs() -> None:
    pairs = mixed_pairs(tune_hep2.FIRST_SEED)
    assert len(pairs) == len(set(pairs)) > 90
    held_out = {frozenset(p) for p in MIXED_PAIRS}
    for a, b in pairs:
        assert a != b and a in STAINED and b in STAINED
        assert frozenset((a, b)) not in held_out
        assert not any({a, b} <= g for g in tune_hep2.LOOK_ALIKES)
    assert ("fine_speckled", "coarse_speckled") not in pairs
    assert mixed_pairs(tune_hep2.FIRST_SEED) == pairs  # seeded
    assert mixed_pairs(tune_hep2.FIRST_SEED + 1) != pairs


def test_tuning_specimens_are_apart_from_the_eval_and_training() -> None:
    specs = tuning_specs(2)
    kinds = [k for k, _ in specs]
    assert kinds.count("single") == 2 * len(STAINED) == kinds.count("mixed")
    assert kinds.count("negative") == 2
    seeds = [s.seed for _, s in specs]
    assert seeds == list(range(tune_hep2.FIRST_SEED, tune_hep2.FIRST_SEED + len(specs)))
    eval_seeds = {c.spec.seed for c in specimen_cases(10)}
    assert not eval_seeds & set(seeds) and EVAL_SEED < tune_hep2.FIRST_SEED
    assert max(seeds) < TRAIN_SEEDS.start
    with pytest.raises(ValueError, match="at least 1"):
        tuning_specs(0)


def test_measure_re_runs_the_rules_at_each_threshold() -> None:
    specimens = [
        kept("single", ("centromere",), {"centromere": 40, "golgi": 8}),  # 17% golgi
        kept("mixed", ("centromere", "golgi"), {"centromere": 40, "golgi": 10}),  # 20% golgi
        KeptSpecimen(2, "mixed", ("homogeneous", "golgi"), (), 0.0, 0.5, True),  # refused
    ]
    strict = measure(specimens, replace(RULES, mixed_share=0.25), INTENSITY)
    assert (strict.single_correct, strict.single_false_second) == (1.0, 0.0)
    assert (strict.mixed_both, strict.not_scorable) == (0.0, 1)
    loose = measure(specimens, replace(RULES, mixed_share=0.15), INTENSITY)
    assert loose.single_false_second == 1.0 and loose.mixed_both == 0.5
    assert loose.mixed_false_pattern == 0.0


def point(sv: float, ms: float, ok: float, false2: float, both: float) -> GridPoint:
    return GridPoint(sv, ms, 0.5, ok, false2, both, 0.0, 0)


def test_choose_keeps_false_seconds_down_then_takes_the_most_found() -> None:
    points = [point(0.3, 0.25, 0.97, 0.02, 0.70), point(0.2, 0.1, 0.97, 0.20, 0.95),
              point(0.25, 0.25, 0.97, 0.04, 0.78), point(0.35, 0.2, 0.97, 0.04, 0.78)]
    chosen = choose(points, RULES, 0.05)
    assert chosen is not None and chosen.mixed_both == 0.78
    # Of the two equal ones, the one nearest the current defaults (0.3, 0.25, 0.5).
    assert (chosen.second_vote, chosen.mixed_share) == (0.25, 0.25)
    assert choose(points, RULES, 0.01) is None
    # A false extra pattern in mixed specimens counts too.
    noisy = replace(point(0.25, 0.25, 0.97, 0.04, 0.78), mixed_false_pattern=0.2)
    pick = choose([points[0], noisy], RULES, 0.05, max_false_pattern=0.1)
    assert pick is not None and pick.mixed_both == 0.70


def test_cli_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        tune_hep2.parse_args(["--rounds", "0"])
    with pytest.raises(SystemExit):
        tune_hep2.parse_args(["--max-false-second", "1.5"])
    with pytest.raises(SystemExit):
        tune_hep2.parse_args(["--max-false-pattern", "-0.1"])


def test_keep_and_sweep_with_the_shipped_model(tmp_path: Path) -> None:
    from appliance.assays.hep2.assay import Hep2Assay

    cfg = with_overrides(Config(), {"assay": "hep2"})
    specs = [s for s in tuning_specs(1) if s[0] != "negative"][:1]
    specs += [s for s in tuning_specs(1) if s[0] == "mixed"][:1]
    with Hep2Assay.from_config(cfg) as assay:
        got = [tune_hep2.keep(assay, kind, spec, i) for i, (kind, spec) in enumerate(specs)]
    assert all(not k.refused and len(k.cells) > 10 for k in got)
    points = tune_hep2.sweep(got, cfg.hep2.specimen, cfg.hep2.intensity)
    grid = len(tune_hep2.SECOND_VOTE) * len(tune_hep2.MIXED_SHARE) * len(
        tune_hep2.MIN_CONFIDENCE)
    assert len(points) == grid
    base = measure(got, cfg.hep2.specimen, cfg.hep2.intensity)
    regions = tune_hep2.sweep_regions(got, cfg.hep2.specimen, cfg.hep2.intensity)
    assert len(regions) == len(tune_hep2.REGION_PRESENCE) * len(tune_hep2.REGION_SHARE)
    assert {(p.second_vote, p.mixed_share) for p in regions} == {
        (base.second_vote, base.mixed_share)}
    png = tmp_path / "t.png"
    tune_hep2.plot(points, choose(points, cfg.hep2.specimen, 1.0), base, png, regions)
    assert png.stat().st_size > 1000


def test_the_region_sweep_moves_only_the_region_thresholds() -> None:
    # AC-1 in every cell, AC-8 faint in 30 of 40 (region head only): found at region
    # share 0.5 and below, not at 0.8.
    cells = [replace(cell("homogeneous"), regions={
        "nucleoplasm": 0.95, "nucleolus": 0.75 if i < 30 else 0.1, "envelope": 0.0,
        "cytoplasm": 0.0}) for i in range(40)]
    mixed = KeptSpecimen(3, "mixed", ("homogeneous", "nucleolar_homogeneous"), tuple(cells),
                         80.0, 0.5, False)
    got = {(p.region_presence, p.region_share): p.mixed_both
           for p in tune_hep2.sweep_regions([mixed], RULES, INTENSITY)}
    assert got[(0.5, 0.5)] == got[(0.7, 0.7)] == 1.0
    assert got[(0.5, 1.0)] == got[(0.8, 0.3)] == 0.0


def test_the_change_is_said_in_specimens() -> None:
    old, new = point(0.3, 0.25, 0.97, 0.03, 0.73), point(0.2, 0.3, 0.97, 0.04, 0.78)
    counts = {"single": 100, "mixed": 100}
    assert tune_hep2._count_change(new, old, counts) == "+5 of 100"
    assert tune_hep2._count_change(new, old, counts, "single") == "+1 of 100"
    assert tune_hep2._count_change(old, new, counts) == "-5 of 100"


def test_measure_passes_each_specimen_its_scale() -> None:
    split = {"nucleolar_homogeneous": 40, "few_nuclear_dots": 20}
    at_20x = kept("single", ("nucleolar_homogeneous",), split)
    at_10x = replace(at_20x, um_per_px=0.95)
    assert measure([at_20x], RULES, INTENSITY).single_false_second == 1.0
    assert measure([at_10x], RULES, INTENSITY).single_false_second == 0.0  # look-alikes
