"""The live display: the camera picture with the latest result drawn over it.

:mod:`.live` composes pictures (cheaply, with caches), :mod:`.sinks` chooses where
they go (:func:`open_display`); the pygame and picamera2 sinks are imported only
when chosen. A display thread does, for each frame it shows::

    with open_display(cfg.display, picam2=camera) as sink:
        composer = LiveComposer()
        while not stop.wait(1 / cfg.display.max_fps) and not sink.wants_quit:
            show_live(sink, composer, frame, result, status, show_cells=cfg.display.show_cells)
"""

from __future__ import annotations

import numpy as np

from appliance.assays.results import AnyResult
from appliance.outputs.display.live import (
    DEFAULT_SIZE,
    LiveComposer,
    LiveStatus,
    compose_annotations,
    compose_live,
)
from appliance.outputs.display.sinks import (
    DisplayError,
    DisplaySink,
    FileSink,
    NullSink,
    open_display,
)

__all__ = [
    "DisplayError",
    "DisplaySink",
    "FileSink",
    "LiveComposer",
    "LiveStatus",
    "NullSink",
    "compose_annotations",
    "compose_live",
    "open_display",
    "show_live",
]


def show_live(sink: DisplaySink, composer: LiveComposer, frame: np.ndarray | None,
              result: AnyResult | None, status: LiveStatus, *,
              show_cells: bool = True) -> None:
    """Compose what ``sink`` wants (the picture, or only annotations) and show it.

    Nothing is composed for a :class:`NullSink`, nor for a :class:`FileSink` before its
    interval is over: composing costs CPU the scoring needs.
    """
    if isinstance(sink, NullSink) or (isinstance(sink, FileSink) and not sink.due):
        return
    if sink.annotations_only:
        size = sink.size
        if size is None:
            size = DEFAULT_SIZE if frame is None else (frame.shape[1], frame.shape[0])
        sink.show(composer.annotations(result, status, size=size, show_cells=show_cells))
        return
    sink.show(composer.compose(frame, result, status, size=sink.size, show_cells=show_cells))
