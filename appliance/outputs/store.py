"""The local results store: one SQLite row per field, committed before add() returns.

Durability: WAL journal with ``synchronous=FULL``, one transaction per result, so a
row is on disk when :meth:`ResultStore.add` returns and a reader in another process
sees it, even if this process is killed right after.

A full or unwritable disk must neither lose the result nor crash the caller's loop:
the row goes into a bounded in-memory backlog, ``add()`` raises :class:`StoreError`
saying why, and the backlog is retried in order on the next ``add()`` or
``flush()``. When the backlog overflows, the oldest row is dropped, logged at ERROR
with what it said, and counted in :attr:`ResultStore.dropped`.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.assays.her2.types import FieldResult
from appliance.outputs.result_json import result_to_json

_log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Waiting for another connection's lock beats failing at once (a reader, a backup).
_BUSY_TIMEOUT_MS = 5000
DEFAULT_MAX_BACKLOG = 256


class StoreError(Exception):
    """The results store cannot open, write or read; the message names the reason."""


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            file TEXT NOT NULL,
            seq INTEGER NOT NULL,
            assay TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('scored', 'not_scorable')),
            score TEXT,
            category TEXT,
            tumour_cells INTEGER NOT NULL,
            reason_code TEXT,
            config_sha256 TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            result_json TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX results_created_at ON results (created_at)")


# Migration hook: entry i upgrades a database from user_version i to i + 1. Append a
# function to change the schema; never edit one that has shipped.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_v1,)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "created_at", "file", "seq", "assay", "status", "score", "category", "tumour_cells",
    "reason_code", "config_sha256", "model_name", "model_sha256", "result_json",
)
_INSERT = (
    f"INSERT INTO results ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


@dataclass(frozen=True)
class _Row:
    """A result ready to insert, and a short description for the log if it is dropped."""

    values: tuple[Any, ...]
    summary: str


def _make_row(result: FieldResult, config_sha256: str) -> _Row:
    """Serialise a result into the column values (raises ValueError on a bad result)."""
    if not _SHA256.match(config_sha256):
        raise ValueError(f"config_sha256 must be 64 lower-case hex digits, got {config_sha256!r}")
    text = result_to_json(result, include_cells=True)
    doc = json.loads(text)
    values = (
        doc["created_at"], doc["file"], doc["seq"], doc["assay"], doc["status"], doc["score"],
        doc["category"], doc["tumour_cells"], doc["reason_code"], config_sha256,
        doc["model"]["name"], doc["model"]["sha256"], text,
    )
    summary = (
        f"file={doc['file']!r} seq={doc['seq']} created_at={doc['created_at']} "
        f"status={doc['status']} score={doc['score']} category={doc['category']} "
        f"tumour_cells={doc['tumour_cells']} reason_code={doc['reason_code']}"
    )
    return _Row(values=values, summary=summary)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION in one transaction."""
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"results store {path} has schema version {current}, newer than this "
            f"software's {SCHEMA_VERSION}: refusing to write to it"
        )
    if current == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
        # PRAGMA cannot take a parameter; SCHEMA_VERSION is our own integer.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    _log.info("results store %s migrated from schema %d to %d", path, current, SCHEMA_VERSION)


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database with the durability settings; raise StoreError on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for results store {path}: {exc}") from exc
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one result per commit.
        # check_same_thread=False: a lock serialises use, so a UI thread may read.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open results store {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            # Still durable with synchronous=FULL, but readers block the writer.
            _log.warning("results store %s: WAL not available (journal mode %s)", path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot prepare results store {path}: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return conn


def _retryable(exc: sqlite3.Error) -> bool:
    """Errors of the disk or the lock (full, read-only, I/O, busy) may clear later.

    Constraint and programming errors would fail the same way on every retry and
    must not block the backlog.
    """
    return isinstance(exc, sqlite3.OperationalError)


class ResultStore:
    """SQLite store of field results; a context manager.

    ``close()`` is idempotent; any other call after it raises :class:`StoreError`.
    """

    def __init__(self, path: str | Path, *, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {max_backlog}")
        self.path = Path(path)
        self.max_backlog = max_backlog
        self._lock = threading.Lock()
        self._backlog: deque[_Row] = deque()
        self._dropped = 0
        self._conn: sqlite3.Connection | None = _connect(self.path)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once close() has been called."""
        return self._conn is None

    def close(self) -> None:
        """Try the backlog one last time, then close; safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            if self._backlog:
                try:
                    self._flush_locked()
                except StoreError as exc:
                    # Nowhere left to keep them: say exactly what is lost.
                    for row in self._backlog:
                        _log.error("results store closed with an unwritten result (%s): %s",
                                   exc, row.summary)
                    self._dropped += len(self._backlog)
                    self._backlog.clear()
            self._conn.close()
            self._conn = None

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"results store {self.path} is closed")
        return self._conn

    # ------------------------------------------------------------ writing

    def add(self, result: FieldResult, *, config_sha256: str) -> int:
        """Store one result and return its row id; the row is on disk when this returns.

        Older unwritten results go first, in order. If the write fails for a reason
        that may clear (disk full, read-only file), the result is kept in the
        backlog and StoreError is raised; ValueError means the result itself is bad.
        """
        row = _make_row(result, config_sha256)
        with self._lock:
            self._open_conn()
            self._backlog.append(row)
            try:
                _, last_id = self._flush_locked()
            finally:
                # Only a failed flush leaves rows behind; bound them now.
                self._trim_backlog()
            return last_id

    def flush(self) -> int:
        """Write the backlog in order; return how many rows were written.

        Raises StoreError (the remaining rows stay in the backlog) when a write fails.
        """
        with self._lock:
            self._open_conn()
            written, _ = self._flush_locked()
            return written

    def _flush_locked(self) -> tuple[int, int]:
        """Write the backlog in order; (rows written, id of the last row written or 0)."""
        conn = self._open_conn()
        written = last_id = 0
        while self._backlog:
            row = self._backlog[0]
            try:
                last_id = self._insert(conn, row)
            except sqlite3.Error as exc:
                if not _retryable(exc):
                    self._backlog.popleft()
                    self._dropped += 1
                    _log.error("results store rejected a result (%s), dropped: %s",
                               exc, row.summary)
                    raise StoreError(
                        f"results store {self.path} rejected a result: {exc}"
                    ) from exc
                raise StoreError(
                    f"cannot write to results store {self.path}: {exc}; "
                    f"{len(self._backlog)} result(s) kept in memory, retried on the next add"
                ) from exc
            self._backlog.popleft()
            written += 1
        return written, last_id

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: _Row) -> int:
        """One transaction per row: committed (fsynced) or rolled back, never half."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute(_INSERT, row.values)
            conn.execute("COMMIT")
            return int(cursor.lastrowid or 0)
        except sqlite3.Error:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    # SQLite may have rolled back already; the insert error is the news.
                    _log.debug("rollback after a failed insert: %s", exc)
            raise

    def _trim_backlog(self) -> None:
        while len(self._backlog) > self.max_backlog:
            lost = self._backlog.popleft()
            self._dropped += 1
            _log.error("results store backlog full (%d rows): dropped the oldest result: %s",
                       self.max_backlog, lost.summary)

    # ------------------------------------------------------------ reading

    def pending(self) -> int:
        """Results kept in memory because they could not be written yet."""
        with self._lock:
            self._open_conn()
            return len(self._backlog)

    @property
    def dropped(self) -> int:
        """Results lost because the backlog overflowed or the store rejected them."""
        return self._dropped

    def count(self) -> int:
        """Number of results on disk."""
        with self._lock:
            conn = self._open_conn()
            try:
                (n,) = conn.execute("SELECT count(*) FROM results").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store {self.path}: {exc}") from exc
            return int(n)

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, newest first.

        Each row is a dict of the table's columns, with ``result_json`` replaced by
        ``result``: the decoded result object (the JSON contract, cells included).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        columns = ("id", *_COLUMNS)
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(
                    f"SELECT {', '.join(columns)} FROM results ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store {self.path}: {exc}") from exc
        return [_decode(dict(zip(columns, r, strict=True))) for r in rows]


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    text = row.pop("result_json")
    try:
        row["result"] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"results store row {row['id']} holds invalid JSON: {exc}") from exc
    return row
