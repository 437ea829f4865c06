"""Camera sources (V4L2, GStreamer, picamera2) against fakes of OpenCV and picamera2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture.factory import open_source
from appliance.capture.frame import Frame
from appliance.capture.gstreamer import GstreamerSource, ends_in_appsink, gstreamer_available
from appliance.capture.picamera2_source import Picamera2Source
from appliance.capture.replay import ReplaySource
from appliance.capture.source import FrameSource, SourceError, SourceFault
from appliance.capture.synthetic import SyntheticSource
from appliance.capture.v4l2 import V4l2Source, fourcc_code, fourcc_text
from appliance.config import InputConfig, SourceConfig
from tests.fakes.cv2_capture import FakeCamera
from tests.fakes.picamera2 import CameraRig

PIPELINE = ("v4l2src device=/dev/video0 ! videoconvert ! video/x-raw,format=BGR "
            "! appsink drop=true max-buffers=1")

BUILD_INFO_YES = """
General configuration for OpenCV 4.8.0 =====================================
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (58.54.100)
    GStreamer:                   YES (1.16.3)
    v4l/v4l2:                    YES (linux/videodev2.h)

  Parallel framework:            TBB (ver 2020.1 interface 11101)
"""

BUILD_INFO_NO = BUILD_INFO_YES.replace("YES (1.16.3)", "NO")

# The layout of OpenCV 3.x / early 4.x: sub-entries under an empty GStreamer line.
BUILD_INFO_OLD = """
  Video I/O:
    FFMPEG:                      YES
    GStreamer:
      base:                      YES (ver 1.14.5)
      video:                     YES (ver 1.14.5)
      app:                       YES (ver 1.14.5)
    V4L/V4L2:                    NO/YES

  Parallel framework:            pthreads
"""

# GStreamer mentioned elsewhere must not count: only the Video I/O entry does.
BUILD_INFO_ELSEWHERE = """
  GUI:
    GStreamer:                   YES
  Video I/O:
    FFMPEG:                      YES
"""


def rgb_scene() -> np.ndarray:
    """A picture whose three channels differ everywhere, so a swap cannot pass."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :, 0] = 210
    rgb[:, :, 1] = np.linspace(20, 120, 64, dtype=np.uint8)[None, :]
    rgb[:, :, 2] = 35
    return rgb


# ---------------------------------------------------------------- v4l2


def test_v4l2_configures_the_camera_and_delivers_rgb() -> None:
    camera = FakeCamera(fourccs=("YUYV", "MJPG"))
    camera.script(cv2.cvtColor(rgb_scene(), cv2.COLOR_RGB2BGR))
    source = V4l2Source("/dev/video0", width=1280, height=720, fps=30, fourcc="MJPG",
                        capture_factory=camera.capture)
    assert isinstance(source, FrameSource) and source.source_id == "v4l2:/dev/video0"
    source.open()
    assert camera.opened_with == [("/dev/video0", cv2.CAP_V4L2)]
    props = [prop for prop, _ in camera.captures[0].set_calls]
    # The pixel format goes first: it decides which sizes and rates the camera offers.
    assert props[:4] == [cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH,
                         cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS]
    assert (cv2.CAP_PROP_BUFFERSIZE, 1) in camera.captures[0].set_calls
    frame = source.read()
    assert isinstance(frame, Frame) and frame.seq == 1
    assert np.array_equal(frame.image, rgb_scene())
    assert frame.pixel_format == "MJPG" and frame.source == "v4l2:/dev/video0"
    assert source.read().seq == 2
    source.close()


def test_v4l2_reports_the_format_the_camera_actually_delivers() -> None:
    camera = FakeCamera(fourccs=("YUYV",))  # a camera without MJPG
    source = V4l2Source("0", fourcc="MJPG", capture_factory=camera.capture)
    source.open()
    assert camera.opened_with == [(0, cv2.CAP_V4L2)]  # an index, as OpenCV wants it
    assert source.read().pixel_format == "YUYV"


def test_v4l2_any_fourcc_and_zero_sizes_leave_the_driver_defaults() -> None:
    camera = FakeCamera()
    source = V4l2Source("/dev/video0", fourcc="any", capture_factory=camera.capture)
    source.open()
    props = {prop for prop, _ in camera.captures[0].set_calls}
    assert props.isdisjoint({cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH,
                             cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS})
    assert cv2.CAP_PROP_BUFFERSIZE in props


def test_v4l2_open_failure_is_a_fault_with_the_reason(tmp_path: Path) -> None:
    camera = FakeCamera()
    camera.fail_opens(1)
    missing = tmp_path / "video9"
    source = V4l2Source(str(missing), capture_factory=camera.capture)
    with pytest.raises(SourceFault, match=r"cannot open .*video9: .*does not exist"):
        source.open()
    assert not source.is_open
    source.close()  # safe after a failed open
    present = tmp_path / "video0"
    present.touch()
    camera.fail_opens(1)
    with pytest.raises(SourceFault, match="exists but is not usable"):
        V4l2Source(str(present), capture_factory=camera.capture).open()


