"""The focus probe: the same cells at every defocus, and its figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools import probe_hep2_focus as probe


def test_the_same_cells_are_drawn_at_every_defocus() -> None:
    sharp = list(probe.cells_at(1, 0.5, 0.0, 996_900))
    blurred = list(probe.cells_at(1, 0.5, 2.0, 996_900))
    assert [k for k, _, _ in sharp] == list(range(len(probe.NAMES)))
    for (k1, g1, m1), (k2, g2, m2) in zip(sharp, blurred, strict=True):
        assert k1 == k2 and np.array_equal(m1, m2) and g1.shape == g2.shape
    # Blur takes the fine detail: the cells' pixels differ less from their smoothed selves.
    assert sum(float(np.abs(np.diff(g.astype(float), axis=1)).mean()) for _, g, _ in blurred) \
        < sum(float(np.abs(np.diff(g.astype(float), axis=1)).mean()) for _, g, _ in sharp)


def test_percentiles_leave_out_what_was_not_measured() -> None:
    got = probe._percentiles([0.0, 1.0, 2.0, 3.0])
    assert got["not_measured"] == 0.25 and got["p50"] == 2.0
    assert got["below_limit"] == pytest.approx(0.25)  # 1.0 of the four is below 1.6
    assert probe._percentiles([0.0])["not_measured"] == 1.0


def test_a_small_run_prints_a_row_per_scale_and_defocus(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out = tmp_path / "focus.json"
    assert probe.main(["--part", "cells", "--per-class", "1", "--scales", "0.5",
                       "--defocus", "0,2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["cells"]
    assert [(r["um_per_px"], r["defocus_um"]) for r in rows] == [(0.5, 0.0), (0.5, 2.0)]
    assert rows[1]["p50"] < rows[0]["p50"]  # blur lowers the sharpness
    assert rows[1]["mean_class_accuracy"] < rows[0]["mean_class_accuracy"]
    assert "cells   0.5 um/px  defocus    2 um" in capsys.readouterr().out


def test_the_chart_is_drawn_again_from_the_rows(tmp_path: Path) -> None:
    rows = {"cells": [{"um_per_px": 0.5, "defocus_um": d, "mean_class_accuracy": a}
                      for d, a in ((0.0, 0.95), (1.0, 0.6))],
            "fields": [{"defocus_um": d, "pattern_accuracy_scored": a, "refused_out_of_focus": r}
                       for d, a, r in ((0.0, 1.0, 0.0), (2.0, 0.1, 0.6))]}
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps(rows), encoding="utf-8")
    chart = tmp_path / "focus.png"
    assert probe.main(["--replot", str(saved), "--out", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        probe.main(["--replot", str(saved)])  # a chart needs somewhere to go


def test_the_looks_asked_are_the_stress_tools_own() -> None:
    from tools.stress_hep2 import FLAT_FIELDED, LOOKS

    assert set(probe.LOOK_NAMES) <= set(LOOKS)
    assert not set(probe.LOOK_NAMES) & set(FLAT_FIELDED)  # those need a flat field made
