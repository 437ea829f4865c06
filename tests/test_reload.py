"""Reloading the config while running: live sections apply, others wait for a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2 import flat_field as ff
from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.her2.assay import Her2Assay
from appliance.capture.frame import Frame
from appliance.config import Config, ConfigError, with_overrides
from appliance.service.reload import reload_config
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field


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


# ---------------------------------------------------------------- the HEp-2 section


@pytest.fixture(scope="module")
def hep2() -> Iterator[Hep2Assay]:
    with Hep2Assay.from_config(with_overrides(Config(), {"assay": "hep2"})) as a:
        yield a


@pytest.fixture
def fresh_hep2(hep2: Hep2Assay) -> Iterator[Hep2Assay]:
    """The module's assay, put back as it was after each test."""
    cfg, flat = hep2.cfg, hep2._flat
    yield hep2
    hep2.cfg, hep2._flat = cfg, flat


def write_flat(path: Path, corner: float) -> str:
    """A flat field of a uniform slide whose light falls to ``corner`` at the corners."""
    rng = np.random.default_rng(7)
    frames = [camera_looks.vignetting(camera_looks.uniform_slide(300, 400, rng, 170.0), corner)
              for _ in range(3)]
    return ff.save_flat(ff.flat_from_frames(frames), path)


def flat_config(tmp_path: Path) -> tuple[Path, Path, str]:
    """A HEp-2 config naming a new flat field: (config path, flat path, flat sha256)."""
    flat_path = tmp_path / "flat.json"
    sha = write_flat(flat_path, 0.5)
    path = tmp_path / "eyepiece.toml"
    path.write_text(f'assay = "hep2"\n[hep2.intensity]\nflat_field_file = "{flat_path}"\n',
                    encoding="utf-8")
    return path, flat_path, sha


def test_the_hep2_section_applies_live_but_the_crop_size_waits(
        tmp_path: Path, fresh_hep2: Hep2Assay) -> None:
    before = fresh_hep2.cfg
    path = tmp_path / "eyepiece.toml"
    path.write_text('assay = "hep2"\n[hep2.specimen]\nmixed_share = 0.3\n'
                    '[hep2.cells]\ncrop_px = 96\norientations = 2\n', encoding="utf-8")
    outcome = reload_config(fresh_hep2, path)
    assert outcome.applied == ("hep2",)
    assert outcome.needs_restart == ("hep2.cells.crop_px",)
    assert fresh_hep2.cfg.hep2.specimen.mixed_share == 0.3
    assert fresh_hep2.cfg.hep2.cells.orientations == 2
    # The classifier takes crops of the size it was loaded for until a restart.
    assert fresh_hep2.cfg.hep2.cells.crop_px == before.hep2.cells.crop_px


def test_a_flat_field_is_taken_up_by_a_reload_and_a_bad_one_changes_nothing(
        tmp_path: Path, fresh_hep2: Hep2Assay) -> None:
    path, flat_path, first = flat_config(tmp_path)
    assert fresh_hep2.flat is None
    outcome = reload_config(fresh_hep2, path)
    assert outcome.applied == ("hep2", "hep2.intensity.flat_field_file")
    assert fresh_hep2.flat_sha256 == first and fresh_hep2.flat is not None
    assert fresh_hep2.reading_inputs() == (first,)  # what the pipeline compares
    # The lab makes the flat field again in the same place: the same config takes it up.
    second = write_flat(flat_path, 0.7)
    assert second != first
    assert reload_config(fresh_hep2, path).applied == ("hep2.intensity.flat_field_file",)
    assert fresh_hep2.flat_sha256 == second
    cfg = fresh_hep2.cfg
    assert reload_config(fresh_hep2, path).applied == ()
    assert fresh_hep2.cfg is cfg  # nothing changed: the running config object stays
    # A flat field that cannot be used: the reload is refused and nothing changes.
    flat_path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"hep2\.intensity\.flat_field_file"):
        reload_config(fresh_hep2, path)
    assert fresh_hep2.cfg is cfg and fresh_hep2.flat_sha256 == second


def test_a_field_is_corrected_by_the_flat_field_in_use_when_it_was_prepared(
        tmp_path: Path, fresh_hep2: Hep2Assay) -> None:
    """A reload between prepare and finish: the field keeps the flat it was prepared with."""
    path, flat_path, first = flat_config(tmp_path)
    reload_config(fresh_hep2, path)
    image = generate_hep2_field(Hep2FieldSpec(
        seed=996_800, width=400, height=300, um_per_px=0.5, patterns=(("homogeneous", 1.0),),
        intensity=120.0, defocus_um=0.0)).image
    frame = Frame(image=image, seq=1, timestamp=0.0, source="f", um_per_px=0.5)
    prepared = fresh_hep2.prepare(frame)
    assert prepared.refusal is None and prepared.flat_sha256 == first
    write_flat(flat_path, 0.7)
    reload_config(fresh_hep2, path)
    assert fresh_hep2.flat_sha256 != first and prepared.flat_sha256 == first