@pytest.mark.parametrize(("step", "reason"), [
    (None, "no frame"),
    (cv2.error("OpenCV(4.8.0) cap_v4l.cpp:1119: error: (-2:Unspecified error) select() "
               "timeout"), "OpenCV error while reading"),
    (np.zeros((48, 64), np.uint8), "unusable frame"),
    (np.zeros((48, 64, 3), np.float32), "unusable frame"),
    (np.zeros((0, 0, 3), np.uint8), "unusable frame"),
])
def test_v4l2_read_failures_are_faults(step: object, reason: str) -> None:
    camera = FakeCamera()
    camera.script(step)  # type: ignore[arg-type]
    source = V4l2Source("/dev/video0", capture_factory=camera.capture)
    source.open()
    with pytest.raises(SourceFault, match=reason):
        source.read()


def test_v4l2_bad_settings_and_closed_reads() -> None:
    with pytest.raises(SourceError, match="fourcc"):
        V4l2Source("/dev/video0", fourcc="H264")
    with pytest.raises(SourceError, match="no device"):
        V4l2Source("  ")
    camera = FakeCamera()
    source = V4l2Source("/dev/video0", capture_factory=camera.capture)
    source.open()
    source.close()
    source.close()
    assert camera.captures[0].released == 1
    with pytest.raises(SourceFault, match="not open"):
        source.read()


def test_fourcc_helpers_match_opencv() -> None:
    for text in ("MJPG", "YUYV", "BGR3"):
        assert fourcc_code(text) == cv2.VideoWriter.fourcc(*text)
        assert fourcc_text(float(fourcc_code(text))) == text
    assert fourcc_text(0.0) == "unknown" and fourcc_text(-1.0) == "unknown"


# ---------------------------------------------------------------- gstreamer


def test_gstreamer_available_reads_the_video_io_section() -> None:
    assert gstreamer_available(BUILD_INFO_YES)
    assert not gstreamer_available(BUILD_INFO_NO)
    assert gstreamer_available(BUILD_INFO_OLD)
    assert not gstreamer_available(BUILD_INFO_OLD.replace("app:                       YES",
                                                          "app:                       NO"))
    assert not gstreamer_available(BUILD_INFO_ELSEWHERE)
    assert not gstreamer_available("")


def test_gstreamer_without_support_names_jetpack() -> None:
    if gstreamer_available(cv2.getBuildInformation()):
        pytest.skip("this OpenCV has GStreamer")
    source = GstreamerSource(PIPELINE)
    with pytest.raises(SourceError, match="JetPack") as err:
        source.open()
    assert "python3-opencv" in str(err.value) and "pip" in str(err.value)
    with pytest.raises(SourceError, match="JetPack"):
        GstreamerSource(PIPELINE, build_info=BUILD_INFO_NO).open()


def test_gstreamer_pipeline_must_end_in_an_appsink() -> None:
    assert ends_in_appsink(PIPELINE)
    assert ends_in_appsink("videotestsrc ! appsink")
    assert not ends_in_appsink("videotestsrc ! autovideosink")
    assert not ends_in_appsink("videotestsrc ! appsink ! fakesink")
    assert not ends_in_appsink("videotestsrc ! appsinkx")
    with pytest.raises(SourceError, match="must end with an appsink"):
        GstreamerSource("videotestsrc ! autovideosink")
    with pytest.raises(SourceError, match="empty"):
        GstreamerSource("   ")


def test_gstreamer_reads_like_v4l2() -> None:
    camera = FakeCamera(backend=cv2.CAP_GSTREAMER)
    camera.script(cv2.cvtColor(rgb_scene(), cv2.COLOR_RGB2BGR), np.zeros((72, 64), np.uint8))
    source = GstreamerSource(PIPELINE, read_timeout_s=1.5, capture_factory=camera.capture,
                             build_info=BUILD_INFO_YES)
    source.open()
    assert camera.opened_with == [(PIPELINE, cv2.CAP_GSTREAMER)]
    assert (cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1500.0) in camera.captures[0].set_calls
    frame = source.read()
    assert np.array_equal(frame.image, rgb_scene()) and frame.pixel_format == "BGR"
    with pytest.raises(SourceFault, match="format=BGR"):  # e.g. an NV12 pipeline end
        source.read()
    source.close()
    camera.fail_opens(1)
    with pytest.raises(SourceFault, match=r"gst-launch-1\.0"):
        GstreamerSource(PIPELINE, capture_factory=camera.capture,
                        build_info=BUILD_INFO_YES).open()


