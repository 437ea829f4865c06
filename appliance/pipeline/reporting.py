"""Which results are reported (stored and published): pure logic, no threads.

Every analysed frame updates the live overlay; only a frame of a still, sharp
view is a candidate for the store, and each field is reported once: not again
while it stays in view (same still period), nor when the user comes back to it
(its fingerprint matches one already reported), unless the earlier report could
not be scored and this one can.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.assays.results import AnyResult
from appliance.capture.frame import Frame
from appliance.pipeline.field_memory import FieldMemory, ReportDecision
from appliance.pipeline.stability import Stage, ViewState


@dataclass(frozen=True)
class Tracked:
    """A captured frame and what the stillness tracker said about it."""

    frame: Frame
    view: ViewState


@dataclass(frozen=True)
class Outcome:
    """The result of analysing one tracked frame."""

    tracked: Tracked
    result: AnyResult
    done_t: float  # monotonic time the result was ready
    decision: ReportDecision | None  # None: not a candidate (view moving, settling, blurred)

    @property
    def reported(self) -> bool:
        """True when this result goes to the store and the broker."""
        return self.decision is not None and self.decision.report


class ReportPolicy:
    """Applies the report-once rules to each analysed frame, in the order results arrive."""

    def __init__(self, memory: FieldMemory) -> None:
        self.memory = memory

    def consider(self, tracked: Tracked, result: AnyResult) -> ReportDecision | None:
        """The decision for one result; remembers what is reported."""
        view = tracked.view
        if view.stage is not Stage.STABLE or view.still_id is None or view.fingerprint is None:
            return None
        decision = self.memory.decide(view.still_id, view.fingerprint, result.scored)
        if decision.report:
            key = field_key(tracked.frame)
            self.memory.remember(key, view.still_id, view.fingerprint, result.scored)
        return decision


def field_key(frame: Frame) -> str:
    """The name a reported field is remembered by: its source and frame number."""
    return f"{frame.source}#{frame.seq}"
