"""Which view of a field stands for it in a case: one rule for both assays.

A case keeps every report it was given, but a field looked at several times must vote
once. Views of one field form a group: the first view and the returns to it that the
case's fingerprint check found (``duplicate_of``). A view whose report was superseded by
a later one (the settings changed while it was held, ``result.supersedes``) never
stands: it was read under settings the user replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class CaseView(Protocol):
    """What the rule needs of one case field."""

    @property
    def number(self) -> int: ...

    @property
    def scored(self) -> bool: ...

    @property
    def duplicate_of(self) -> int | None: ...

    @property
    def superseded_by(self) -> int | None: ...


def standing_views(views: Sequence[CaseView]) -> set[int]:
    """Numbers of the views that stand for their fields.

    Per group of views of one field, the first scored view not superseded; a group with
    none stands by its latest view not superseded (refused: its reason is the field's).
    """
    root: dict[int, int] = {}
    for v in sorted(views, key=lambda v: v.number):
        root[v.number] = (root.get(v.duplicate_of, v.duplicate_of)
                          if v.duplicate_of else v.number)
    scored: dict[int, int] = {}
    fallback: dict[int, int] = {}
    for v in sorted(views, key=lambda v: v.number):
        if v.superseded_by is not None:
            continue
        group = root[v.number]
        if v.scored:
            scored.setdefault(group, v.number)
        else:
            fallback[group] = v.number
    return set(scored.values()) | {n for g, n in fallback.items() if g not in scored}


def superseded_by(fields: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[int, int]:
    """For each case field whose report a later field's report supersedes: old -> new.

    ``fields`` are (number, stored result JSON). A report names the one it replaces by
    file and frame number (a camera's numbers restart with the service, so the latest
    earlier field with that name is meant). A name that matches no earlier field of the
    case (the replaced report was made outside it) supersedes nothing here.
    """
    latest: dict[tuple[str, int], int] = {}
    out: dict[int, int] = {}
    for number, result in sorted(fields, key=lambda f: f[0]):
        ref = result.get("supersedes")
        if isinstance(ref, Mapping):
            old = latest.get((str(ref.get("file")), _int(ref.get("seq"))))
            if old is not None:
                out[old] = number
        latest[(str(result.get("file")), _int(result.get("seq")))] = number
    return out


@dataclass(frozen=True)
class StoredView:
    """A case field as its stored row gives it (a :class:`CaseView`)."""

    number: int
    scored: bool
    duplicate_of: int | None
    superseded_by: int | None


def stored_views(rows: Iterable[tuple[int, int | None, Mapping[str, Any]]]) -> list[StoredView]:
    """Views of stored case fields given as (number, duplicate_of, stored result JSON)."""
    rows = list(rows)
    replaced = superseded_by((n, r) for n, _, r in rows)
    return [StoredView(n, r.get("status") == "scored", dup, replaced.get(n))
            for n, dup, r in rows]


def standing_rows(rows: Iterable[tuple[int, int | None, Mapping[str, Any]]]) -> set[int]:
    """:func:`standing_views` of stored case fields (number, duplicate_of, result JSON)."""
    return standing_views(stored_views(rows))


def _int(value: object) -> int:
    """A stored frame number (-1 for a missing or malformed one: it matches nothing real)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
