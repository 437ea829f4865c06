"""Where the log goes: the systemd journal with structured fields, or stderr.

Under systemd (``JOURNAL_STREAM`` set) and with systemd-python installed, records go
to the journal through ``systemd.journal.send`` with fields a technician can filter
on (``journalctl -u eyepiece EYEPIECE_FIELD=...``): every record's attributes named
``EYEPIECE_*`` (pass them with ``extra=``) become journal fields. Otherwise records
go to stderr as text, which journald also captures, without the fields.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

FIELD_PREFIX = "EYEPIECE_"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# syslog priorities for the journal's PRIORITY field.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class JournalHandler(logging.Handler):
    """Sends each record to the journal with its ``EYEPIECE_*`` fields."""

    def __init__(self, journal: Any, identifier: str = "eyepiece") -> None:
        super().__init__()
        self._journal = journal
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: str(v) for k, v in record.__dict__.items()
                      if k.startswith(FIELD_PREFIX)}
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._journal.send(
                message, PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=self._identifier, LOGGER=record.name,
                THREAD_NAME=record.threadName or "", CODE_FILE=record.pathname,
                CODE_LINE=record.lineno, CODE_FUNC=record.funcName, **fields)
        except Exception:  # the logging module's own way to report a broken handler
            self.handleError(record)


def configure_logging(level: str, env: Mapping[str, str] | None = None) -> str:
    """Set up the root logger; returns where the log goes ("journal" or "stderr")."""
    env = os.environ if env is None else env
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    journal = _journal_module() if env.get("JOURNAL_STREAM") else None
    if journal is not None:
        root.addHandler(JournalHandler(journal))
        return "journal"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    return "stderr"


def _journal_module() -> Any:
    try:  # optional: systemd-python (by name: the repo's systemd/ folder must not shadow it)
        return importlib.import_module("systemd.journal")
    except ImportError:
        return None


def field_fields(assay: str, source: str, seq: int, status: str) -> dict[str, str]:
    """The journal fields of a reported field (``extra=`` of a log call)."""
    return {f"{FIELD_PREFIX}ASSAY": assay, f"{FIELD_PREFIX}FIELD": f"{source}#{seq}",
            f"{FIELD_PREFIX}STATUS": status}
