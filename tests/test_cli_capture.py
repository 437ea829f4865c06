"""`appliance capture`: frames of the configured source saved losslessly, or refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance import cli, cli_capture
from appliance.capture.frame import Frame
from appliance.capture.source import EndOfStream, SourceFault
from appliance.config import Config, load_config, with_overrides
from tests.imagefiles import write_rgb


def _stills(folder: Path, n: int) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(n)]
    for i, image in enumerate(images):
        write_rgb(folder / f"still{i}.png", image)
    return images


def _replay_config(tmp: Path) -> str:
    """A config replaying each still once (no hold), as a camera giving new frames."""
    path = tmp / "box.toml"
    path.write_text(f"[source]\nuri = \"replay:{tmp / 'replay'}\"\nfps = 0.0\nhold_s = 0.0\n")
    return str(path)


def _read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def test_capture_writes_the_frames_after_the_settle_losslessly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _stills(tmp_path / "replay", 4)
    out = tmp_path / "frames"
    code = cli.main(["capture", "--out", str(out), "--count", "3", "--settle", "1",
                     "--name", "flat", "--config", _replay_config(tmp_path)])
    assert code == 0
    written = sorted(out.glob("flat-*.png"))
    assert [p.name for p in written] == ["flat-01.png", "flat-02.png", "flat-03.png"]
    for path, image in zip(written, images[1:], strict=True):
        assert np.array_equal(_read_png(path), image)  # PNG: not a grey level changed
    record = json.loads((out / "flat.json").read_text())
    assert record["files"] == ["flat-01.png", "flat-02.png", "flat-03.png"]
    assert (record["width"], record["height"]) == (96, 72)
    printed = capsys.readouterr().out
    assert "exposure or gain is automatic" in printed  # the defaults pin nothing


def test_capture_refuses_to_overwrite_and_a_short_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _stills(tmp_path / "replay", 2)
    out = tmp_path / "frames"
    out.mkdir()
    (out / "frame-02.png").write_bytes(b"the lab's earlier frame")
    argv = ["capture", "--out", str(out), "--settle", "0", "--config", _replay_config(tmp_path)]
    assert cli.main(argv) == cli_capture.EXIT_REFUSED
    assert "frame-02.png exists" in capsys.readouterr().err
    assert (out / "frame-02.png").read_bytes() == b"the lab's earlier frame"
    # Two stills cannot give three frames: nothing is written, not two of three.
    assert cli.main([*argv, "--name", "ref"]) == cli_capture.EXIT_REFUSED
    assert "ended before all frames" in capsys.readouterr().err
    assert not list(out.glob("ref*"))


class StubCamera:
    """A camera as the capture sees one: opens (perhaps after faults), gives frames."""

    source_id = "v4l2:/dev/video9"

    def __init__(self, *, faults: int = 0, pinned: bool | None = True,
                 pixel_format: str = "YUYV", frames: int = 100) -> None:
        self.faults, self.pinned, self.pixel_format = faults, pinned, pixel_format
        self.left, self.reads, self.closed = frames, 0, 0

    def open(self) -> None:
        if self.faults:
            self.faults -= 1
            raise SourceFault("busy")

    def read(self) -> Frame:
        if self.left == 0:
            raise EndOfStream()
        self.left -= 1
        self.reads += 1
        image = np.full((30, 40, 3), self.reads % 256, np.uint8)
        return Frame(image=image, seq=self.reads, timestamp=0.0, source=self.source_id,
                     pixel_format=self.pixel_format, exposure_pinned=self.pinned)

    def close(self) -> None:
        self.closed += 1


PINNED = with_overrides(Config(), {"source.exposure_us": 20000.0, "source.gain": 2.0})


def _args(out: Path, *extra: str) -> object:
    return cli.build_parser().parse_args(["capture", "--out", str(out), *extra])


def test_prompt_waits_for_enter_before_each_frame(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    camera = StubCamera()
    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: camera)
    asked: list[tuple[str, int]] = []
    code = cli_capture.cmd_capture(_args(tmp_path, "--prompt", "--settle", "2"), PINNED,
                                   ask=lambda text: asked.append((text, camera.reads)) or "")
    assert code == 0
    # Each question comes before its frame is read: after the 2 settle frames, then 3, 4.
    assert [reads for _, reads in asked] == [2, 3, 4]
    assert "frame 1 of 3" in asked[0][0]
    assert _read_png(tmp_path / "frame-01.png")[0, 0, 0] == 3
    assert camera.closed == 1


def test_every_spaces_the_frames_and_a_busy_camera_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    camera = StubCamera(faults=2)
    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: camera)
    slept: list[float] = []
    assert cli_capture.cmd_capture(_args(tmp_path, "--every", "5"), PINNED,
                                   sleep=slept.append) == 0
    assert slept == [cli_capture.OPEN_RETRY_S] * 2 + [5.0, 5.0]


def test_a_camera_that_stays_busy_is_named_with_the_likely_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    camera = StubCamera(faults=cli_capture.OPEN_TRIES)
    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: camera)
    assert cli_capture.cmd_capture(_args(tmp_path), PINNED,
                                   sleep=lambda _s: None) == cli_capture.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "v4l2:/dev/video9 did not open: busy" in err and "systemctl stop eyepiece" in err
    assert camera.closed == 1 and not list(tmp_path.iterdir())


def test_frames_the_camera_did_not_pin_are_refused_and_mjpg_is_warned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: StubCamera(pinned=False))
    assert cli_capture.cmd_capture(_args(tmp_path / "a"), PINNED) == cli_capture.EXIT_REFUSED
    assert "does not hold the pinned exposure" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(cli_capture, "open_source",
                        lambda *_a, **_k: StubCamera(pixel_format="MJPG"))
    assert cli_capture.cmd_capture(_args(tmp_path / "b"), PINNED) == 0
    assert "MJPG" in capsys.readouterr().out
    record = json.loads((tmp_path / "b" / "frame.json").read_text())
    assert record["exposure_us"] == 20000.0 and record["exposure_pinned"] == [True] * 3
    assert record["config_sha256"] == PINNED.sha256() and record["auto_white_balance"]


def test_a_camera_left_on_automatic_white_balance_is_warned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: StubCamera())
    usb = with_overrides(PINNED, {"source.uri": "v4l2:/dev/video9"})
    assert cli_capture.cmd_capture(_args(tmp_path / "a"), usb) == 0
    assert "automatic white balance is on" in capsys.readouterr().out
    fixed = with_overrides(usb, {"source.auto_white_balance": False})
    assert cli_capture.cmd_capture(_args(tmp_path / "b"), fixed) == 0
    assert "white balance" not in capsys.readouterr().out
    record = json.loads((tmp_path / "b" / "frame.json").read_text())
    assert record["auto_white_balance"] is False


@pytest.mark.parametrize(("extra", "words"), [
    (("--count", "0"), "--count"), (("--settle", "-1"), "--settle"),
    (("--every", "-2"), "--every"), (("--name", "../x"), "--name"),
])
def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   extra: tuple[str, ...], words: str) -> None:
    assert cli_capture.cmd_capture(_args(tmp_path, *extra), load_config(None)) == 2
    assert words in capsys.readouterr().err


def test_a_full_disk_keeps_nothing_half_written(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    monkeypatch.setattr(cli_capture, "open_source", lambda *_a, **_k: StubCamera())
    real = cli_capture.write_atomic
    calls: list[Path] = []

    def fills_up(path: Path, data: bytes, **kw: object) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(cli_capture, "write_atomic", fills_up)
    assert cli_capture.cmd_capture(_args(tmp_path), PINNED) == cli_capture.EXIT_REFUSED
    assert "No space left on device" in capsys.readouterr().err
    assert len(calls) == 3 and not list(tmp_path.iterdir())  # the two written are gone
