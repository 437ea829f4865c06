"""What happens to every field result: stored first, then overlay and the printed line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult
from appliance.outputs import hep2_json, hep2_overlay
from appliance.outputs.outbox import MessageBuilder
from appliance.outputs.overlay import render_overlay, write_png
from appliance.outputs.result_json import result_to_json
from appliance.outputs.store import (
    AnyResult,
    Companion,
    ResultStore,
    Storable,
    StoreError,
    well_file,
)
from appliance.outputs.table import HEADER, HEP2_HEADER, format_hep2_row, format_row

_log = logging.getLogger(__name__)


class Recorder:
    """Commits each result to the store, writes its overlay, prints its table row or JSON.

    The store comes first: a result (and, with MQTT, its outbox message, in the same
    transaction) is on disk before anything is shown. A store
    failure (full disk) is logged and the store keeps the result in its backlog.
    """

    def __init__(self, *, store: ResultStore | None, config_sha256: str,
                 overlay_dir: Path | None, out: TextIO, as_json: bool = False,
                 with_cells: bool = False,
                 message_for: Callable[[AnyResult], MessageBuilder] | None = None,
                 companion_for: Callable[[AnyResult, np.ndarray | None], Companion]
                 | None = None,
                 after_store: Sequence[Callable[[], None]] = ()) -> None:
        self.store = store
        self.config_sha256 = config_sha256
        self.overlay_dir = overlay_dir
        self.out = out
        self.as_json = as_json
        self.with_cells = with_cells
        self.message_for = message_for  # the MQTT outbox message committed with each result
        # The case link and audit entry, written in the result's transaction.
        self.companion_for = companion_for
        # e.g. wake the MQTT publisher (the message is on disk), refresh the case line
        self.after_store = tuple(after_store)
        self.counts = {"fields": 0, "scored": 0, "not_scorable": 0, "store_errors": 0}
        self._header_done = False

    def record(self, result: AnyResult, image: np.ndarray | None, *,
               config_sha256: str | None = None) -> int | None:
        """Store, draw and print one result; its store row id (None: no store, or not
        written yet).

        ``config_sha256`` is the config the result was read under, where it may differ from
        the one the recorder was made with (the service after ``set_objective`` or a
        reload); None: the recorder's.
        """
        self.counts["fields"] += 1
        self.counts["scored" if result.scored else "not_scorable"] += 1
        row = None
        if self.store is not None:
            row = self._store(result, result.file,
                              outbox=self.message_for(result) if self.message_for else None,
                              companion=(self.companion_for(result, image)
                                         if self.companion_for else None),
                              config_sha256=config_sha256)
        if self.overlay_dir is not None and image is not None:
            self._write_overlay(result, image)
        self._print(result)
        return row

    def record_well(self, well: Hep2WellResult) -> None:
        """Store a HEp-2 well's pooled call (its fields were recorded one by one)."""
        if self.store is not None:
            self._store(well, well_file(well.fields, well.fields_refused))

    def _store(self, result: Storable, name: str, *, outbox: MessageBuilder | None = None,
               companion: Companion | None = None,
               config_sha256: str | None = None) -> int | None:
        """Add to the store and return the row id; a failure (full disk) is counted and
        logged, the store keeps the result in its backlog, and None is returned."""
        assert self.store is not None
        try:
            row = self.store.add(result, config_sha256=config_sha256 or self.config_sha256,
                                 outbox=outbox, companion=companion)
            for hook in self.after_store:
                hook()
        except StoreError as exc:
            self.counts["store_errors"] += 1
            _log.error("result of %s kept in memory, not yet stored: %s", name, exc)
            return None
        return row

    def _write_overlay(self, result: AnyResult, image: np.ndarray) -> None:
        assert self.overlay_dir is not None
        name = f"{result.seq:05d}_{Path(result.file).stem}_overlay.png"
        try:
            picture = (hep2_overlay.render_overlay(image, result)
                       if isinstance(result, Hep2Result) else render_overlay(image, result))
            write_png(self.overlay_dir / name, picture)
        except OSError as exc:
            _log.error("overlay %s not written: %s", name, exc)

    def _print(self, result: AnyResult) -> None:
        hep2 = isinstance(result, Hep2Result)
        if self.as_json:
            text = (hep2_json.to_json(hep2_json.result_to_dict(result,
                                                               include_cells=self.with_cells))
                    if isinstance(result, Hep2Result)
                    else result_to_json(result, include_cells=self.with_cells))
            print(text, file=self.out)
        else:
            if not self._header_done:
                print(HEP2_HEADER if hep2 else HEADER, file=self.out)
                self._header_done = True
            print(format_hep2_row(result) if isinstance(result, Hep2Result)
                  else format_row(result), file=self.out)
        self.out.flush()
