"""tools.stress_hep2: the looks the generator does not draw, and the figures per look."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.flat_field import gain_map, load_flat
from appliance.config import Config, with_overrides
from tools import stress_hep2
from tools.eval_hep2 import cell_summary, evaluate, specimen_cases
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec, generate_hep2_field

UM = 0.5


def _picture() -> np.ndarray:
    return generate_hep2_field(Hep2FieldSpec(seed=78_001, width=320, height=240,
                                             um_per_px=UM, patterns=(("centromere", 1.0),),
                                             intensity=120.0)).image


@pytest.mark.parametrize("name", [n for n, (look, _f) in stress_hep2.LOOKS.items()
                                  if look is not None])
def test_every_look_gives_an_rgb_picture_of_the_same_size_that_differs(name: str) -> None:
    look, _factor = stress_hep2.LOOKS[name]
    assert look is not None
    rgb = _picture()
    out = look(rgb, UM)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out != rgb).any()
    assert np.array_equal(look(rgb, UM), out)  # seeded: the same every time


def test_the_looks_do_what_they_say() -> None:
    rgb = _picture()
    mono = camera_looks.monochrome(rgb)
    assert (mono[..., 0] == mono[..., 1]).all() and (mono[..., 2] == rgb[..., 1]).all()
    flat = np.empty((16, 16, 3), np.uint8)
    flat[...] = (200, 100, 30)
    assert (camera_looks.colour_mosaic(flat)[4:12, 4:12] == (200, 100, 30)).all()
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    curved = camera_looks.tone_curve(np.ascontiguousarray(ramp), 2.2)[0, :, 1].astype(int)
    assert curved[0] == 0 and curved[255] == 255 and curved[64] == 136  # 255 (1/4)^(1/2.2)
    assert np.array_equal(camera_looks.tone_curve(rgb, 1.0), rgb)
    with pytest.raises(ValueError, match="gamma"):
        camera_looks.tone_curve(rgb, 0.0)
    white = np.full((101, 201, 3), 200, np.uint8)
    lit = camera_looks.vignetting(white, 0.5)[..., 1]
    assert lit[50, 100] == 200 and lit[0, 0] == 100 and lit[100, 200] == 100
    dot = np.zeros((41, 41, 3), np.uint8)
    dot[20, 20] = 200
    assert camera_looks.defocus(dot, UM, 0.4)[20, 20, 1] < 100  # 0.8 px at 0.5 µm/px
    # 4:2:0 chroma: a green dot keeps its brightness in luma, loses some of its green.
    spot = np.zeros((32, 32, 3), np.uint8)
    spot[16, 16] = (20, 200, 10)
    assert 80 < int(camera_looks.mjpg(spot, 95)[16, 16, 1]) < 200
    noisy = camera_looks.read_noise(np.full((200, 200, 3), 100, np.uint8), 4.0,
                                    np.random.default_rng(0))
    assert 3.5 < float(noisy.std()) < 4.5
    green = np.zeros((4, 4, 3), np.uint8)
    green[..., 1] = 160
    assert (camera_looks.long_pass(green, 0.5)[..., 0] == 80).all()
    leaked = camera_looks.stray_light(np.zeros((2, 11, 3), np.uint8), 20.0).astype(int)
    assert leaked[0, 0].tolist() == [10] * 3 and leaked[1, 10].tolist() == [20] * 3
    assert stress_hep2.LOOKS["scale_+20%"] == (None, 1.2)
    assert stress_hep2.LOOKS["scale_-20%"][1] == pytest.approx(1 / 1.2)


def test_a_random_camera_draws_its_parts_and_says_which() -> None:
    rgb = _picture()
    seen = set()
    for seed in range(40):
        out, what = camera_looks.random_camera(rgb, np.random.default_rng(seed))
        assert out.shape == rgb.shape and out.dtype == np.uint8
        again, same = camera_looks.random_camera(rgb, np.random.default_rng(seed))
        assert same == what and np.array_equal(again, out)  # seeded
        assert (what == "as drawn") == np.array_equal(out, rgb)
        seen.update(part.split(" ")[0] for part in what.split(", "))
    assert {"mosaic", "monochrome", "noise", "gamma", "mjpg", "as"} <= seen


def test_a_look_and_a_wrong_scale_reach_the_box(tmp_path: Path) -> None:
    cases = [c for c in specimen_cases(1, first_seed=stress_hep2.FIRST_SEED)
             if c.spec.patterns and c.spec.patterns[0][0] == "homogeneous"]
    cfg = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(cfg) as assay:
        drawn, tally = evaluate(assay, cases)
        mono_look, _ = stress_hep2.LOOKS["monochrome"]
        mono, mono_tally = evaluate(assay, cases, look=mono_look)
        wide, _ = evaluate(assay, cases, declared_factor=1.2)
    assert drawn[0].scale_used is not None
    assert wide[0].scale_used == pytest.approx(1.2 * drawn[0].scale_used, rel=1e-3)
    summary = stress_hep2.look_summary(mono, cell_summary(mono_tally), drawn)
    base = stress_hep2.look_summary(drawn, cell_summary(tally), None)
    assert base["intensity_vs_as_drawn_median"] is None
    # A monochrome camera's field is scored as its colour twin (the green is the same).
    assert summary["not_scorable"] == 0
    assert summary["intensity_vs_as_drawn_median"] == pytest.approx(1.0)
    assert summary["pattern_accuracy"] == base["pattern_accuracy"]
    text = stress_hep2.format_table({"as_drawn": base, "monochrome": summary})
    assert text.splitlines()[2].startswith("as_drawn") and "monochrome" in text
    png = tmp_path / "looks.png"
    stress_hep2.plot_looks({"as_drawn": base, "monochrome": summary}, png)
    assert png.stat().st_size > 1000


def test_the_flat_fielded_look_gets_the_flat_of_its_light(tmp_path: Path) -> None:
    assert set(stress_hep2.FLAT_FIELDED) <= set(stress_hep2.LOOKS)
    path = stress_hep2.flat_field_file("vignetting", 240, 320, tmp_path)
    flat, _sha = load_flat(path)
    light = gain_map(flat, 240, 320)
    ones = np.full((240, 320, 3), 200, np.uint8)
    look, _ = stress_hep2.LOOKS["vignetting"]
    assert look is not None
    truth = look(ones, UM)[..., 1] / 200.0
    assert np.percentile(np.abs(light / truth - 1), 99) < 0.02
    assert flat.corner_light == pytest.approx(stress_hep2.CORNER_LIGHT, abs=0.05)
    png = tmp_path / "flat.png"
    stress_hep2.plot_flat_field(path, [0.8, 0.85, 0.9], [0.98, 1.0, 1.03], png)
    assert png.stat().st_size > 1000


def test_refused_fields_are_counted_by_reason() -> None:
    from tools.eval_hep2 import SpecimenOutcome

    def outcome(seed: int, status: str, reason: str | None, intensity: float | None
                ) -> SpecimenOutcome:
        return SpecimenOutcome(seed=seed, kind="single", um_per_px=0.5,
                               truth_patterns=("homogeneous",), truth_positive=True,
                               truth_intensity=50.0, truth_level="intermediate",
                               status=status, reported=("homogeneous",) if intensity else (),
                               positive=True if intensity else None, intensity=intensity,
                               level=None, reason=reason, cells=10, ms=1.0)
    base = [outcome(1, "scored", None, 40.0), outcome(2, "scored", None, 80.0)]
    now = [outcome(1, "scored", None, 50.0),
           outcome(2, "not_scorable", "wrong stain: only 30% green", None)]
    cells: dict[str, object] = {"mean_class_accuracy": None, "detection_recall": None}
    s = stress_hep2.look_summary(now, cells, base)
    assert s["not_scorable"] == 1 and s["not_scorable_reasons"] == {"wrong stain": 1}
    assert s["intensity_vs_as_drawn_median"] == pytest.approx(1.25)
    assert "refused: wrong stain 1" in stress_hep2.format_table({"x": s})
    # A refusal with a code is counted by its code, not by its sentence.
    coded = replace(now[1], reason="12 of 13 whole cells look unstained: ...",
                    reason_code="unstained_light")
    assert stress_hep2.look_summary([now[0], coded], cells, base)["not_scorable_reasons"] \
        == {"unstained_light": 1}


def test_bad_arguments_and_config_stop_the_tool(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        stress_hep2.parse_args(["--specimens", "0"])
    with pytest.raises(SystemExit):
        stress_hep2.parse_args(["--looks", "sepia"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[hep2.cells]\ncrop_px = 3\n")
    assert stress_hep2.main(["--config", str(bad), "--out-dir", str(tmp_path)]) == 2
    assert "hep2.cells.crop_px" in capsys.readouterr().err


def test_a_specimen_is_generated_once_for_every_look(monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.eval_hep2 as eval_hep2

    cases = [c for c in specimen_cases(1, first_seed=stress_hep2.FIRST_SEED)
             if c.spec.patterns and c.spec.patterns[0][0] == "centromere"]
    cfg = with_overrides(Config(), {"assay": "hep2"})
    fields: dict[int, Hep2Field] = {}
    with Hep2Assay.from_config(cfg) as assay:
        drawn, _ = evaluate(assay, cases, fields=fields)
        assert set(fields) == {c.spec.seed for c in cases}

        def generated_again(*_: object) -> None:
            raise AssertionError("the field was generated again")

        monkeypatch.setattr(eval_hep2, "generate_hep2_field", generated_again)
        again, _ = evaluate(assay, cases, fields=fields)
        look, _f = stress_hep2.LOOKS["monochrome"]
        mono, _ = evaluate(assay, cases, look=look, fields=fields)
    # The cached field scores as the fresh one did (all but the time it took).
    assert [replace(o, ms=0.0) for o in again] == [replace(o, ms=0.0) for o in drawn]
    assert [o.seed for o in mono] == [o.seed for o in drawn]
