"""The well mix-up probe: its measure, its rates, and a small run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import Hep2Config
from tests.test_hep2_well import cell, field
from tools import probe_hep2_well_mixup as probe

CFG = Hep2Config()


def test_the_check_measures_the_most_different_field() -> None:
    ours = [field([cell("centromere", brightness=60.0)] * 30, f"f{i}.png") for i in range(2)]
    alike = probe.check([*ours, field([cell("centromere", brightness=66.0)] * 30, "g.png")],
                        CFG, 1, "single centromere")
    # The pooled median is 60.
    assert not alike.mixed_up and alike.ratio == pytest.approx(66.0 / 60.0)
    assert not alike.pattern_named and alike.status == "scored"
    foreign = probe.check([*ours, field([cell("golgi", brightness=600.0)] * 12, "x.png")],
                          CFG, 1, "single centromere", "single golgi")
    assert foreign.mixed_up and foreign.ratio == pytest.approx(10.0)
    assert foreign.pattern_named


def test_rates_count_true_and_mixed_up_wells_at_each_limit() -> None:
    def made(mixed: bool, ratio: float, named: bool = False) -> probe.WellCheck:
        return probe.WellCheck(seed=1, mixed_up=mixed, truth="t", foreign="f" if mixed else "",
                               ratio=ratio, pattern_named=named, status="scored")
    checks = [made(False, 1.2), made(False, 2.2, True), made(True, 1.6, True), made(True, 5.0)]
    table = {r["ratio"]: r for r in probe.rates(checks)}
    assert table[2.0] == {"ratio": 2.0, "true_by_intensity": 0.5, "true_either": 0.5,
                          "mixed_by_intensity": 0.5, "mixed_either": 1.0}
    assert table[1.5]["true_by_intensity"] == 0.5 and table[1.5]["mixed_by_intensity"] == 1.0
    assert table[4.0]["true_either"] == 0.5 and table[4.0]["mixed_by_intensity"] == 0.5
    assert "(shipped)" in probe.format_rates(probe.rates(checks), checks)


def test_a_small_run_prints_the_trade_and_draws_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = probe.well_cases
    monkeypatch.setattr(probe, "well_cases", lambda *a: plan(*a)[15:18])  # 3 wells, 3 kinds
    assert probe.main(["--wells", "1", "--fields", "2", "--out-dir", str(tmp_path),
                       "--json", str(tmp_path / "n.json")]) == 0
    out = capsys.readouterr().out
    assert "3 true wells, 3 mixed-up wells" in out
    assert (tmp_path / "hep2_well_mixup.png").stat().st_size > 10_000
    doc = json.loads((tmp_path / "n.json").read_text())
    assert len(doc["wells"]) == 6 and len(doc["rates"]) == len(probe.RATIOS)
    assert [w["mixed_up"] for w in doc["wells"]] == [False, True] * 3
    with pytest.raises(SystemExit):
        probe.parse_args(["--fields", "1"])
