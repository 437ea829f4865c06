"""What any assay hands on: its field result type, and the interface the pipeline drives.

The stages after an assay (pipeline, store, recorder, display, MQTT) take either result;
each output module picks its assay's contract by the result's type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.her2.types import FieldContext, FieldResult, ModelRef
from appliance.capture.frame import Frame
from appliance.config import Config

AnyResult = FieldResult | Hep2Result
RESULT_TYPES = (FieldResult, Hep2Result)
_T = TypeVar("_T")


class FieldAssay(Protocol):
    """One loaded assay as the real-time pipeline and the service drive it.

    ``prepare`` (everything before the model), ``infer`` (the model) and ``finish``
    (everything after) pass assay-specific values between them; a prepared value has
    ``refusal`` (a result when a quality gate refused the field) and ``scale``.
    """

    cfg: Config
    model: ModelRef
    field_context: Callable[[], FieldContext | None]

    def prepare(self, frame: Frame, scale: Any = None) -> Any: ...

    def reconfigure(self, cfg: Config) -> tuple[str, ...]: ...

    def reading_inputs(self) -> tuple[str, ...]: ...

    def infer(self, prepared: Any) -> Any: ...

    def finish(self, prepared: Any, logits: Any) -> Any: ...

    def score(self, frame: Frame) -> Any: ...

    def guarded(self, frame: Frame, step: Callable[[], _T]) -> Any: ...

    def refuse_input(self, source: str, seq: int, code: str, reason: str) -> Any: ...

    def close(self) -> None: ...


def open_assay(cfg: Config) -> FieldAssay:
    """The configured assay with its verified model (ModelError when it cannot load)."""
    if cfg.assay == "hep2":
        from appliance.assays.hep2.assay import Hep2Assay

        return Hep2Assay.from_config(cfg)
    from appliance.assays.her2.assay import Her2Assay

    return Her2Assay.from_config(cfg)
