"""Re-reading the configuration while the box runs (SIGHUP, or the reload_config command).

Only what the analysis reads per field can change live: the ``optics``, ``her2`` and
``hep2`` sections, less the few keys the loaded model is built for (``FIXED_KEYS``).
Anything else (source, display, store, MQTT...) is reported as needing a restart, never
half-applied. An invalid file, or a file it names that cannot be used (a HEp-2 flat field),
changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.assays.results import FieldAssay
from appliance.config import Config, load_config, with_overrides

LIVE_SECTIONS = ("optics", "her2", "hep2")
# Keys of a live section that the loaded model is built for: the classifier's input size.
# A change waits for a restart (which loads the model for it); the rest of the section
# applies at once.
FIXED_KEYS = ("hep2.cells.crop_px",)
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did."""

    applied: tuple[str, ...]  # sections, and the keys of files re-read with new content
    needs_restart: tuple[str, ...]  # sections, and FIXED_KEYS that changed


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections (and scalar keys) whose values differ."""
    a, b = old.to_dict(), new.to_dict()
    return [k for k in b if a.get(k) != b[k]]


def _value(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def reload_config(assay: FieldAssay, path: Path) -> ReloadOutcome:
    """Load ``path`` and apply its live sections to ``assay``; ConfigError leaves all as it was."""
    new = load_config(path)
    old = assay.cfg
    held = tuple(k for k in FIXED_KEYS if _value(old, k) != _value(new, k))
    if held:
        new = with_overrides(new, {k: _value(old, k) for k in held})
    changed = changed_sections(old, new)
    live = tuple(k for k in changed if k in LIVE_SECTIONS)
    # One reference swap in the assay: the preparing thread reads assay.cfg per field. The
    # assay re-reads the files the config names even when it is unchanged (a flat field
    # made again in place), so a reload is also how such a file is taken up.
    # Nothing live changed: the same object, so the pipeline does not read the held view
    # again for nothing (it compares the config by identity).
    reread = assay.reconfigure(dataclasses.replace(old, **{k: getattr(new, k) for k in live})
                               if live else old)
    outcome = ReloadOutcome((*live, *reread),
                            (*(k for k in changed if k not in LIVE_SECTIONS), *held))
    _log.info("config %s reloaded: applied %s; needs a restart: %s", path,
              ", ".join(outcome.applied) or "nothing",
              ", ".join(outcome.needs_restart) or "nothing")
    return outcome
