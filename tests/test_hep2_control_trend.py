"""A kit control's readings over runs: the Westgard rules on the lab's baseline, the
chart, and `appliance case controls` on a real store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.hep2.control_trend import (
    ControlReading,
    control_trend,
)
from appliance.config import Config, ConfigError, with_overrides
from appliance.outputs import casebook
from appliance.outputs.qc_chart import HEIGHT, WIDTH, render_chart
from appliance.outputs.store import ResultStore

# A baseline of 20 readings with mean 100 and SD 10 exactly (10 at 90, 10 at 110 give
# SD 10 * sqrt(20/19); scaled so that the sample SD is 10).
_HALF = 10 * (19 / 20) ** 0.5
BASELINE = [100 + (_HALF if i % 2 else -_HALF) for i in range(20)]


def reading(i: int, units: float | None, *, calibrated: bool = True, valid: bool = True,
            expected: str = "homogeneous") -> ControlReading:
    return ControlReading(decided_at=f"2026-11-{1 + i // 24:02d}T{i % 24:02d}:00:00.000+00:00",
                          case_id=f"c-{i}", expected=expected, valid=valid, units=units,
                          calibrated=calibrated)


def trend_after(*units: float):  # type: ignore[no-untyped-def]
    readings = [reading(i, u) for i, u in enumerate([*BASELINE, *units])]
    return control_trend(readings, "homogeneous")


def test_the_baseline_sets_the_mean_the_sd_and_the_suggested_range() -> None:
    t = trend_after()
    assert t.mean == pytest.approx(100.0) and t.sd == pytest.approx(10.0)
    assert t.suggested_range == (80.0, 120.0)
    assert not t.rejected and all(p.rules == () for p in t.points)


@pytest.mark.parametrize(("units", "rules"), [
    ((100.0, 125.0), ("1-2s",)),  # a warning only
    ((100.0, 135.0), ("1-2s", "1-3s")),
    ((122.0, 123.0), ("1-2s", "2-2s")),
    ((75.0, 125.0), ("1-2s",)),  # 5 SD from the run before: no rule across runs (R-4s)
    ((112.0, 112.0, 112.0, 112.0), ("4-1s",)),
    ((95.0,) * 10, ("10x",)),
])
def test_each_westgard_rule_flags_the_reading_that_breaks_it(
        units: tuple[float, ...], rules: tuple[str, ...]) -> None:
    t = trend_after(*units)
    assert t.points[-1].rules == rules
    assert (t.points[-1] in t.rejected) == (rules != ("1-2s",))


def test_too_few_calibrated_readings_flag_nothing() -> None:
    readings = [reading(i, 100.0 + i) for i in range(19)]
    readings += [reading(19, 500.0, calibrated=False), reading(20, None, valid=False)]
    t = control_trend(readings, "homogeneous")
    assert t.baseline_n == 19 and t.mean is None and t.suggested_range is None
    assert all(p.z is None and p.rules == () for p in t.points)
    with pytest.raises(ValueError, match="at least 2"):
        control_trend(readings, "homogeneous", baseline=1)


def test_a_failed_check_is_judged_but_does_not_set_the_baseline() -> None:
    readings = [reading(0, 300.0, valid=False)]  # a failed run first
    readings += [reading(i + 1, u) for i, u in enumerate(BASELINE)]
    t = control_trend(readings, "homogeneous")
    assert t.mean == pytest.approx(100.0) and t.baseline_n == 20
    assert "1-3s" in t.points[0].rules  # still on the chart, and judged


def test_uncalibrated_and_other_controls_stay_off_the_chart() -> None:
    readings = [reading(i, u) for i, u in enumerate(BASELINE)]
    readings.append(reading(20, 300.0, calibrated=False))  # units of another scale
    readings.append(reading(21, 5.0, expected="negative"))
    t = control_trend(readings, "homogeneous")
    assert len(t.points) == 21 and t.points[-1].z is None and t.points[-1].rules == ()
    picture = render_chart(t, "Kit control AC-1")
    assert picture.shape == (HEIGHT, WIDTH, 3)


def test_the_chart_marks_a_rejected_reading_in_red() -> None:
    calm = render_chart(trend_after(100.0), "calm")
    alarm = render_chart(trend_after(135.0), "alarm")
    red = np.array([210, 30, 30])

    def reds(img: np.ndarray) -> int:
        return int((np.abs(img.astype(int) - red).sum(axis=2) < 30).sum())
    # The 3 SD lines are red in both; the rejected reading adds its red dot.
    assert reds(alarm) > reds(calm) + 50


def store_controls(path: Path, units: list[float], lots: list[str] | None = None) -> None:
    """Stored HEp-2 cases, each with one positive kit control decision (as the workflow
    stores them), a day apart; ``lots``: each one's kit lot (none recorded by default)."""
    with ResultStore(path) as store:
        for i, u in enumerate(units):
            case_id = f"run-{i:02d}"
            at = f"2026-11-{1 + i:02d}T08:00:00.000+00:00"
            check = {"expected": "homogeneous", "valid": True, "reasons": [],
                     "intensity": {"level": "strong", "value": u, "calibrated": True},
                     **({"kit_lot": lots[i]} if lots else {})}

            def work(conn, case_id=case_id, at=at, check=check):  # type: ignore[no-untyped-def]
                casebook.insert_case(conn, case_id, at=at, by="cli", assay="hep2")
                casebook.insert_check(conn, case_id, control_round=1, expected="homogeneous",
                                      at=at, valid=True, check=check)
                casebook.close_case(conn, case_id, at=at, by="cli", summary={})
            store.write_with(work, flush_backlog=False)


