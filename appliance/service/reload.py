"""Re-reading the configuration while the box runs (SIGHUP, or the reload_config command).

Only what the analysis reads per field can change live: the ``optics`` and ``her2``
sections. Anything else (source, display, store, MQTT...) is reported as needing a
restart, never half-applied. An invalid file changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from appliance.assays.results import FieldAssay
from appliance.config import Config, load_config

LIVE_SECTIONS = ("optics", "her2")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections (and scalar keys) whose values differ."""
    a, b = old.to_dict(), new.to_dict()
    return [k for k in b if a.get(k) != b[k]]


def reload_config(assay: FieldAssay, path: Path) -> ReloadOutcome:
    """Load ``path`` and apply its live sections to ``assay``; ConfigError leaves all as it was."""
    new = load_config(path)
    changed = changed_sections(assay.cfg, new)
    applied = tuple(k for k in changed if k in LIVE_SECTIONS)
    if applied:
        # One reference swap: the preparing thread reads assay.cfg once per field.
        assay.cfg = dataclasses.replace(assay.cfg, **{k: getattr(new, k) for k in applied})
    outcome = ReloadOutcome(applied, tuple(k for k in changed if k not in LIVE_SECTIONS))
    _log.info("config %s reloaded: applied %s; needs a restart: %s", path,
              ", ".join(outcome.applied) or "nothing",
              ", ".join(outcome.needs_restart) or "nothing")
    return outcome
