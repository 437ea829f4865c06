"""Reloading the config while running: live sections apply, others wait for a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.config import Config, ConfigError
from appliance.service.reload import reload_config


@pytest.fixture(scope="module")
def assay() -> Her2Assay:
    return Her2Assay.from_config(Config())


def test_live_sections_apply_and_the_rest_waits(tmp_path: Path, assay: Her2Assay) -> None:
    before = assay.cfg
    path = tmp_path / "eyepiece.toml"
    path.write_text('[optics]\nobjective = "40x"\n[display]\nsink = "none"\n', encoding="utf-8")
    try:
        outcome = reload_config(assay, path)
        assert outcome.applied == ("optics",)
        assert outcome.needs_restart == ("display",)
        assert assay.cfg.optics.objective == "40x"
        assert assay.cfg.display == before.display  # not half-applied
    finally:
        assay.cfg = before


def test_an_invalid_file_changes_nothing(tmp_path: Path, assay: Her2Assay) -> None:
    before = assay.cfg
    path = tmp_path / "bad.toml"
    path.write_text('[optics]\nobjective = "63x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"optics\.objective"):
        reload_config(assay, path)
    assert assay.cfg is before
