"""What a tool writes beside its printed table: the figures as JSON (``--json FILE``) and
its charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported by the tools that draw, after choosing Agg
    from matplotlib.figure import Figure


def write_numbers(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON to ``path`` (parents made) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"numbers: {path}")


def save_chart(fig: Figure, path: Path, *, dpi: int) -> None:
    """Lay out ``fig``, write it to ``path`` (parents made) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
