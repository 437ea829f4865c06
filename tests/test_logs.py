"""Logging to the journal with structured fields, or to stderr."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.service.logs import configure_logging, field_fields


class FakeJournal:
    """systemd.journal.send as documented: MESSAGE first, fields as keyword arguments."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def send(self, MESSAGE: str, **fields: Any) -> None:  # MESSAGE: the real name
        for name in fields:
            if not name.replace("_", "").isalnum() or not name.isupper():
                raise ValueError(f"Invalid field name: {name}")
        self.entries.append({"MESSAGE": MESSAGE, **fields})


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_under_systemd_records_go_to_the_journal_with_their_fields(
        monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    journal = FakeJournal()
    package = types.ModuleType("systemd")
    module = types.ModuleType("systemd.journal")
    module.send = journal.send  # type: ignore[attr-defined]
    package.journal = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", module)
    assert configure_logging("INFO", {"JOURNAL_STREAM": "8:1234"}) == "journal"
    logging.getLogger("appliance.test").warning(
        "field reported: %s", "cam", extra=field_fields("her2", "cam", 7, "scored"))
    (entry,) = journal.entries
    assert entry["MESSAGE"] == "field reported: cam"
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "eyepiece"
    assert entry["EYEPIECE_FIELD"] == "cam#7" and entry["EYEPIECE_ASSAY"] == "her2"


def test_elsewhere_the_log_is_text_on_stderr(restore_logging: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert configure_logging("INFO", {}) == "stderr"
    logging.getLogger("appliance.test").info("hello")
    assert "INFO appliance.test: hello" in capsys.readouterr().err
