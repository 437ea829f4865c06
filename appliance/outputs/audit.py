"""The audit trail: an append-only, hash-chained table in the results store.

Every field result, case event, control check, threshold change and command is one
row of the ``audit`` table with its time (UTC, milliseconds), kind, source, case,
model sha256, result row and a JSON ``detail`` object. Rows are only ever added:
``BEFORE UPDATE`` and ``BEFORE DELETE`` triggers make SQLite refuse to change or
remove one (``audit is append-only``), and :func:`export_jsonl` writes the trail as
JSON lines for the laboratory's records.

Tamper evidence: each row stores ``prev_hash`` (the ``hash`` of the row before it,
64 zeros for the first) and ``hash = sha256(prev_hash + canonical JSON of the row's
other columns)``. :func:`verify` recomputes the chain and names every row that was
changed after it was written, and every place where rows are missing.

What the chain proves, and what it does not:

- It proves the rows are unchanged, and none is missing between the first and the
  last, *if the file was not rewritten as a whole*. Editing or deleting a row with
  the triggers dropped (any SQLite shell can) breaks the chain at that row.
- It does not prove the trail is complete at its end beyond the ``sqlite_sequence``
  check (deleting the newest rows and the sequence together goes unseen), and it
  cannot stop someone holding the file from rewriting every row and hash from the
  tampered row onwards: the hash is not a signature and holds no secret.
  The defence is to get copies off the box: export regularly, or publish the newest
  ``hash`` (:func:`head`) over MQTT, so that a rewritten chain no longer matches a
  hash already held elsewhere.

The functions here work on a bare ``sqlite3.Connection`` and take no lock: the caller
holds the store's lock and, for :func:`append`, an open transaction (``BEGIN
IMMEDIATE`` in :meth:`ResultStore.write_with`), so two writers, even in two
processes, cannot both chain onto the same last row. :class:`AuditLog` does that for
one :class:`~appliance.outputs.store.ResultStore`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from appliance.outputs.store import ResultStore

GENESIS_HASH = "0" * 64
APPEND_ONLY_MESSAGE = "audit is append-only"
TABLE = "audit"

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_CASE_ID = 128
_COLUMNS = ("id", "at", "kind", "source", "case_id", "model_sha256", "result_id", "detail",
            "prev_hash", "hash")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}"


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit trail; ``detail`` is the decoded JSON object (read-only)."""

    id: int
    at: str
    kind: str
    source: str
    case_id: str | None
    model_sha256: str | None
    result_id: int | None
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values, ``detail`` as a dict (one export line)."""
        return {
            "id": self.id, "at": self.at, "kind": self.kind, "source": self.source,
            "case_id": self.case_id, "model_sha256": self.model_sha256,
            "result_id": self.result_id, "detail": _thaw(self.detail),
            "prev_hash": self.prev_hash, "hash": self.hash,
        }


# ---------------------------------------------------------------- schema


def create_audit_table(conn: sqlite3.Connection) -> None:
    """Create the ``audit`` table, its index and the append-only triggers.

    Meant for a store migration, inside its transaction; uses ``execute`` only, since
    ``executescript`` would commit the caller's transaction first.
    """
    conn.execute(
        f"""
        CREATE TABLE {TABLE} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            case_id TEXT,
            model_sha256 TEXT,
            result_id INTEGER,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """
    )
    conn.execute(f"CREATE INDEX {TABLE}_case_id ON {TABLE} (case_id)")
    for action in ("UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER {TABLE}_no_{action.lower()} BEFORE {action} ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )


def has_audit_table(conn: sqlite3.Connection) -> bool:
    """True when the database holds the ``audit`` table."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return row is not None


# ---------------------------------------------------------------- validation


def _check_identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(
            f"{name} must be a lower-case identifier (a letter, then letters, digits or "
            f"'_', at most 64), got {value!r}"
        )
    return value


