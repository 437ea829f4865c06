"""The config file: defaults for everything; errors name the key and the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.config import (
    Config,
    ConfigError,
    config_from_dict,
    describe_defaults,
    load_config,
    with_overrides,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_defaults_load_and_hash_is_stable() -> None:
    assert load_config() == Config()
    assert load_config().sha256() == Config().sha256()


def test_defaults_text_is_valid_toml_that_loads_to_the_defaults(tmp_path: Path) -> None:
    text = describe_defaults()
    path = tmp_path / "eyepiece.toml"
    path.write_text(text, encoding="utf-8")
    assert tomllib.loads(text)
    assert load_config(path) == Config()


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"her2": {"rules": {"positive_pct": 5}}}, "her2.rules.positive_pct", "unknown key"),
    ({"her2": {"rules": {"positive_percent": 300}}}, "her2.rules.positive_percent", "maximum"),
    ({"her2": {"rules": {"min_tumour_cells": 2.5}}}, "her2.rules.min_tumour_cells", "integer"),
    ({"her2": {"rules": {"min_tumour_cells": True}}}, "her2.rules.min_tumour_cells", "integer"),
    ({"overlay": {"enabled": "yes"}}, "overlay.enabled", "true or false"),
    ({"inference": {"precision": "int4"}}, "inference.precision", "not one of"),
    ({"her2": {"measure": {"intensity_thresholds": [0.4, 0.2, 0.6]}}},
     "her2.measure.intensity_thresholds", "increasing"),
    ({"her2": {"stain": {"dab": [0.2, 0.5]}}}, "her2.stain.dab", "3 non-negative"),
    ({"optics": {"objective": "63x"}}, "optics.objective", "neither"),
    ({"optics": {"objectives": {"63x": -1.0}}}, "optics.objectives.63x", "not in (0, 10]"),
    ({"source": {"uri": "rtsp://camera"}}, "source.uri", "replay"),
    ({"her2": "strict"}, "her2", "table"),
])
def test_errors_name_key_and_reason(data: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert err.value.key == key
    assert words in err.value.reason
    assert key in str(err.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[her2\nrules = 3", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_file_values_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[optics]\nobjective = "40x"\n[her2.rules]\nmin_tumour_cells = 50\n',
                    encoding="utf-8")
    cfg = load_config(path)
    assert cfg.optics.objective == "40x"
    assert cfg.her2.rules.min_tumour_cells == 50
    assert cfg.sha256() != Config().sha256()
    flagged = with_overrides(cfg, {"store.path": "/tmp/x.sqlite", "optics.objective": "10x"})
    assert flagged.store.path == "/tmp/x.sqlite"
    assert flagged.optics.objective == "10x"
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"store.nope": 1})
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"optics.objective": "100x"})
