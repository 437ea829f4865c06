"""Build the frame source a ``[source]`` config section names, by the URI's scheme."""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.capture.gstreamer import GstreamerSource
from appliance.capture.picamera2_source import Picamera2Source
from appliance.capture.replay import ReplaySource
from appliance.capture.source import FrameSource, SourceError
from appliance.capture.synthetic import SyntheticSource
from appliance.capture.v4l2 import V4l2Source
from appliance.config import SOURCE_KINDS, InputConfig, SourceConfig

_log = logging.getLogger(__name__)


def open_source(cfg: SourceConfig, input_cfg: InputConfig, *,
                camera_preview: bool = False) -> FrameSource:
    """Build (not yet open) the source of ``cfg.uri``; SourceError for a bad URI.

    ``camera_preview`` starts picamera2's DRM preview (for the picamera2 display sink).

    The caller (normally :class:`~appliance.capture.supervisor.CaptureSupervisor`)
    calls ``open()``; sources accept a second ``open()`` as a no-op.
    """
    kind, target = cfg.kind, cfg.target.strip()
    if cfg.tuning_file and kind != "picamera2":
        _log.warning("source %s: tuning_file is for picamera2 sources only; ignored", cfg.uri)
    if kind == "replay":
        if not target:
            raise SourceError(f"source {cfg.uri!r}: expected replay:DIR_OR_VIDEO")
        return ReplaySource(Path(target), input_cfg=input_cfg, fps=cfg.fps,
                            hold_s=cfg.hold_s, loop=cfg.loop)
    if kind == "synthetic":
        return SyntheticSource(_number(cfg.uri, target, "a seed"), width=cfg.width,
                               height=cfg.height, fps=cfg.fps, hold_s=cfg.hold_s,
                               loop=cfg.loop)
    if kind == "v4l2":
        return V4l2Source(target, width=cfg.width, height=cfg.height, fps=cfg.fps,
                          fourcc=cfg.fourcc, read_timeout_s=cfg.read_timeout_s,
                          exposure_us=cfg.exposure_us, gain=cfg.gain,
                          auto_white_balance=cfg.auto_white_balance)
    if kind == "gstreamer":
        if cfg.exposure_us or cfg.gain:
            # OpenCV cannot reach the camera element inside a pipeline: the pipeline string
            # itself must pin them (docs/hep2-calibration.md); the config only declares them.
            _log.warning("source %s: exposure_us and gain are not applied to a GStreamer "
                         "pipeline; pin them in the pipeline (e.g. v4l2src extra-controls, "
                         "nvarguscamerasrc exposuretimerange / gainrange / aelock)", cfg.uri)
        if not cfg.auto_white_balance:
            _log.warning("source %s: auto_white_balance = false is not applied to a "
                         "GStreamer pipeline; turn it off in the pipeline (e.g. v4l2src "
                         "extra-controls white_balance_automatic=0, or "
                         "white_balance_temperature_auto=0 on older kernels; "
                         "nvarguscamerasrc awblock=true)", cfg.uri)
        return GstreamerSource(target, read_timeout_s=cfg.read_timeout_s)
    if kind == "picamera2":
        return Picamera2Source(_number(cfg.uri, target, "a camera index"), width=cfg.width,
                               height=cfg.height, fps=cfg.fps,
                               read_timeout_s=cfg.read_timeout_s, preview=camera_preview,
                               exposure_us=cfg.exposure_us, gain=cfg.gain,
                               tuning_file=cfg.tuning_file,
                               colour_gains=(None if cfg.auto_white_balance else
                                             (cfg.colour_gains[0], cfg.colour_gains[1])))
    raise SourceError(f"source {cfg.uri!r}: unknown kind {kind!r}; expected one of "
                      f"{', '.join(k + ':' for k in SOURCE_KINDS)}")


def _number(uri: str, target: str, what: str) -> int:
    """The optional integer after the scheme (0 when absent)."""
    if not target:
        return 0
    if not target.isdigit():
        raise SourceError(f"source {uri!r}: expected {what} (a whole number >= 0) after "
                          f"the colon, got {target!r}")
    return int(target)
