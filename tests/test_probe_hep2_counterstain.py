"""The counterstain probe: its looks, its specimens, its summary, and a small run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools import probe_hep2_counterstain as probe
from tools.synth import camera_looks


def test_the_counterstain_reddens_the_cells_and_not_the_background() -> None:
    cells = np.zeros((60, 60), np.int32)
    cells[10:50, 10:50] = 1
    nuclei = np.zeros_like(cells)
    nuclei[25:35, 25:35] = 1
    black = np.zeros((60, 60, 3), np.uint8)
    red = camera_looks.red_counterstain(black, cells, nuclei, 0.5, 100.0, 0.1,
                                        np.random.default_rng(0)).astype(int)
    cyto, nucleus = red[15, 15], red[30, 30]
    assert 70 <= cyto[0] <= 130 and cyto[1] == round(0.1 * cyto[0]) and cyto[2] == 0
    assert nucleus[0] == pytest.approx(0.6 * cyto[0], abs=2)  # a nucleus at 0.6
    assert (red[0, :] == 0).all()  # no cell: no counterstain
    # A monochrome camera behind the long-pass filter adds the red to its grey.
    mono = camera_looks.monochrome_sum(red.astype(np.uint8), 0.5)
    assert (mono[..., 0] == mono[..., 2]).all()
    assert mono[15, 15, 1] == round(cyto[1] + 0.5 * cyto[0])


def test_specimens_cover_every_level_and_cycle_the_patterns() -> None:
    todo = probe.cases(2, 5)
    assert [level for level, _ in todo] == [name for name, _ in probe.LEVELS] * 2
    assert [spec.seed for _, spec in todo] == list(range(5, 13))
    negatives = [spec for level, spec in todo if level == "negative"]
    assert all(spec.patterns == (("negative", 1.0),) and spec.intensity is None
               for spec in negatives)
    positives = {spec.patterns[0][0] for level, spec in todo if level != "negative"}  # type: ignore[index]
    assert len(positives) == 6 and "negative" not in positives


def test_the_summary_compares_each_look_with_its_baseline() -> None:
    def row(look: str, seed: int, **kw: object) -> probe.Scored:
        base = dict(seed=seed, level="negative", look=look, truth_pattern="negative",
                    code=None, positive=False, intensity=5.0, pattern="negative",
                    negative_look_share=1.0)
        return probe.Scored(**{**base, **kw})  # type: ignore[arg-type]
    rows = [row("long_pass", 1), row("long_pass", 2),
            row("red 40", 1, code="wrong_stain", positive=None, intensity=None, pattern=None),
            row("red 40", 2, positive=True, intensity=20.0, pattern="homogeneous",
                negative_look_share=0.2),
            row("mono", 1), row("mono red 40", 1, intensity=10.0)]
    table = {r["look"]: r for r in probe.summary(rows)}
    assert table["red 40"]["refused"] == {"wrong_stain": 1}
    assert table["red 40"]["positive"] == 1 and table["red 40"]["intensity_ratio"] == 4.0
    assert table["red 40"]["pattern_unchanged"] == "0/1"
    assert table["mono red 40"]["intensity_ratio"] == 2.0  # against "mono", not long_pass
    assert "wrong_stain 1" in probe.format_summary(probe.summary(rows))


def test_a_small_run_prints_every_look_and_draws_them(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--per-level", "1", "--looks", "long_pass", "mono red 40",
                       "--out-dir", str(tmp_path), "--json", str(tmp_path / "n.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("long_pass ") == len(probe.LEVELS)
    assert out.count("mono red 40 ") == len(probe.LEVELS)
    assert (tmp_path / "hep2_counterstain.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "n.json").read_text())["rows"]
    assert len(rows) == 2 * len(probe.LEVELS)
    assert {probe.outcome(probe.Scored(**r)) for r in rows} <= {n for n, _ in probe.OUTCOMES}
