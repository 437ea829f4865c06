"""Which results are reported (stored and published): pure logic, no threads.

Every analysed frame updates the live overlay; only a frame of a still, sharp
view is a candidate for the store, and each field is reported once: not again
while it stays in view (same still period), nor when the user comes back to it
(its fingerprint matches one already reported). Three exceptions, each reported
as superseding the earlier report (``result.supersedes``): the earlier report
could not be scored and this one can; the view, the stage unmoved, is now clearly
sharper than when it was reported (the user focused better); or the analysis settings
changed (``set_objective``, a reload) while the reported view stayed in front of the
camera, so the store and the dashboard hold the reading under the settings in force,
not only the one the screen showed before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from appliance.assays.her2.types import Supersedes
from appliance.assays.results import AnyResult
from appliance.capture.frame import Frame
from appliance.config import Config
from appliance.pipeline.field_memory import NOW_SCORABLE, SHARPER, FieldMemory, ReportDecision
from appliance.pipeline.stability import Stage, ViewState

SETTINGS_CHANGED = "settings changed"
_SUPERSEDE_REASONS = {NOW_SCORABLE: "now_scorable", SETTINGS_CHANGED: "settings_changed",
                      SHARPER: "sharper"}


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
        # The still period last reported, with the reading settings it was reported under.
        self._last: tuple[int, ReadingSettings | None] | None = None

    def consider(self, tracked: Tracked, result: AnyResult,
                 settings: ReadingSettings | None = None) -> ReportDecision | None:
        """The decision for one result read under ``settings`` (:func:`reading_settings`;
        None: settings never change); remembers what is reported."""
        view = tracked.view
        if view.stage is not Stage.STABLE or view.still_id is None or view.fingerprint is None:
            return None
        focus = view.sample.focus
        decision = self.memory.decide(view.still_id, view.fingerprint, result.scored, focus)
        replaces = None
        if (not decision.report and decision.matched_key is not None
                and self._last is not None and self._last[0] == view.still_id
                and self._last[1] != settings):
            # The same view, read again under other settings: the earlier report was made
            # under settings the user has since replaced.
            replaces = decision.matched_key
            decision = ReportDecision(True, SETTINGS_CHANGED, replaces)
        if decision.report:
            self.memory.remember(field_key(tracked.frame), view.still_id, view.fingerprint,
                                 result.scored, replaces=replaces, focus=focus)
            self._last = (view.still_id, settings)
        return decision


# What a field's reading depends on that can change while a view stays in front of the
# camera: the assay, the optics, the assay's own section and the files it names (compared
# by value, so a reload that changes another section does not report the view again).
ReadingSettings = tuple[object, ...]


def reading_settings(cfg: Config, inputs: tuple[str, ...] = ()) -> ReadingSettings:
    """The parts of ``cfg`` a reading depends on, and the digests of the files it read
    (``FieldAssay.reading_inputs``: a flat field made again under the same name),
    comparable by value."""
    return (cfg.assay, cfg.optics, cfg.hep2 if cfg.assay == "hep2" else cfg.her2, inputs)


def sharper_before_warning(view: ViewState, factor: float) -> str | None:
    """The warning for a still view whose spot was clearly sharper (by ``factor``, the
    ``stability.sharper_factor``) in the seconds before it was held: the user passed
    through the best focus and stopped on a softer one. None otherwise."""
    seen = view.sharpest_before
    if seen is None or view.stage is not Stage.STABLE or seen.focus < factor * view.sample.focus:
        return None
    return (f"this view was sharper {seen.seconds_before:.1f} s before it was held (focus "
            f"figure {seen.focus:.2f}, now {view.sample.focus:.2f}): focus back and hold still")


def with_warning(result: AnyResult, warning: str | None) -> AnyResult:
    """``result`` with ``warning`` first among its warnings (a scored result only; None:
    as it is). First: the screen's side panel leaves out the rows that do not fit from
    the end, and this one asks for something the user can do at once."""
    if warning is None or not result.scored:
        return result
    return dataclasses.replace(result, warnings=(warning, *result.warnings))


def with_supersedes(result: AnyResult, decision: ReportDecision | None) -> AnyResult:
    """``result`` naming the earlier report it replaces, when ``decision`` makes it one."""
    if decision is None or not decision.report or decision.matched_key is None:
        return result
    reason = _SUPERSEDE_REASONS.get(decision.reason)
    if reason is None:
        return result
    file, seq = parse_field_key(decision.matched_key)
    return dataclasses.replace(result, supersedes=Supersedes(file, seq, reason))


def field_key(frame: Frame) -> str:
    """The name a reported field is remembered by: its source and frame number."""
    return f"{frame.source}#{frame.seq}"


def parse_field_key(key: str) -> tuple[str, int]:
    """(source, frame number) of a :func:`field_key` (a source may itself hold '#')."""
    source, sep, seq = key.rpartition("#")
    if not sep or not seq.isdigit():
        raise ValueError(f"{key!r} is not a field key (source#seq)")
    return source, int(seq)