def _check_case_id(value: object) -> str | None:
    if value is None:
        return None
    if (not isinstance(value, str) or not value or len(value) > _MAX_CASE_ID
            or value != value.strip() or not value.isprintable()):
        raise ValueError(
            f"case_id must be None or 1..{_MAX_CASE_ID} printable characters without "
            f"surrounding spaces, got {value!r}"
        )
    return value


def _check_sha256(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"model_sha256 must be None or 64 lower-case hex digits, got {value!r}")
    return value


def _check_result_id(value: object) -> int | None:
    if value is None:
        return None
    # bool is an int in Python; True as a row id is a bug, not a row.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"result_id must be None or a positive integer, got {value!r}")
    return value


def normalise_at(value: str | None, now: datetime | None = None) -> str:
    """The time as ISO 8601 UTC with milliseconds (``...T14:05:00.123+00:00``).

    ``None`` means now. A given time must carry its UTC offset; it is converted to UTC.
    Raises ValueError naming ``at`` otherwise.
    """
    if value is None:
        moment = now if now is not None else datetime.now(timezone.utc)
    else:
        if not isinstance(value, str):
            raise ValueError(f"at must be an ISO 8601 string, got {value!r}")
        try:
            # Python 3.10's fromisoformat does not read a trailing 'Z'.
            moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z")
                                            else value)
        except ValueError as exc:
            raise ValueError(f"at must be an ISO 8601 time, got {value!r}: {exc}") from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"at must carry a UTC offset (a naive time is ambiguous), got {value!r}")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _check_json_value(value: object, path: str) -> None:
    """Raise ValueError naming the path of the first value JSON cannot hold exactly."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            # json.dumps would turn 1 into "1" silently: the trail must read back as written.
            if not isinstance(key, str):
                raise ValueError(f"{path} has a key that is not a string: {key!r}")
            _check_json_value(item, f"{path}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]")
        return
    raise ValueError(f"{path} is a {type(value).__name__}, which JSON cannot hold")


def canonical_detail(detail: object) -> str:
    """``detail`` as canonical JSON text (sorted keys, compact); ValueError naming it."""
    if not isinstance(detail, Mapping):
        raise ValueError(f"detail must be a mapping (a JSON object), got {type(detail).__name__}")
    _check_json_value(detail, "detail")
    return _canonical(detail)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------- the chain


def row_hash(prev_hash: str, fields: Mapping[str, object]) -> str:
    """sha256 hex of ``prev_hash`` + canonical JSON of the row's columns other than hash.

    ``fields`` holds id, at, kind, source, case_id, model_sha256, result_id, prev_hash
    and ``detail`` as its stored JSON text, so any change to a stored byte shows.
    """
    return hashlib.sha256((prev_hash + _canonical(dict(fields))).encode("utf-8")).hexdigest()


def _hashed_fields(values: Mapping[str, object]) -> dict[str, object]:
    """The columns the hash covers: all but ``hash`` itself."""
    return {name: values[name] for name in _COLUMNS if name != "hash"}


def _last_link(conn: sqlite3.Connection) -> tuple[int, str]:
    """The id to use next and the hash to chain onto, read inside the caller's transaction."""
    row = conn.execute(f"SELECT id, hash FROM {TABLE} ORDER BY id DESC LIMIT 1").fetchone()
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone()
    # AUTOINCREMENT never reuses an id, so the next one follows the sequence, not max(id).
    last_id = max(int(row[0]) if row else 0, int(seq[0]) if seq else 0)
    return last_id + 1, (str(row[1]) if row else GENESIS_HASH)


