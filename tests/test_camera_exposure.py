"""Pinned camera exposure and gain (HEp-2 intensity), and white balance (HEp-2 colour), on the
V4L2 and picamera2 sources."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture.factory import open_source
from appliance.capture.gstreamer import GstreamerSource
from appliance.capture.picamera2_source import (
    Picamera2Source,
    exposure_controls,
    pin_problems,
    white_balance_problems,
)
from appliance.capture.source import SourceError
from appliance.capture.v4l2 import V4l2Source
from appliance.config import InputConfig, SourceConfig
from tests.fakes.cv2_capture import FakeCamera
from tests.fakes.picamera2 import CameraRig

AUTO, EXPOSURE, GAIN = cv2.CAP_PROP_AUTO_EXPOSURE, cv2.CAP_PROP_EXPOSURE, cv2.CAP_PROP_GAIN


def v4l2(camera: FakeCamera, exposure_us: float, gain: float) -> V4l2Source:
    return V4l2Source("/dev/video0", exposure_us=exposure_us, gain=gain,
                      capture_factory=camera.capture)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- V4L2


def test_v4l2_turns_auto_exposure_off_then_sets_time_and_gain() -> None:
    camera = FakeCamera()
    src = v4l2(camera, 10_000, 4)
    assert not src.exposure_pinned  # nothing is known before the camera is open
    src.open()
    calls = [prop for prop, _ in camera.captures[-1].set_calls]
    # Manual mode before the time: a UVC driver refuses the time while automatic.
    assert calls.index(AUTO) < calls.index(EXPOSURE)
    assert dict(camera.captures[-1].set_calls)[EXPOSURE] == 100  # 100 µs steps
    assert camera.controls[AUTO] == 1 and camera.controls[EXPOSURE] == 100
    assert camera.controls[GAIN] == 4
    assert src.exposure_pinned and src.exposure_problems == ()
    src.close()
    assert not src.exposure_pinned


def test_v4l2_clamped_exposure_is_not_pinned(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera(exposure_range=(3, 2047))  # at most 204.7 ms
    src = v4l2(camera, 300_000, 4)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert not src.exposure_pinned
    text = " ".join(warnings_of(caplog))
    assert "204700 us" in text and "300000 us" in text and "relative units" in text


def test_v4l2_camera_without_manual_exposure(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera(manual_exposure=False)
    src = v4l2(camera, 10_000, 4)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert camera.controls[AUTO] == 3  # still automatic
    assert not src.exposure_pinned
    assert any("auto exposure mode 3" in w for w in warnings_of(caplog))


def test_v4l2_camera_without_gain_control(caplog: pytest.LogCaptureFixture) -> None:
    src = v4l2(FakeCamera(gain_range=None), 10_000, 4)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert not src.exposure_pinned
    assert [p for p in src.exposure_problems if "gain" in p]
    assert any("gain 0" in w for w in warnings_of(caplog))


def test_v4l2_exposure_not_a_whole_number_of_steps_is_not_pinned() -> None:
    src = v4l2(FakeCamera(), 150, 4)  # V4L2 holds 100 or 200 µs, never 150
    src.open()
    assert not src.exposure_pinned


def test_v4l2_automatic_by_default_touches_nothing(caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera()
    src = v4l2(camera, 0, 0)
    with caplog.at_level(logging.WARNING):
        src.open()
    props = {prop for prop, _ in camera.captures[-1].set_calls}
    assert not props & {AUTO, EXPOSURE, GAIN}
    assert not src.exposure_pinned
    assert warnings_of(caplog) == []  # automatic is the normal case outside HEp-2
    assert any("automatic" in p for p in src.exposure_problems)


def test_v4l2_refuses_negative_settings() -> None:
    with pytest.raises(SourceError, match="positive"):
        v4l2(FakeCamera(), -1, 0)


def test_v4l2_pins_again_after_reopen() -> None:
    camera = FakeCamera()
    src = v4l2(camera, 20_000, 2)
    src.open()
    src.close()
    camera.controls[AUTO] = 3.0  # the camera was unplugged: the driver's defaults are back
    src.open()
    assert src.exposure_pinned and camera.controls[AUTO] == 1


# ---------------------------------------------------------------- picamera2


def scene() -> np.ndarray:
    return np.full((48, 64, 3), 30, np.uint8)


def picam(rig: CameraRig, exposure_us: float, gain: float, fps: float = 0.0) -> Picamera2Source:
    return Picamera2Source(0, fps=fps, exposure_us=exposure_us, gain=gain,
                           camera_factory=rig.camera)


def test_picamera2_controls_pin_exposure_and_gain() -> None:
    rig = CameraRig(scene())
    src = picam(rig, 10_000, 4)
    src.open()
    asked = rig.made[-1].asked["controls"]
    assert asked == {"AeEnable": False, "ExposureTime": 10_000, "AnalogueGain": 4.0}
    assert isinstance(asked["ExposureTime"], int)  # libcamera's ExposureTime is an integer
    # The sensor rounds to whole lines (14 µs here): within the 1 % tolerance.
    assert rig.made[-1].capture_metadata()["ExposureTime"] != 10_000
    assert src.exposure_pinned
    src.close()
    assert not src.exposure_pinned


def test_picamera2_exposure_longer_than_frame_is_not_pinned(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = CameraRig(scene())
    src = picam(rig, 50_000, 2, fps=30)  # a 30 fps frame lasts 33.3 ms
    with caplog.at_level(logging.WARNING):
        src.open()
    assert not src.exposure_pinned
    assert any("50000 us" in w and "relative units" in w for w in warnings_of(caplog))


def test_picamera2_gain_outside_sensor_range_is_not_pinned() -> None:
    rig = CameraRig(scene())
    src = picam(rig, 10_000, 32)  # the sensor's analogue gain stops at 16
    src.open()
    assert not src.exposure_pinned
    assert any("gain 16" in p for p in src.exposure_problems)


def test_picamera2_automatic_by_default(caplog: pytest.LogCaptureFixture) -> None:
    rig = CameraRig(scene())
    src = picam(rig, 0, 0)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert set(rig.made[-1].asked["controls"]) == set()
    assert not src.exposure_pinned and warnings_of(caplog) == []


def test_exposure_controls_and_metadata_check() -> None:
    assert exposure_controls(0, 0) == {}
    assert exposure_controls(0, 2) == {"AnalogueGain": 2.0, "AeEnable": False}
    assert pin_problems({"ExposureTime": 9_990, "AnalogueGain": 4.0}, 10_000, 4) == []
    assert pin_problems({"ExposureTime": 8_000, "AnalogueGain": 4.0}, 10_000, 4)
    assert pin_problems({"AnalogueGain": 4.0}, 10_000, 4) == [
        "the frame metadata has no ExposureTime"]
    assert pin_problems(None, 10_000, 4)


# ---------------------------------------------------------------- factory


def test_factory_passes_exposure_and_gain() -> None:
    cfg = SourceConfig(uri="v4l2:/dev/video3", exposure_us=8_000, gain=3)
    src = open_source(cfg, InputConfig())
    assert isinstance(src, V4l2Source)
    assert (src.exposure_us, src.gain) == (8_000, 3)
    pic = open_source(SourceConfig(uri="picamera2:0", exposure_us=8_000, gain=3), InputConfig())
    assert isinstance(pic, Picamera2Source)
    assert (pic.exposure_us, pic.gain) == (8_000, 3)


def test_factory_passes_the_tuning_file_to_picamera2_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "linear.json"
    path.write_text('{"version": 2.0, "algorithms": [{"rpi.contrast": {"ce_enable": 0}}]}')
    pic = open_source(SourceConfig(uri="picamera2:0", tuning_file=str(path)), InputConfig())
    assert isinstance(pic, Picamera2Source) and pic.tuning_file == str(path)
    with caplog.at_level(logging.WARNING):
        open_source(SourceConfig(uri="v4l2:0", tuning_file=str(path)), InputConfig())
    assert any("picamera2 sources only" in w for w in warnings_of(caplog))


def test_factory_warns_that_gstreamer_pipeline_must_pin(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = SourceConfig(uri="gstreamer:v4l2src ! videoconvert ! appsink", exposure_us=8_000,
                       gain=3)
    with caplog.at_level(logging.WARNING):
        src = open_source(cfg, InputConfig())
    assert isinstance(src, GstreamerSource)
    assert any("pipeline" in w for w in warnings_of(caplog))


# ---------------------------------------------------------------- white balance


AWB = cv2.CAP_PROP_AUTO_WB


def test_v4l2_turns_automatic_white_balance_off_when_asked(
        caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera()
    left = V4l2Source("/dev/video0", capture_factory=camera.capture)
    left.open()
    assert AWB not in {prop for prop, _ in camera.captures[-1].set_calls}  # default: untouched
    assert camera.controls[AWB] == 1 and left.white_balance_problems == ()
    left.close()
    src = V4l2Source("/dev/video0", auto_white_balance=False, capture_factory=camera.capture)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert camera.controls[AWB] == 0 and src.white_balance_problems == ()
    assert warnings_of(caplog) == []
    assert src.read().white_balance_held is True
    left.open()
    assert left.read().white_balance_held is None  # not asked: nothing to hold


def test_v4l2_camera_that_keeps_automatic_white_balance_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    camera = FakeCamera(manual_white_balance=False)
    src = V4l2Source("/dev/video0", auto_white_balance=False, capture_factory=camera.capture)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert camera.controls[AWB] == 1
    assert "kept automatic white balance" in src.white_balance_problems[0]
    assert any("automatic white balance" in w for w in warnings_of(caplog))
    assert src.read().white_balance_held is False  # every frame carries it to the result


def test_picamera2_fixes_the_colour_gains_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    rig = CameraRig(scene())
    src = Picamera2Source(0, colour_gains=(1.0, 1.0), camera_factory=rig.camera)
    with caplog.at_level(logging.WARNING):
        src.open()
    asked = rig.made[-1].asked["controls"]
    assert asked == {"AwbEnable": False, "ColourGains": (1.0, 1.0)}
    assert src.white_balance_problems == () and warnings_of(caplog) == []
    assert src.read().white_balance_held is True
    auto = Picamera2Source(0, camera_factory=rig.camera)
    auto.open()
    assert "AwbEnable" not in rig.made[-1].asked["controls"]
    assert auto.read().white_balance_held is None


def test_picamera2_colour_gains_the_isp_does_not_hold_are_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = CameraRig(scene())
    rig.colour_gain_limits = (0.5, 8.0)
    src = Picamera2Source(0, colour_gains=(12.0, 1.0), camera_factory=rig.camera)
    with caplog.at_level(logging.WARNING):
        src.open()
    assert "not the (12, 1) asked for" in src.white_balance_problems[0]
    assert any("colour gains" in w for w in warnings_of(caplog))
    assert src.read().white_balance_held is False
    assert white_balance_problems({"AnalogueGain": 2.0}, (1.0, 1.0)) == [
        "the frame metadata has no ColourGains"]
    assert white_balance_problems(None, (1.0, 1.0))
    with pytest.raises(SourceError, match="positive"):
        Picamera2Source(0, colour_gains=(0.0, 1.0), camera_factory=rig.camera)


def test_factory_passes_the_white_balance_and_warns_for_gstreamer(
        caplog: pytest.LogCaptureFixture) -> None:
    off = {"auto_white_balance": False, "colour_gains": [1.2, 0.9]}
    pic = open_source(SourceConfig(uri="picamera2:0", **off), InputConfig())
    assert isinstance(pic, Picamera2Source) and pic.colour_gains == (1.2, 0.9)
    auto = open_source(SourceConfig(uri="picamera2:0"), InputConfig())
    assert isinstance(auto, Picamera2Source) and auto.colour_gains is None
    usb = open_source(SourceConfig(uri="v4l2:0", **off), InputConfig())
    assert isinstance(usb, V4l2Source) and not usb.auto_white_balance
    with caplog.at_level(logging.WARNING):
        open_source(SourceConfig(uri="gstreamer:v4l2src ! appsink", **off), InputConfig())
    assert any("white_balance_automatic=0" in w for w in warnings_of(caplog))
