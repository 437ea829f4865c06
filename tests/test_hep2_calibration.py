"""HEp-2 intensity calibration: validity against the camera, the reference-slide computation,
the config update and `appliance calibrate-iif`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from appliance import cli_hep2
from appliance.assays.hep2.calibration import (
    CalibrationError,
    intensity_is_calibrated,
    reference_drift,
    units_per_grey_from_reference,
)
from appliance.assays.hep2.intensity import cell_brightness
from appliance.assays.hep2.segmentation import segment_cells
from appliance.capture.frame import Frame
from appliance.config import (
    Config,
    ConfigError,
    Hep2CellsConfig,
    Hep2IntensityConfig,
    SourceConfig,
    config_from_dict,
    load_config,
)
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
HAS_MODEL = (REPO / "models/hep2/manifest.json").exists()
CELLS = Hep2CellsConfig()
UM_PER_PX = 0.5


def cal_record(exposure_ms: float = 10.0, gain: float = 4.0) -> Hep2IntensityConfig:
    return Hep2IntensityConfig(exposure_ms=exposure_ms, gain=gain, units_per_grey=1.5)


def camera(exposure_us: float = 10_000, gain: float = 4.0) -> SourceConfig:
    return SourceConfig(uri="v4l2:/dev/video0", exposure_us=exposure_us, gain=gain)


# ---------------------------------------------------------------- is it calibrated?


def test_calibrated_when_camera_pins_the_calibration_settings() -> None:
    ok, why = intensity_is_calibrated(camera(), cal_record())
    assert ok and "10000 us" in why and "1.5 units per grey" in why
    # A driver's rounding (whole lines, 100 µs steps) stays the same setting.
    assert intensity_is_calibrated(camera(10_050, 4.02), cal_record())[0]


def test_exposure_difference_gives_relative_units() -> None:
    ok, why = intensity_is_calibrated(camera(8_000), cal_record())
    assert not ok
    assert why == "camera exposure 8000 us differs from the calibration's 10000 us: " \
                  "relative units"
    assert not intensity_is_calibrated(camera(10_200), cal_record())[0]  # 2 % off


def test_gain_difference_and_automatic_settings_give_relative_units() -> None:
    ok, why = intensity_is_calibrated(camera(gain=8), cal_record())
    assert not ok and "gain 8 differs from the calibration's 4" in why
    ok, why = intensity_is_calibrated(camera(exposure_us=0), cal_record())
    assert not ok and "automatic" in why and "source.exposure_us" in why
    ok, why = intensity_is_calibrated(camera(gain=0), cal_record())
    assert not ok and "source.gain" in why


def test_no_calibration_record_gives_relative_units() -> None:
    for record in (cal_record(exposure_ms=0), cal_record(gain=0)):
        ok, why = intensity_is_calibrated(camera(), record)
        assert not ok and "calibrate-iif" in why and "relative units" in why


# ---------------------------------------------------------------- from a reference slide


def test_units_per_grey_is_reference_over_median_field() -> None:
    cal = units_per_grey_from_reference([50.0, 40.0, 45.0, 47.0], 90.0)
    assert cal.median_grey == pytest.approx(46.0)
    assert cal.units_per_grey == pytest.approx(90.0 / 46.0)
    assert cal.fields == 4 and 0 < cal.cv < 0.2 and cal.warnings == ()


@pytest.mark.parametrize("greys, match", [
    ([40.0, 41.0], "at least 3"),
    ([40.0, 0.0, 41.0], "field 2 measured 0"),
    ([40.0, 41.0, -3.0], "field 3"),
    ([40.0, float("nan"), 41.0], "field 2"),
    ([40.0, 41.0, 240.0], "field 3.*clip"),
])
def test_reference_refusals(greys: list[float], match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        units_per_grey_from_reference(greys, 100.0)


def test_reference_spread_names_the_field_that_is_off() -> None:
    with pytest.raises(CalibrationError,
                       match=r"field 3 reads 70\.0 grey.*\+73% from the median 40\.5") as err:
        units_per_grey_from_reference([40.0, 41.0, 70.0, 39.0], 100.0)
    assert "coefficient of variation" in str(err.value)
    # Within 20 % the same four fields minus the odd one pass.
    assert units_per_grey_from_reference([40.0, 41.0, 39.0], 100.0).fields == 3


@pytest.mark.parametrize("units", [0.0, -5.0, float("inf")])
def test_reference_units_must_be_positive(units: float) -> None:
    with pytest.raises(CalibrationError, match="reference intensity"):
        units_per_grey_from_reference([40.0, 41.0, 39.0], units)


def test_dim_reference_is_kept_with_a_warning() -> None:
    cal = units_per_grey_from_reference([6.0, 6.5, 6.2], 20.0)
    assert cal.warnings and "noise" in cal.warnings[0]


# ---------------------------------------------------------------- on generated fields


def field(seed: int, intensity: float, exposure: float) -> Hep2Field:
    # One well seen through one camera (camera_seed): what a reference run looks like.
    return generate_hep2_field(Hep2FieldSpec(
        seed=seed, width=480, height=360, um_per_px=UM_PER_PX,
        patterns=(("homogeneous", 1.0),), intensity=intensity, mitotic_fraction=0.0,
        photobleaching=0.0, exposure=exposure, camera_seed=11))


def grey_of(image: np.ndarray) -> float:
    """The assay's measurement without the classifier: median whole-cell brightness."""
    green = image[..., 1].astype(np.float32)
    cells = segment_cells(green, UM_PER_PX, CELLS)
    bright = cell_brightness(green, cells.labels, cells.background_map)
    inside = bright[~cells.touches_edge]
    return float(np.median(inside if inside.size else bright))