def test_case_controls_prints_the_chart_and_fails_on_a_rejected_run(tmp_path: Path) -> None:
    from tests.test_case_service import appliance

    db = tmp_path / "r.sqlite"
    store_controls(db, [*BASELINE, 101.0, 140.0])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'assay = "hep2"\n[store]\npath = "{db}"\n', encoding="utf-8")
    done = appliance("case", "controls", "--chart", str(tmp_path / "lj.png"), "--config",
                     str(cfg), cwd=tmp_path)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 1, done.stderr  # the latest run breaks 1-3s
    out = done.stdout
    assert "Kit control AC-1 nuclear homogeneous: 22 readings" in out
    assert ("target: mean 100.0, SD 10.0 units from the first 20 calibrated readings of "
            "passed checks") in out
    assert "suggested hep2.control.positive_units = [80, 120]" in out
    assert out.rstrip().endswith("valid  1-2s 1-3s REJECT")
    chart = cv2.imread(str(tmp_path / "lj.png"))
    assert chart is not None and chart.shape == (HEIGHT, WIDTH, 3)
    listed = appliance("case", "controls", "--json", "--last", "2", "--config", str(cfg),
                       cwd=tmp_path)
    assert isinstance(listed, subprocess.CompletedProcess) and listed.returncode == 1
    doc = json.loads(listed.stdout)
    assert [r["case_id"] for r in doc["readings"]] == ["run-20", "run-21"]
    # Two shown, judged on the baseline of the whole history, not on the two alone.
    assert doc["baseline_n"] == 20 and doc["mean"] == pytest.approx(100.0)
    assert doc["established"] is False and doc["readings"][-1]["rules"] == ["1-2s", "1-3s"]
    bad = appliance("case", "controls", "--expected", "AC-99", "--config", str(cfg),
                    cwd=tmp_path)
    assert isinstance(bad, subprocess.CompletedProcess)
    assert bad.returncode == 2 and "neither 'negative' nor a pattern" in bad.stderr


def test_the_target_stays_fixed_however_many_readings_are_shown() -> None:
    # A lamp that reads 30 units (3 SD) brighter from run 21 on: judged on the first 20
    # runs, every run since is rejected, the newest 20 shown too.
    t = trend_after(*(130.0 + (1 if k % 2 else -1) for k in range(40)))
    shown = t.last(20)
    assert len(shown.points) == 20 and shown.mean == t.mean and shown.baseline_n == 20
    assert all(p.rejected for p in shown.points) and "10x" in shown.points[-1].rules
    # The same 20 readings as their own baseline would take the shift in as normal.
    alone = control_trend([p.reading for p in shown.points], "homogeneous")
    assert alone.mean == pytest.approx(130.0) and not alone.rejected


def test_the_labs_established_target_judges_from_the_first_reading() -> None:
    readings = [reading(i, u) for i, u in enumerate([100.0, 104.0, 131.0])]
    t = control_trend(readings, "homogeneous", established=(100.0, 10.0))
    assert t.established and t.baseline_n == 0 and t.suggested_range == (80.0, 120.0)
    assert [p.rules for p in t.points] == [(), (), ("1-2s", "1-3s")]
    assert t.basis == "as the lab established them"
    with pytest.raises(ValueError, match="SD must be above 0"):
        control_trend(readings, "homogeneous", established=(100.0, 0.0))


