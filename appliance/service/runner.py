"""The composition root of `appliance run`: config → store → assay → source → loop.

One stop event (set by SIGINT/SIGTERM) ends the loop; everything opened is
closed in reverse order. The real-time pipeline (threads, latest-frame
scheduling) replaces the simple loop in a later issue.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from appliance.assays.her2.assay import Her2Assay
from appliance.capture.frame import Frame
from appliance.capture.replay import ReplaySource, parse_source
from appliance.config import Config
from appliance.outputs.store import ResultStore
from appliance.service.recorder import Recorder

_log = logging.getLogger(__name__)


def run(cfg: Config, *, stop: threading.Event, out: TextIO) -> dict[str, int]:
    """Score frames from the configured source until it ends or ``stop`` is set."""
    with ExitStack() as stack:
        store = stack.enter_context(ResultStore(cfg.store.path))
        assay = stack.enter_context(Her2Assay.from_config(cfg))
        source = ReplaySource(parse_source(cfg.source.uri), input_cfg=cfg.input,
                              fps=cfg.source.fps, loop=cfg.source.loop, stop=stop)
        stack.callback(source.close)
        recorder = Recorder(
            store=store, config_sha256=cfg.sha256(),
            overlay_dir=Path(cfg.overlay.dir) if cfg.overlay.enabled else None, out=out,
        )
        _log.info("scoring %s from %s with %s (%s)", cfg.assay, cfg.source.uri,
                  assay.model.name, assay.model.precision)
        for item in source.frames():
            if isinstance(item, Frame):
                recorder.record(assay.score_guarded(item), item.image)
            else:
                recorder.record(assay.refuse_input(item.source, item.seq, item.code,
                                                   item.reason), None)
        _log.info("stopped: %s", recorder.counts)
        return recorder.counts
