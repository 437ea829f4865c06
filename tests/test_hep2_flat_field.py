"""HEp-2 flat field: made from frames of a uniform slide, its file, the corrected brightness,
the assay and the calibration with it, and `appliance flat-iif`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance import cli_hep2
from appliance.assays.hep2 import flat_field as ff
from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.calibration import intensity_is_calibrated
from appliance.assays.hep2.intensity import cell_brightness, field_brightness
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
    with_overrides,
)
from tests.imagefiles import write_rgb
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

H, W = 300, 400
CORNER = 0.5


def true_light(h: int = H, w: int = W, corner: float = CORNER) -> np.ndarray:
    """The relative light camera_looks.vignetting multiplies by (1 at the centre)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    half_w, half_h = (w - 1) / 2, (h - 1) / 2
    r2 = ((x - half_w) ** 2 + (y - half_h) ** 2) / (half_w**2 + half_h**2)
    return 1.0 - (1.0 - corner) * r2


def slide_frames(n: int = 3, *, seed: int = 1, level: float = 170.0, h: int = H,
                 w: int = W) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [camera_looks.vignetting(camera_looks.uniform_slide(h, w, rng, level), CORNER)
            for _ in range(n)]


# ---------------------------------------------------------------- making the flat


def test_flat_follows_the_light_and_drops_the_dust() -> None:
    flat = ff.flat_from_frames(slide_frames())
    light = ff.gain_map(flat, H, W)
    truth = true_light() / true_light().max()
    ratio = light / truth
    inner = ratio[10:-10, 10:-10]
    # Within 1 % inside, 3 % at the outermost pixels; the dust specks (a 60 % dip in one
    # frame each) are gone.
    assert np.percentile(np.abs(inner - 1), 99.9) < 0.01
    assert np.abs(ratio - 1).max() < 0.03
    assert flat.corner_light == pytest.approx(CORNER, abs=0.04)
    assert flat.frames == 3 and (flat.width, flat.height) == (W, H)
    assert flat.warnings == ()  # bright enough that a missing dark frame does not matter


def test_frames_of_an_even_light_give_an_even_flat() -> None:
    rng = np.random.default_rng(2)
    frames = [camera_looks.uniform_slide(H, W, rng) for _ in range(3)]
    assert ff.flat_from_frames(frames).corner_light > 0.97


def test_a_dark_frame_is_subtracted() -> None:
    offset = 30
    frames = [np.clip(f.astype(int) + offset, 0, 255).astype(np.uint8)
              for f in slide_frames(level=100.0)]
    dark = [np.full((H, W, 3), offset, np.uint8)]
    with_dark = ff.flat_from_frames(frames, dark)
    without = ff.flat_from_frames(frames)
    assert with_dark.dark_grey == pytest.approx(offset)
    assert with_dark.corner_light == pytest.approx(CORNER, abs=0.04)
    # Without it the offset flattens the light: the corner reads brighter than it is.
    assert without.corner_light > with_dark.corner_light + 0.05
    assert without.warnings and "dark frame" in without.warnings[0]