def append(conn: sqlite3.Connection, *, kind: str, source: str, detail: Mapping[str, Any],
           case_id: str | None = None, model_sha256: str | None = None,
           result_id: int | None = None, at: str | None = None) -> AuditEntry:
    """Validate and append one row, chained onto the last; return it.

    Must run inside the caller's open transaction (``BEGIN IMMEDIATE``), so the last
    hash it reads cannot change before its insert. ValueError names a bad field;
    RuntimeError means no transaction is open; SQLite errors propagate for the caller
    to roll back.
    """
    values: dict[str, Any] = {
        "at": normalise_at(at),
        "kind": _check_identifier("kind", kind),
        "source": _check_identifier("source", source),
        "case_id": _check_case_id(case_id),
        "model_sha256": _check_sha256(model_sha256),
        "result_id": _check_result_id(result_id),
        "detail": canonical_detail(detail),
    }
    if not conn.in_transaction:
        raise RuntimeError(
            "audit append must run inside a transaction (BEGIN IMMEDIATE): otherwise another "
            "writer can chain onto the same last row"
        )
    values["id"], values["prev_hash"] = _last_link(conn)
    values["hash"] = row_hash(values["prev_hash"], _hashed_fields(values))
    names = ", ".join(_COLUMNS)
    conn.execute(f"INSERT INTO {TABLE} ({names}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                 tuple(values[name] for name in _COLUMNS))
    return _entry(tuple(values[name] for name in _COLUMNS))


def _freeze(value: Any) -> Any:
    """Read-only views of decoded JSON, so a frozen entry stays frozen."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _decode_detail(row_id: int, text: str) -> dict[str, Any]:
    try:
        detail = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"audit row {row_id} holds invalid JSON in detail: {exc}") from exc
    if not isinstance(detail, dict):
        raise ValueError(f"audit row {row_id}: detail is not a JSON object")
    return detail


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    values = dict(zip(_COLUMNS, row, strict=True))
    row_id = int(values["id"])
    return AuditEntry(
        id=row_id, at=values["at"], kind=values["kind"], source=values["source"],
        case_id=values["case_id"], model_sha256=values["model_sha256"],
        result_id=None if values["result_id"] is None else int(values["result_id"]),
        detail=_freeze(_decode_detail(row_id, values["detail"])),
        prev_hash=values["prev_hash"], hash=values["hash"],
    )


# ---------------------------------------------------------------- reading


def _query(case_id: str | None, since_id: int, limit: int | None) -> tuple[str, list[Any]]:
    if isinstance(since_id, bool) or not isinstance(since_id, int) or since_id < 0:
        raise ValueError(f"since_id must be a non-negative integer, got {since_id!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive integer, got {limit!r}")
    sql = f"{_SELECT} WHERE id > ?"
    params: list[Any] = [since_id]
    if case_id is not None:
        sql, params = sql + " AND case_id = ?", [*params, _check_case_id(case_id)]
    sql += " ORDER BY id"
    if limit is not None:
        sql, params = sql + " LIMIT ?", [*params, limit]
    return sql, params


def _iter_entries(conn: sqlite3.Connection, case_id: str | None = None, since_id: int = 0,
                  limit: int | None = None) -> Iterator[AuditEntry]:
    sql, params = _query(case_id, since_id, limit)
    for row in conn.execute(sql, params):
        yield _entry(row)


def entries(conn: sqlite3.Connection, *, case_id: str | None = None, since_id: int = 0,
            limit: int | None = None) -> list[AuditEntry]:
    """Rows with id > ``since_id``, oldest first, optionally one case's, at most ``limit``."""
    return list(_iter_entries(conn, case_id, since_id, limit))


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(id, hash) of the newest row, (0, 64 zeros) when empty: the value to publish elsewhere."""
    row = conn.execute(f"SELECT id, hash FROM {TABLE} ORDER BY id DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def export_jsonl(conn: sqlite3.Connection, out: TextIO, *, case_id: str | None = None) -> int:
    """Write the rows (one case's, or all) as JSON lines, oldest first; return the count.

    Each line is one object of the row's columns, ``detail`` decoded, keys sorted. A
    full export (no ``case_id``) can be checked later with :func:`verify_jsonl`.
    """
    count = 0
    for entry in _iter_entries(conn, case_id):
        out.write(_canonical(entry.to_dict()) + "\n")
        count += 1
    return count


# ---------------------------------------------------------------- verification


def _check_chain(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    """Problems in a chain of rows (``detail`` as stored text) and the last id seen."""
    problems: list[str] = []
    expected_prev, prev_id = GENESIS_HASH, 0
    for row in rows:
        row_id = int(row["id"])
        if row["prev_hash"] != expected_prev:
            before = f"row {prev_id}" if prev_id else "the start of the trail"
            problems.append(
                f"chain broken at id {row_id}: its prev_hash does not match the hash of "
                f"{before} (a row before it was deleted or rewritten)"
            )
        if row_hash(str(row["prev_hash"]), _hashed_fields(row)) != row["hash"]:
            problems.append(
                f"hash mismatch at id {row_id}: the row was changed after it was written"
            )
        expected_prev, prev_id = str(row["hash"]), row_id
    return problems, prev_id


def verify(conn: sqlite3.Connection) -> list[str]:
    """Check the whole chain; the problems found, in words (empty: the chain holds).

    A gap in ids alone is no problem, but a deleted row breaks the chain at the next
    one; newest rows deleted show against SQLite's AUTOINCREMENT sequence.
    """
    rows = (dict(zip(_COLUMNS, r, strict=True)) for r in conn.execute(f"{_SELECT} ORDER BY id"))
    problems, last_id = _check_chain(rows)
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone()
    if seq is not None and int(seq[0]) > last_id:
        problems.append(
            f"rows missing at the end: ids up to {int(seq[0])} were handed out but the last "
            f"row is {last_id}"
        )
    return problems


def _export_rows(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Rows of an export with ``detail`` back as canonical text, as stored and hashed."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"export line {number} is not JSON: {exc}") from exc
        if not isinstance(record, dict) or set(record) != set(_COLUMNS):
            raise ValueError(f"export line {number} does not hold the audit columns")
        yield {**record, "detail": _canonical(record["detail"])}


def verify_jsonl(lines: Iterable[str]) -> list[str]:
    """Check the chain of a full export (:func:`export_jsonl` without ``case_id``).

    ValueError when a line is not an audit row at all.
    """
    problems, _ = _check_chain(_export_rows(lines))
    return problems


# ---------------------------------------------------------------- over a ResultStore


class AuditLog:
    """The audit trail of one :class:`~appliance.outputs.store.ResultStore`; thread-safe.

    Each call runs under the store's lock; :meth:`record` in its own transaction.
    StoreError (from the store) when SQLite fails, ValueError for a bad field.
    """

    def __init__(self, store: ResultStore) -> None:
        if not store.read_with(has_audit_table):
            raise ValueError(
                f"results store {store.path} has no audit table: it needs the schema "
                f"migration that creates it"
            )
        self.store = store

    def record(self, *, kind: str, source: str, detail: Mapping[str, Any],
               case_id: str | None = None, model_sha256: str | None = None,
               result_id: int | None = None, at: str | None = None) -> AuditEntry:
        """Append one row in its own transaction, committed when this returns."""
        def work(conn: sqlite3.Connection) -> AuditEntry:
            return append(conn, kind=kind, source=source, detail=detail, case_id=case_id,
                          model_sha256=model_sha256, result_id=result_id, at=at)
        return self.store.write_with(work, flush_backlog=False)

    def entries(self, *, case_id: str | None = None, since_id: int = 0,
                limit: int | None = None) -> list[AuditEntry]:
        """See :func:`entries`."""
        return self.store.read_with(
            lambda conn: entries(conn, case_id=case_id, since_id=since_id, limit=limit))

    def head(self) -> tuple[int, str]:
        """See :func:`head`."""
        return self.store.read_with(head)

    def export(self, target: str | Path | TextIO, *, case_id: str | None = None) -> int:
        """Write JSON lines to a path (replaced whole, never half-written) or a text stream."""
        if not isinstance(target, (str, Path)):
            return self.store.read_with(lambda conn: export_jsonl(conn, target, case_id=case_id))
        path = Path(target)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as out:
                count = self.store.read_with(
                    lambda conn: export_jsonl(conn, out, case_id=case_id))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return count

    def verify(self) -> list[str]:
        """See :func:`verify`."""
        return self.store.read_with(verify)
