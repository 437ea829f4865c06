"""The machine-readable figures a tool writes beside its printed table (``--json FILE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_numbers(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON to ``path`` (parents made) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"numbers: {path}")