def test_refusals_name_the_frame_and_the_reason() -> None:
    frames = slide_frames()
    with pytest.raises(ff.FlatFieldError, match="at least 3 frames"):
        ff.flat_from_frames(frames[:2])
    with pytest.raises(ff.FlatFieldError, match="frame 3 is 200x150"):
        ff.flat_from_frames([*frames[:2], cv2.resize(frames[2], (200, 150))])
    clipped = slide_frames(level=300.0)  # the centre saturates
    with pytest.raises(ff.FlatFieldError, match="clip"):
        ff.flat_from_frames(clipped)
    with pytest.raises(ff.FlatFieldError, match="lengthen the exposure"):
        ff.flat_from_frames(slide_frames(level=20.0))
    bubble = [f.copy() for f in frames]
    cv2.circle(bubble[1], (70, 60), 40, (0, 0, 0), -1)
    with pytest.raises(ff.FlatFieldError, match=r"frame 2 differs .* upper left"):
        ff.flat_from_frames(bubble)
    edge = [f.copy() for f in frames]
    for f in edge:  # the slide's edge in view: the right fifth dark in every frame
        f[:, -W // 5:] //= 6
    with pytest.raises(ff.FlatFieldError, match=r"not uniform .* right.* edge of the slide"):
        ff.flat_from_frames(edge)
    rng = np.random.default_rng(3)  # smooth, but far darker than vignetting at the corners
    deep = [camera_looks.vignetting(camera_looks.uniform_slide(H, W, rng), 0.12)
            for _ in range(3)]
    with pytest.raises(ff.FlatFieldError, match=r"falls to 1\d% .* corner, more than vignetting"):
        ff.flat_from_frames(deep)


def test_a_specimen_is_not_a_flat_field() -> None:
    fields = [generate_hep2_field(Hep2FieldSpec(
        seed=seed, width=W, height=H, um_per_px=0.5, patterns=(("homogeneous", 1.0),),
        intensity=60.0)).image for seed in (5, 6, 7)]
    with pytest.raises(ff.FlatFieldError, match="not uniform"):
        ff.flat_from_frames(fields)


def _through(frames: list[np.ndarray], gamma: float) -> list[np.ndarray]:
    return [camera_looks.tone_curve(f, gamma) for f in frames]


def test_half_exposure_frames_show_whether_the_camera_is_linear() -> None:
    full, half = slide_frames(level=170.0, seed=8), slide_frames(level=85.0, seed=9)
    dim, bright = ff.flat_from_frames(full, half=half).half_exposure_ratio or (0.0, 0.0)
    assert dim == pytest.approx(0.5, abs=0.02) and bright == pytest.approx(0.5, abs=0.02)
    # A display tone curve: half the light reads about 0.73 of the grey.
    with pytest.raises(ff.FlatFieldError, match=r"not linear: half the exposure reads 0\.7"
                                                 r".*gamma 2\.\d"):
        ff.flat_from_frames(_through(full, 2.2), half=_through(half, 2.2))
    # Half frames of another size, and frames at the same exposure by mistake.
    with pytest.raises(ff.FlatFieldError, match="half-exposure frame 1 is 200x150"):
        ff.flat_from_frames(full, half=[cv2.resize(half[0], (200, 150))])
    with pytest.raises(ff.FlatFieldError, match="exactly half the exposure"):
        ff.flat_from_frames(full, half=slide_frames(level=170.0, seed=10))


# ---------------------------------------------------------------- mapping it to a frame


def test_the_flat_maps_onto_any_resolution_of_the_same_shape_only() -> None:
    flat = ff.flat_from_frames(slide_frames())
    big = ff.gain_map(flat, 2 * H, 2 * W)
    truth = true_light(2 * H, 2 * W)
    assert np.percentile(np.abs(big / (truth / truth.max()) - 1), 99) < 0.01
    with pytest.raises(ff.FlatFieldError, match=r"made on 400x300 frames, this image is 640x360"):
        ff.gain_map(flat, 360, 640)


# ---------------------------------------------------------------- the file


def test_file_round_trip_and_sha(tmp_path: Path) -> None:
    flat = ff.flat_from_frames(slide_frames())
    path = tmp_path / "sub" / "flat.json"
    sha = ff.save_flat(flat, path)
    loaded, loaded_sha = ff.load_flat(path)
    assert loaded_sha == sha and len(sha) == 64
    assert np.allclose(loaded.gains, flat.gains, atol=1e-5)
    assert (loaded.width, loaded.height, loaded.frames) == (W, H, 3)
    assert loaded.half_exposure_ratio is None
    checked = ff.flat_from_frames(slide_frames(), half=slide_frames(level=85.0, seed=3))
    ff.save_flat(checked, path)
    assert ff.load_flat(path)[0].half_exposure_ratio == pytest.approx(
        checked.half_exposure_ratio, abs=1e-4)


def _doc(**changes: object) -> str:
    doc: dict[str, object] = {"format": ff.FORMAT, "version": ff.VERSION, "width": 4,
                              "height": 3, "frames": 3, "dark_grey": 0.0,
                              "brightest_grey": 150.0, "made_at": "",
                              "gains": [[0.9, 1.0], [0.8, 0.9]]}
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not a flat-field JSON"),
    (json.dumps({"format": "something else"}), "not a flat-field file"),
    (_doc(version=2), "version 2"),
    (_doc(width=0), "'width' must be a positive whole number"),
    (_doc(dark_grey="dark"), "'dark_grey' must be a number"),
    (_doc(gains=[[1.0, 0.9], [0.9]]), "grid of at least 2 x 2"),
    (_doc(gains=[[1.0, 0.9], [0.9, "x"]]), "not a number"),
    (_doc(gains=[[1.0, 0.9], [0.9, 0.1]]), r"must lie in \[0.25, 1\]"),
    (_doc(gains=[[0.9, 0.9], [0.9, 0.9]]), "brightest at 1"),
    (_doc(half_exposure_ratio=[0.5]), "two numbers or null"),
])
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "flat.json"
    path.write_text(text)
    with pytest.raises(ff.FlatFieldError, match=match):
        ff.load_flat(path)


