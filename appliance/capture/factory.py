"""Build the frame source a ``[source]`` config section names, by the URI's scheme."""

from __future__ import annotations

from pathlib import Path

from appliance.capture.gstreamer import GstreamerSource
from appliance.capture.picamera2_source import Picamera2Source
from appliance.capture.replay import ReplaySource
from appliance.capture.source import FrameSource, SourceError
from appliance.capture.synthetic import SyntheticSource
from appliance.capture.v4l2 import V4l2Source
from appliance.config import SOURCE_KINDS, InputConfig, SourceConfig


def open_source(cfg: SourceConfig, input_cfg: InputConfig, *,
                camera_preview: bool = False) -> FrameSource:
    """Build (not yet open) the source of ``cfg.uri``; SourceError for a bad URI.

    ``camera_preview`` starts picamera2's DRM preview (for the picamera2 display sink).

    The caller (normally :class:`~appliance.capture.supervisor.CaptureSupervisor`)
    calls ``open()``; sources accept a second ``open()`` as a no-op.
    """
    kind, target = cfg.kind, cfg.target.strip()
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
                          fourcc=cfg.fourcc, read_timeout_s=cfg.read_timeout_s)
    if kind == "gstreamer":
        return GstreamerSource(target, read_timeout_s=cfg.read_timeout_s)
    if kind == "picamera2":
        return Picamera2Source(_number(cfg.uri, target, "a camera index"), width=cfg.width,
                               height=cfg.height, fps=cfg.fps,
                               read_timeout_s=cfg.read_timeout_s, preview=camera_preview)
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
