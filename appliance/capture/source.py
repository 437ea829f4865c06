"""The one interface every frame source implements, and what it reports.

A source is opened, read one frame at a time, and closed::

    source.open()            # may raise SourceFault (camera absent) or SourceError (bad set-up)
    item = source.read()     # Frame, RejectedFrame, or raises SourceFault / EndOfStream
    source.close()           # idempotent

``read`` waits at most about ``read_timeout_s`` and raises :class:`SourceFault`
when the camera gives nothing (unplugged, timed out, corrupt stream): the
capture loop (:mod:`appliance.capture.supervisor`) then reports the state change
and reopens the source with bounded back-off. A corrupt *file* in a replay is
not a fault: it comes back as a :class:`RejectedFrame` so it is reported and the
replay goes on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from appliance.capture.frame import Frame


class SourceError(RuntimeError):
    """A source cannot work as configured (missing folder, bad URI, missing library).

    Retrying does not help; the service stops with this message.
    """


class SourceFault(RuntimeError):
    """The camera gave no usable frame now (unplugged, timeout, corrupt data).

    Transient by nature: the supervisor reopens the source with back-off.
    """


class EndOfStream(Exception):
    """A replay (or a video file) has no more frames."""


@dataclass(frozen=True)
class RejectedFrame:
    """A replayed file that could not be decoded: reported, never silently skipped."""

    seq: int
    source: str
    code: str
    reason: str


class SourceState(enum.Enum):
    """What the capture loop is doing; every change is logged and published."""

    OPENING = "opening"
    STREAMING = "streaming"
    FAULT = "fault"  # no picture: the reason says why; reopening with back-off
    ENDED = "ended"  # a replay reached its end
    CLOSED = "closed"


@runtime_checkable
class FrameSource(Protocol):
    """A camera, a replay or a generator of frames."""

    #: Stable identifier of the source in results and logs (e.g. ``v4l2:/dev/video0``).
    source_id: str

    def open(self) -> None:
        """Acquire the device or files; raise SourceFault (retry) or SourceError (give up)."""

    def read(self) -> Frame | RejectedFrame:
        """The next frame; raise SourceFault, or EndOfStream when a replay is done."""

    def close(self) -> None:
        """Release the device (idempotent; safe after a failed open)."""