def test_the_config_key_is_named_when_the_file_cannot_be_used(tmp_path: Path) -> None:
    assert ff.configured_flat(Hep2IntensityConfig()) == (None, "")
    missing = Hep2IntensityConfig(flat_field_file=str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match=r"hep2\.intensity\.flat_field_file.*cannot read"):
        ff.configured_flat(missing)


def test_the_recorded_sha_must_be_a_sha256() -> None:
    with pytest.raises(ConfigError, match=r"hep2\.intensity\.flat_field_sha256"):
        config_from_dict({"hep2": {"intensity": {"flat_field_sha256": "abc"}}})
    config_from_dict({"hep2": {"intensity": {"flat_field_sha256": "0" * 64}}})


# ---------------------------------------------------------------- corrected brightness


def test_cells_read_as_if_evenly_lit() -> None:
    image = generate_hep2_field(Hep2FieldSpec(
        seed=11, width=W, height=H, um_per_px=0.5, patterns=(("homogeneous", 1.0),),
        intensity=120.0, photobleaching=0.0)).image
    dim = camera_looks.vignetting(image, CORNER)
    cfg = Hep2CellsConfig()
    cells = segment_cells(image[..., 1].astype(np.float32), 0.5, cfg)
    light = true_light()

    def read(img: np.ndarray, lit: np.ndarray | None) -> np.ndarray:
        green = img[..., 1].astype(np.float32)
        bg = segment_cells(green, 0.5, cfg).background_map
        return cell_brightness(green, cells.labels, bg, lit)

    even, dimmed, corrected = read(image, None), read(dim, None), read(dim, light)
    ok = np.isfinite(even) & (even > 20)
    # Cells at the edge read up to half; corrected, within a few per cent of even light.
    assert np.median(dimmed[ok] / even[ok]) < 0.85
    assert np.median(np.abs(corrected[ok] / even[ok] - 1)) < 0.03
    assert field_brightness(dim[..., 1], 0.0, light) > field_brightness(dim[..., 1], 0.0)


# ---------------------------------------------------------------- calibrated or relative


def test_calibration_holds_only_with_its_flat_field() -> None:
    cam = SourceConfig(uri="v4l2:/dev/video0", exposure_us=10_000, gain=4.0)
    sha_a, sha_b = "a" * 64, "b" * 64
    record = Hep2IntensityConfig(exposure_ms=10.0, gain=4.0, units_per_grey=1.5,
                                 flat_field_sha256=sha_a)
    assert intensity_is_calibrated(cam, record, sha_a)[0]
    for applied, words in ((sha_b, "another flat field"), ("", "none is applied now")):
        ok, why = intensity_is_calibrated(cam, record, applied)
        assert not ok and words in why and why.endswith("relative units")
    no_flat = Hep2IntensityConfig(exposure_ms=10.0, gain=4.0, units_per_grey=1.5)
    assert intensity_is_calibrated(cam, no_flat, "")[0]
    ok, why = intensity_is_calibrated(cam, no_flat, sha_a)
    assert not ok and "without a flat field" in why


# ---------------------------------------------------------------- the assay


