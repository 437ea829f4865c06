"""What every assay does the same way around its own steps: score, guard, close.

An assay subclass supplies ``prepare`` (everything before the model, with ``refusal`` set
when a quality gate refuses the field), ``infer`` (the model), ``finish`` (everything
after) and ``refuse_input`` (the result for an input that never became a frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from appliance.capture.frame import Frame
from appliance.config import Config

INTERNAL_ERROR = "internal_error"
_T = TypeVar("_T")
_R = TypeVar("_R")
_log = logging.getLogger(__name__)


class _Closable(Protocol):
    def close(self) -> None: ...


class AssayShell(Generic[_R]):
    """``score``, ``guarded``, ``score_guarded`` and the context manager, for result type _R."""

    backend: _Closable
    cfg: Config

    def prepare(self, frame: Frame, scale: Any = None) -> Any:
        raise NotImplementedError

    def reconfigure(self, cfg: Config) -> tuple[str, ...]:
        """Take a reloaded config between fields (``service/reload.py``); what it re-read
        beyond the config's own values (files it names). An assay that loads nothing the
        config names just takes it. A ConfigError leaves the assay as it was."""
        self.cfg = cfg
        return ()

    def reading_inputs(self) -> tuple[str, ...]:
        """Digests of what a reading depends on besides ``cfg``'s values (the files it
        names, read at start-up or by :meth:`reconfigure`), so that a file changed in place
        and taken up by a reload sends the view in front of the camera to be read again.
        An assay that loads nothing the config names has none."""
        return ()

    def infer(self, prepared: Any) -> Any:
        raise NotImplementedError

    def finish(self, prepared: Any, logits: Any) -> _R:
        raise NotImplementedError

    def refuse_input(self, source: str, seq: int, code: str, reason: str) -> _R:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (idempotent)."""
        self.backend.close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def score(self, frame: Frame) -> _R:
        """Score one field; refusals come back as a not-scorable result, never raised."""
        prepared = self.prepare(frame)
        if prepared.refusal is not None:
            refusal: _R = prepared.refusal
            return refusal
        return self.finish(prepared, self.infer(prepared))

    def guarded(self, frame: Frame, step: Callable[[], _T]) -> _T | _R:
        """Run one scoring step; a bug becomes this field's ``internal_error`` result.

        The loop and the other fields go on; the result says ``internal_error`` so the
        dashboard and the store show that something went wrong, never a silent gap.
        """
        try:
            return step()
        except Exception as exc:  # the service must outlive a bad field
            _log.exception("internal error scoring %s (seq %d)", frame.source, frame.seq)
            return self.refuse_input(frame.source, frame.seq, INTERNAL_ERROR,
                                     f"internal error: {exc!r}")

    def score_guarded(self, frame: Frame) -> _R:
        """``score``, with a bug in one field becoming that field's refusal, logged in full."""
        return self.guarded(frame, lambda: self.score(frame))