@pytest.mark.parametrize("exposure", [1.0, 0.5])
def test_calibration_maps_generated_fields_to_reference_units(exposure: float) -> None:
    reference = 80.0
    greys = [grey_of(field(seed, reference, exposure).image) for seed in (1, 2, 3)]
    cal = units_per_grey_from_reference(greys, reference)
    # At the generator's exposure 1 a grey level is a unit; at half the exposure, two.
    assert cal.units_per_grey == pytest.approx(1.0 / exposure, rel=0.1)
    for seed, truth in ((21, 40.0), (22, 160.0), (23, 80.0)):
        other = field(seed, truth, exposure)
        assert grey_of(other.image) * cal.units_per_grey == pytest.approx(other.intensity,
                                                                          rel=0.1)


# ---------------------------------------------------------------- the config update

CONFIG = (
    "# the lab's box\n"
    "assay = \"hep2\"\n\n"
    "[source]\n"
    "uri = \"v4l2:/dev/video0\"   # the eyepiece camera\n"
    "exposure_us = 20000.0\n"
    "gain = 2.0\n\n"
    "[hep2.intensity]\n"
    "negative_below = 20.0\n"
    "units_per_grey = 1.0  # placeholder until calibrated\n\n"
    "[logging]\n"
    "level = \"INFO\"\n"
)
VALUES = {"exposure_ms": 20.0, "gain": 2.0, "units_per_grey": 1.23457}


def test_update_changes_only_the_calibration_keys() -> None:
    new = cli_hep2.update_config_text(CONFIG, VALUES)
    # The value changes, its comment stays; the missing keys join the end of the table.
    expected = CONFIG.replace(
        "units_per_grey = 1.0  # placeholder until calibrated\n",
        "units_per_grey = 1.23457  # placeholder until calibrated\n"
        "exposure_ms = 20.0\ngain = 2.0\n")
    assert new == expected
    assert tomllib.loads(new)["hep2"]["intensity"] == {"negative_below": 20.0, **VALUES}
    config_from_dict(tomllib.loads(new))


def test_update_keeps_bytes_and_line_endings() -> None:
    crlf = CONFIG.replace("\n", "\r\n")
    new = cli_hep2.update_config_text(crlf, VALUES)
    assert "\n" not in new.replace("\r\n", "")  # no bare newline slipped in
    prefix = crlf[:crlf.index("[hep2.intensity]")]
    suffix = crlf[crlf.index("[logging]"):]
    assert new.startswith(prefix) and new.endswith(suffix)


def test_update_appends_a_missing_table() -> None:
    text = "assay = \"hep2\"\n[source]\nexposure_us = 20000.0\ngain = 2.0"  # no final newline
    new = cli_hep2.update_config_text(text, VALUES)
    assert new.startswith(text + "\n")
    assert tomllib.loads(new)["hep2"]["intensity"] == VALUES
    assert tomllib.loads(cli_hep2.update_config_text("", VALUES))["hep2"]["intensity"] == VALUES