def _flat_file(tmp_path: Path, h: int = 600, w: int = 800) -> tuple[Path, str]:
    path = tmp_path / "flat.json"
    sha = ff.save_flat(ff.flat_from_frames(slide_frames(h=h, w=w)), path)
    return path, sha


def test_the_assay_reads_a_vignetted_field_as_evenly_lit(tmp_path: Path) -> None:
    path, sha = _flat_file(tmp_path)
    image = generate_hep2_field(Hep2FieldSpec(
        seed=21, width=800, height=600, um_per_px=0.5, patterns=(("centromere", 1.0),),
        intensity=80.0, photobleaching=0.0)).image
    dim = camera_looks.vignetting(image, CORNER)
    calibrated = {"source.exposure_us": 10_000.0, "source.gain": 4.0,
                  "hep2.intensity.exposure_ms": 10.0, "hep2.intensity.gain": 4.0}
    plain = with_overrides(Config(), {"assay": "hep2", **calibrated})
    flat_cfg = with_overrides(plain, {"hep2.intensity.flat_field_file": str(path),
                                      "hep2.intensity.flat_field_sha256": sha})

    def score(cfg: Config, img: np.ndarray) -> tuple[float, bool, tuple[str, ...]]:
        with Hep2Assay.from_config(cfg) as assay:
            r = assay.score(Frame(image=img, seq=1, timestamp=0.0, source="f", um_per_px=0.5))
        assert r.intensity_units is not None
        return r.intensity_units, r.intensity_calibrated, r.warnings

    even, _, _ = score(plain, image)
    dimmed, _, _ = score(plain, dim)
    corrected, calibrated_ok, _ = score(flat_cfg, dim)
    assert dimmed < 0.92 * even
    assert corrected == pytest.approx(even, rel=0.05)
    assert calibrated_ok
    # A still of another shape: scored, not corrected, and said so; not calibrated then.
    small = np.ascontiguousarray(dim[:, :600])
    _, cal_small, warnings = score(flat_cfg, small)
    assert not cal_small
    assert any("flat field was made on 800x600" in w for w in warnings)
    assert "the flat field does not fit this image (another shape): relative units" in warnings
    assert not any("calibrate-iif" in w for w in warnings)


# ---------------------------------------------------------------- the commands


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command")
    cli_hep2.add_parsers(sub, common)
    return ap.parse_args(argv)