def test_case_controls_takes_the_labs_target_and_the_lots_first_day(tmp_path: Path) -> None:
    from tests.test_case_service import appliance

    db = tmp_path / "r.sqlite"
    # An old lot read about 60 units (1-10 Nov), the new one about 100 (11 Nov on).
    store_controls(db, [60.0] * 10 + [98.0, 103.0, 99.0, 101.0])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'assay = "hep2"\n[store]\npath = "{db}"\n'
                   "[hep2.control]\npositive_target = [100.0, 4.0]\n"
                   'target_since = "2026-10-01"\n', encoding="utf-8")
    run = appliance("case", "controls", "--json", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(run, subprocess.CompletedProcess) and run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["established"] is True and doc["mean"] == 100.0 and doc["sd"] == 4.0
    assert len(doc["readings"]) == 14 and "1-3s" in doc["readings"][0]["rules"]
    lot = appliance("case", "controls", "--since", "2026-11-11T00:00+00:00", "--config",
                    str(cfg), cwd=tmp_path)
    assert isinstance(lot, subprocess.CompletedProcess) and lot.returncode == 0, lot.stderr
    assert "4 readings" in lot.stdout and "REJECT" not in lot.stdout
    assert "target: mean 100.0, SD 4.0 units as the lab established them" in lot.stdout
    # --target overrides the config; a bad --since is named.
    strict = appliance("case", "controls", "--since", "2026-11-11T00:00+00:00", "--target",
                       "90", "2", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(strict, subprocess.CompletedProcess) and strict.returncode == 1
    bad = appliance("case", "controls", "--since", "last tuesday", "--config", str(cfg),
                    cwd=tmp_path)
    assert isinstance(bad, subprocess.CompletedProcess)
    assert bad.returncode == 2 and "--since 'last tuesday'" in bad.stderr


@pytest.mark.parametrize("bad", [[100.0], [100.0, 0.0], [0.0, 5.0], [100.0, 5.0, 1.0]])
def test_a_malformed_positive_target_is_named(bad: list[float]) -> None:
    with pytest.raises(ConfigError, match=r"hep2\.control\.positive_target"):
        with_overrides(Config(), {"hep2.control.positive_target": bad})


def test_a_malformed_kit_lot_is_named() -> None:
    with pytest.raises(ConfigError, match=r"hep2\.control\.kit_lot"):
        with_overrides(Config(), {"hep2.control.kit_lot": "lot 7; DROP"})
    assert with_overrides(Config(), {"hep2.control.kit_lot": "E231107AB"})


def test_case_controls_charts_one_kit_lot(tmp_path: Path) -> None:
    from tests.test_case_service import appliance

    db = tmp_path / "r.sqlite"
    store_controls(db, [60.0, 61.0, 100.0, 101.0], lots=["A1", "A1", "B2", "B2"])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'assay = "hep2"\n[store]\npath = "{db}"\n'
                   '[hep2.control]\nkit_lot = "B2"\n', encoding="utf-8")
    run = appliance("case", "controls", "--json", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(run, subprocess.CompletedProcess) and run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert [(r["units"], r["kit_lot"]) for r in doc["readings"]] == [(100.0, "B2"),
                                                                     (101.0, "B2")]
    every = appliance("case", "controls", "--lot", "", "--config", str(cfg), cwd=tmp_path)
    assert isinstance(every, subprocess.CompletedProcess) and every.returncode == 0
    assert "4 readings" in every.stdout
    assert any(line.split()[1:3] == ["run-00", "lot"] and "A1" in line
               for line in every.stdout.splitlines())


def test_a_malformed_target_since_is_named() -> None:
    with pytest.raises(ConfigError, match=r"hep2\.control\.target_since.*not an ISO date"):
        with_overrides(Config(), {"hep2.control.target_since": "15/11/2026"})
    assert with_overrides(Config(), {"hep2.control.target_since": "2026-11-15"})
    with pytest.raises(ConfigError, match=r"hep2\.control\.target_since.*first day"):
        with_overrides(Config(), {"hep2.control.positive_target": [100.0, 4.0]})


def test_a_failed_run_is_judged_but_not_carried_into_the_next_rules() -> None:
    readings = [reading(i, u) for i, u in enumerate(BASELINE)]
    readings.append(reading(20, 135.0, valid=False))  # 1-3s: the run failed
    readings.append(reading(21, 122.0))  # the repeat, beyond 2 SD on the same side
    t = control_trend(readings, "homogeneous")
    assert t.points[-2].rejected and t.points[-1].rules == ("1-2s",)
    readings[20] = reading(20, 135.0)  # the same reading in a run that passed
    assert control_trend(readings, "homogeneous").points[-1].rules == ("1-2s", "2-2s")