def test_update_refuses_a_form_it_does_not_edit() -> None:
    text = "[hep2]\nintensity = { units_per_grey = 1.0 }\n"
    with pytest.raises(CalibrationError, match="by hand"):
        cli_hep2.update_config_text(text, VALUES)


def test_toml_float_is_always_a_float_literal() -> None:
    assert cli_hep2.toml_float(10.0) == "10.0"
    assert tomllib.loads(f"x = {cli_hep2.toml_float(1e-7)}")["x"] == 1e-7
    with pytest.raises(ValueError):
        cli_hep2.toml_float(float("nan"))


# ---------------------------------------------------------------- the command


class MeasuringAssay:
    """Stands in for Hep2Assay where no classifier is shipped: the same measurement
    (segmentation, brightest-5 % above background, median) reported as the assay does."""

    flat = None  # no flat field: the fields are measured as they are

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: Config) -> MeasuringAssay:
        return cls(cfg)

    def __enter__(self) -> MeasuringAssay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def score(self, frame: Frame) -> Any:
        grey = grey_of(frame.image)
        return SimpleNamespace(intensity_units=grey * self.cfg.hep2.intensity.units_per_grey,
                               cells_interphase=5, reason=None, cells=[SimpleNamespace(
                                   pattern="homogeneous", mitotic=False, touches_edge=False)])


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command")
    cli_hep2.add_parsers(sub, common)
    return ap.parse_args(argv)


def write_fields(tmp: Path, seeds: tuple[int, ...], intensity: float,
                 exposure: float) -> list[str]:
    paths = []
    for seed in seeds:
        path = tmp / f"ref{seed}.png"
        cv2.imwrite(str(path), cv2.cvtColor(field(seed, intensity, exposure).image,
                                            cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    return paths


def test_calibrate_iif_prints_and_writes_the_calibration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_hep2, "Hep2Assay", MeasuringAssay)
    config = tmp_path / "box.toml"
    # The current units_per_grey (1.0 above) is a placeholder; make it 3 to see it undone.
    config.write_bytes(CONFIG.replace("units_per_grey = 1.0", "units_per_grey = 3.0").encode())
    out = tmp_path / "calibrated.toml"
    images = write_fields(tmp_path, (1, 2, 3), 80.0, 0.5)
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--write", str(out),
                  "--config", str(config)])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == 0
    printed = capsys.readouterr().out
    assert "[hep2.intensity]" in printed and "exposure_ms = 20.0" in printed
    # Each field's line says what it was measured on, for the lab's record.
    assert f"{images[0]}: " in printed and "(5 cells; homogeneous AC-1, 100% of cells)" in printed
    cal = load_config(out).hep2.intensity
    assert cal.units_per_grey == pytest.approx(2.0, rel=0.1)  # half the exposure
    assert (cal.exposure_ms, cal.gain) == (20.0, 2.0)
    assert intensity_is_calibrated(load_config(out).source, cal)[0]
    assert config.read_bytes().decode().count("units_per_grey = 3.0") == 1  # source untouched


def test_a_reference_field_says_which_pattern_most_of_its_cells_read_as() -> None:
    def cell(name: str, mitotic: bool = False, edge: bool = False) -> Any:
        return SimpleNamespace(pattern=name, mitotic=mitotic, touches_edge=edge)

    cells = [cell("centromere")] * 3 + [cell("homogeneous")] + [
        cell("homogeneous", mitotic=True)] * 4 + [cell("homogeneous", edge=True)] * 4
    assert cli_hep2.cells_read_as(cells) == "centromere AC-3, 75% of cells"
    assert cli_hep2.cells_read_as(cells[4:]) == "no whole interphase cell"


def test_calibrate_iif_refuses_unpinned_camera(tmp_path: Path) -> None:
    args = parse(["calibrate-iif", "a.png", "b.png", "c.png", "--reference-units", "80"])
    with pytest.raises(ConfigError, match=r"source\.exposure_us"):
        cli_hep2.cmd_calibrate_iif(args, config_from_dict({}))
    cfg = config_from_dict({"source": {"exposure_us": 20000.0}})
    with pytest.raises(ConfigError, match=r"source\.gain"):
        cli_hep2.cmd_calibrate_iif(args, cfg)