def test_flat_iif_saves_the_flat_and_names_it_in_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = []
    for i, frame in enumerate(slide_frames()):
        images.append(str(write_rgb(tmp_path / f"flat{i}.png", frame)))
    config = tmp_path / "box.toml"
    config.write_text("assay = \"hep2\"\n\n[hep2.intensity]\nnegative_below = 20.0\n")
    save, out = tmp_path / "hep2_flat.json", tmp_path / "new.toml"
    args = parse(["flat-iif", *images, "--save", str(save), "--write", str(out),
                  "--config", str(config)])
    assert cli_hep2.cmd_flat_iif(args, load_config(config)) == 0
    printed = capsys.readouterr().out
    assert "falls to 5" in printed and f'flat_field_file = "{save}"' in printed
    assert "linearity not checked" in printed
    picture = cv2.imread(str(tmp_path / "hep2_flat.json.png"))
    assert picture is not None and picture.shape[1] == 640
    # Brighter (yellow in viridis) in the middle than at the corners.
    assert int(picture[picture.shape[0] // 2, 320].sum()) > int(picture[5, 5].sum())
    assert load_config(out).hep2.intensity.flat_field_file == str(save)
    assert tomllib.loads(out.read_text())["hep2"]["intensity"]["negative_below"] == 20.0
    assert ff.load_flat(save)[0].corner_light == pytest.approx(CORNER, abs=0.04)
    # Made again, the flat in use is kept beside the new one, not lost.
    before = save.read_bytes()
    args = parse(["flat-iif", *images, "--save", str(save)])
    assert cli_hep2.cmd_flat_iif(args, load_config(config)) == 0
    assert (tmp_path / "hep2_flat.json.previous").read_bytes() == before
    assert "kept as" in capsys.readouterr().out


def test_flat_iif_refuses_and_writes_nothing(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    images = [str(write_rgb(tmp_path / f"f{i}.png", f)) for i, f in enumerate(slide_frames(2))]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    save, out = tmp_path / "flat.json", tmp_path / "out.toml"
    for argv, words in ((images, "at least 3"), ([*images, str(bad)], "broken.png")):
        args = parse(["flat-iif", *argv, "--save", str(save), "--write", str(out)])
        assert cli_hep2.cmd_flat_iif(args, Config()) == cli_hep2.EXIT_REFUSED
        assert words in capsys.readouterr().err
    assert not save.exists() and not out.exists()


def test_calibrate_iif_records_the_flat_field_it_was_made_with(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, sha = _flat_file(tmp_path)
    images = []
    for seed in (31, 32, 33):
        image = generate_hep2_field(Hep2FieldSpec(
            seed=seed, width=800, height=600, um_per_px=0.5,
            patterns=(("homogeneous", 1.0),), intensity=80.0, photobleaching=0.0)).image
        images.append(str(write_rgb(tmp_path / f"ref{seed}.png",
                                    camera_looks.vignetting(image, CORNER))))
    config = tmp_path / "box.toml"
    config.write_text(f"assay = \"hep2\"\n[source]\nexposure_us = 10000.0\ngain = 4.0\n"
                      f"[hep2.intensity]\nflat_field_file = \"{path}\"\n")
    out = tmp_path / "calibrated.toml"
    args = parse(["calibrate-iif", *images, "--reference-units", "80", "--write", str(out),
                  "--config", str(config)])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == 0
    assert f'flat_field_sha256 = "{sha}"' in capsys.readouterr().out
    cal = load_config(out).hep2.intensity
    assert cal.flat_field_sha256 == sha
    # Corrected, the vignetted fields read their drawn intensity: about 1 unit per grey.
    assert cal.units_per_grey == pytest.approx(1.0, rel=0.1)
    # Fields of another shape than the flat's are refused, not calibrated uncorrected.
    crop = tmp_path / "crop.png"
    write_rgb(crop, cv2.imread(images[0])[:, :600, ::-1])
    args = parse(["calibrate-iif", *images[:2], str(crop), "--reference-units", "80"])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == cli_hep2.EXIT_REFUSED
    assert "crop.png" in capsys.readouterr().err


def test_a_full_disk_leaves_the_flat_in_use_and_the_config_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    images = [str(write_rgb(tmp_path / f"f{i}.png", f)) for i, f in enumerate(slide_frames())]
    save = tmp_path / "flat.json"
    save.write_text("the flat in use")

    def full(*_a: object, **_k: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_hep2, "save_flat", full)
    args = parse(["flat-iif", *images, "--save", str(save)])
    assert cli_hep2.cmd_flat_iif(args, Config()) == cli_hep2.EXIT_REFUSED
    assert "No space left on device" in capsys.readouterr().err
    assert save.read_text() == "the flat in use"
    assert not (tmp_path / "flat.json.previous").exists()
    # calibrate-iif --write on a full disk: refused, the config untouched.
    monkeypatch.undo()
    monkeypatch.setattr(cli_hep2, "write_atomic", full)
    config = tmp_path / "box.toml"
    config.write_text("assay = \"hep2\"\n[source]\nexposure_us = 10000.0\ngain = 4.0\n")
    refs = []
    for seed in (41, 42, 43):
        image = generate_hep2_field(Hep2FieldSpec(
            seed=seed, width=400, height=300, um_per_px=0.5,
            patterns=(("homogeneous", 1.0),), intensity=80.0, photobleaching=0.0)).image
        refs.append(str(write_rgb(tmp_path / f"ref{seed}.png", image)))
    args = parse(["calibrate-iif", *refs, "--reference-units", "80", "--write", str(config),
                  "--config", str(config)])
    assert cli_hep2.cmd_calibrate_iif(args, load_config(config)) == cli_hep2.EXIT_REFUSED
    assert "by hand" in capsys.readouterr().err
    assert "units_per_grey" not in config.read_text()