# ---------------------------------------------------------------- picamera2


def test_picamera2_configures_and_delivers_rgb_from_rgb888() -> None:
    rig = CameraRig(rgb_scene())
    source = Picamera2Source(0, width=64, height=48, fps=15, read_timeout_s=1.0,
                             camera_factory=rig.camera)
    source.open()
    cam = rig.made[0]
    assert cam.camera_config is not None
    assert cam.camera_config["main"] == {"format": "RGB888", "size": (64, 48)}
    assert cam.camera_config["queue"] is False
    assert cam.camera_config["controls"] == {"FrameRate": 15}
    frame = source.read()
    assert np.array_equal(frame.image, rgb_scene())  # B,G,R in memory turned back to RGB
    assert frame.image.flags.c_contiguous and frame.pixel_format == "RGB888"
    assert cam.waits == [1.0]


def test_picamera2_sets_only_what_is_configured() -> None:
    rig = CameraRig(rgb_scene())
    source = Picamera2Source(0, camera_factory=rig.camera)
    source.open()
    assert rig.made[0].asked == {"main": {"format": "RGB888"}, "controls": {}}
    with pytest.raises(SourceError, match="both"):
        Picamera2Source(0, width=640)


def test_picamera2_loads_a_tuning_file_and_refuses_one_it_cannot_use(tmp_path: Path) -> None:
    rig = CameraRig(rgb_scene())
    Picamera2Source(0, camera_factory=rig.camera).open()
    assert rig.made[0].tuning is None  # the sensor's own
    linear = {"version": 2.0, "target": "pisp", "algorithms": [
        {"rpi.contrast": {"ce_enable": 0, "gamma_curve": [0, 0, 65535, 65535]}}]}
    path = tmp_path / "imx477_linear.json"
    path.write_text(json.dumps(linear))
    source = Picamera2Source(0, tuning_file=str(path), camera_factory=rig.camera)
    source.open()
    assert rig.made[1].tuning == linear
    for name, text, why in (("missing.json", None, "cannot read"),
                            ("broken.json", "{", "not JSON"),
                            ("other.json", '{"version": 2}', "no 'algorithms' list")):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SourceError, match=why) as err:
            Picamera2Source(0, tuning_file=str(tmp_path / name), camera_factory=rig.camera)
        assert "source.tuning_file" in str(err.value)


def test_picamera2_errors_are_faults_and_close_is_idempotent() -> None:
    rig = CameraRig(rgb_scene())
    rig.fail_capture(2, TimeoutError("timed out waiting for a frame"))
    source = Picamera2Source(0, camera_factory=rig.camera)
    source.open()
    source.read()
    with pytest.raises(SourceFault, match="TimeoutError"):
        source.read()
    source.close()
    source.close()
    cam = rig.made[0]
    assert (cam.stopped, cam.closed) == (1, 1)
    with pytest.raises(SourceFault, match="cannot open camera 1"):
        Picamera2Source(1, camera_factory=rig.camera).open()


def test_picamera2_is_imported_when_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = CameraRig(rgb_scene())
    monkeypatch.setitem(sys.modules, "picamera2", rig.module())
    source = Picamera2Source(0)
    source.open()
    assert np.array_equal(source.read().image, rgb_scene())
    source.close()


def test_missing_picamera2_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    source = Picamera2Source(0)  # building it does not need the module
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        source.open()


# ---------------------------------------------------------------- factory


def test_factory_builds_each_kind(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    cases = {
        f"replay:{tmp_path}": ReplaySource,
        "synthetic": SyntheticSource,
        "synthetic:7": SyntheticSource,
        "v4l2:/dev/video0": V4l2Source,
        "v4l2:0": V4l2Source,
        f"gstreamer:{PIPELINE}": GstreamerSource,
        "picamera2": Picamera2Source,
        "picamera2:1": Picamera2Source,
    }
    for uri, kind in cases.items():
        source = open_source(SourceConfig(uri=uri), InputConfig())
        assert type(source) is kind, uri
    synthetic = open_source(SourceConfig(uri="synthetic:7"), InputConfig())
    assert synthetic.source_id == "synthetic:7"
    camera = open_source(SourceConfig(uri="picamera2:1", width=640, height=480), InputConfig())
    assert camera.source_id == "picamera2:1"


@pytest.mark.parametrize(("uri", "reason"), [
    ("camera:0", "unknown kind"),
    ("replay:", "expected replay:"),
    ("synthetic:abc", "a seed"),
    ("picamera2:-1", "camera index"),
    ("gstreamer:videotestsrc ! autovideosink", "appsink"),
])
def test_factory_refuses_bad_uris(uri: str, reason: str) -> None:
    with pytest.raises(SourceError, match=reason):
        open_source(SourceConfig(uri=uri), InputConfig())
