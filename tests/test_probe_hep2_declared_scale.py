"""tools.probe_hep2_declared_scale: false doubts and caught objective steps, per threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.assays.hep2.scale import DECLARED_DISAGREES, disagrees
from tools import probe_hep2_declared_scale as probe


def test_the_rule_is_symmetric_and_strict() -> None:
    assert not disagrees(1.0, 1.0) and not disagrees(1.7, 1.0) and not disagrees(1.0, 1.7)
    assert disagrees(1.9, 1.0) and disagrees(1.0, 1.9)
    assert disagrees(1.7, 1.0, factor=1.6)


def test_summary_counts_doubts_at_each_threshold() -> None:
    # Cells' size over the true scale: one field read 1.7 times too coarse, three right.
    table = probe.summarise([1.0, 1.0, 0.9, 1.7])
    assert table["1.6"]["false_doubts"] == pytest.approx(0.25)
    assert table[f"{DECLARED_DISAGREES:g}"]["false_doubts"] == 0.0
    # Declared twice too coarse (x2): a field read at the truth is 0.5 of the declared.
    assert table[f"{DECLARED_DISAGREES:g}"]["caught_x2"] == pytest.approx(0.75)
    assert table[f"{DECLARED_DISAGREES:g}"]["caught_x0.25"] == 1.0


def test_the_tool_runs_on_a_few_specimens(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "declared.json"
    assert probe.main(["--specimens", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(the assay's)" in printed and "false doubts" in printed
    numbers = json.loads(out.read_text())
    assert numbers["fields"] + numbers["not_asked_no_signal"] + \
        numbers["not_asked_few_cells"] == 21