def test_calibrate_iif_refuses_too_few_fields_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_hep2, "Hep2Assay", MeasuringAssay)
    images = write_fields(tmp_path, (1, 2), 80.0, 1.0)
    out = tmp_path / "out.toml"
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--write", str(out)])
    cfg = config_from_dict({"source": {"exposure_us": 20000.0, "gain": 2.0}})
    assert cli_hep2.cmd_calibrate_iif(args, cfg) == cli_hep2.EXIT_REFUSED
    assert "at least 3" in capsys.readouterr().err
    assert not out.exists()


def test_calibrate_iif_refuses_an_unreadable_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_hep2, "Hep2Assay", MeasuringAssay)
    images = write_fields(tmp_path, (1, 2), 80.0, 1.0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    args = parse(["calibrate-iif", *images, str(bad), "--reference-units", "80"])
    cfg = config_from_dict({"source": {"exposure_us": 20000.0, "gain": 2.0}})
    assert cli_hep2.cmd_calibrate_iif(args, cfg) == cli_hep2.EXIT_REFUSED
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_MODEL, reason="models/hep2 not trained yet (helper C)")
def test_calibrate_iif_end_to_end_with_the_shipped_classifier(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_fields(tmp_path, (1, 2, 3), 80.0, 1.0)
    args = parse(["calibrate-iif", *images, "--reference-units", "80"])
    cfg = config_from_dict({"source": {"exposure_us": 20000.0, "gain": 2.0}})
    assert cli_hep2.cmd_calibrate_iif(args, cfg) == 0
    printed = capsys.readouterr().out.splitlines()
    line = next(ln for ln in printed if ln.startswith("units_per_grey"))
    assert float(line.split("=")[1]) == pytest.approx(1.0, rel=0.1)
    fields = [ln for ln in printed if ln.startswith(str(tmp_path))]
    assert len(fields) == 3 and all("cells; homogeneous AC-1, " in ln for ln in fields)


# ---------------------------------------------------------------- the periodic check


def test_drift_is_the_reading_at_the_calibration_in_use() -> None:
    drift = reference_drift([40.0, 41.0, 39.0], 80.0, units_per_grey=1.8)
    assert drift.units == pytest.approx(72.0) and drift.percent == pytest.approx(-10.0)
    with pytest.raises(CalibrationError, match="at least 3"):
        reference_drift([40.0, 41.0], 80.0, units_per_grey=1.8)


CALIBRATED = CONFIG.replace("units_per_grey = 1.0  # placeholder until calibrated",
                            "units_per_grey = 2.0\nexposure_ms = 20.0\ngain = 2.0")


@pytest.mark.parametrize(("exposure", "code", "words"), [
    (0.5, 0, "within the 10% tolerance"),  # the calibration's own exposure: no drift
    (0.4, cli_hep2.EXIT_DRIFTED, "beyond the 10% tolerance"),  # the lamp at 80%
])
def test_calibrate_iif_check_reports_the_drift(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        exposure: float, code: int, words: str) -> None:
    monkeypatch.setattr(cli_hep2, "Hep2Assay", MeasuringAssay)
    config = tmp_path / "box.toml"
    config.write_text(CALIBRATED)
    images = write_fields(tmp_path, (1, 2, 3), 80.0, exposure)
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--check",
                  "--config", str(config)])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == code
    printed = capsys.readouterr().out
    assert words in printed
    assert f"{images[0]}: " in printed and " units (5 cells; homogeneous AC-1" in printed
    assert config.read_text() == CALIBRATED  # a check writes nothing


def test_calibrate_iif_check_needs_a_calibration_and_a_tolerance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_hep2, "Hep2Assay", MeasuringAssay)
    images = write_fields(tmp_path, (1, 2, 3), 80.0, 0.5)
    uncalibrated = config_from_dict({"source": {"exposure_us": 20000.0, "gain": 2.0}})
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--check", "5"])
    assert args.check == 5.0
    assert cli_hep2.cmd_calibrate_iif(args, uncalibrated) == cli_hep2.EXIT_REFUSED
    assert "no calibration to check" in capsys.readouterr().err
    config = tmp_path / "box.toml"
    config.write_text(CALIBRATED)
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--check", "0"])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == cli_hep2.EXIT_REFUSED
    assert "positive tolerance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["calibrate-iif", *images, "--reference-units", "80", "--check",
               "--write", "x.toml"])
