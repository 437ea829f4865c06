"""The local results store: one SQLite row per field, committed before add() returns.

Durability: WAL journal with ``synchronous=FULL``, one transaction per result, so a
row is on disk when :meth:`ResultStore.add` returns and a reader in another process
sees it, even if this process is killed right after.

A full or unwritable disk must neither lose the result nor crash the caller's loop:
the row goes into a bounded in-memory backlog, ``add()`` raises :class:`StoreError`
saying why, and the backlog is retried in order on the next ``add()`` or
``flush()``. When the backlog overflows, the oldest row is dropped, logged at ERROR
with what it said, and counted in :attr:`ResultStore.dropped`.

Schema v3 adds the cases (:mod:`appliance.outputs.casebook`) and the audit trail
(:mod:`appliance.outputs.audit`); ``add(..., companion=link)`` runs ``link(conn,
row_id)`` in the result's transaction (the result joins its case and the audit trail
atomically).

Schema v2 adds the MQTT outbox (:mod:`appliance.outputs.outbox`): ``add(...,
outbox=build)`` writes the result and its message in the same transaction, so a
crash leaves both or neither, and a result waiting in the backlog keeps its message
with it (the message gets its seq when the pair is finally written).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult
from appliance.assays.results import AnyResult
from appliance.outputs import hep2_json
from appliance.outputs.audit import create_audit_table
from appliance.outputs.casebook import (
    add_assay_column,
    add_dilution_columns,
    add_slide_column,
    create_case_tables,
)
from appliance.outputs.outbox import DEFAULT_MAX_MESSAGES, MessageBuilder, append_message, report
from appliance.outputs.result_json import result_to_json

_log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Waiting for another connection's lock beats failing at once (a reader, a backup).
_BUSY_TIMEOUT_MS = 5000
DEFAULT_MAX_BACKLOG = 256
_T = TypeVar("_T")


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


def _add_outbox_v2(conn: sqlite3.Connection) -> None:
    """The MQTT outbox, its persisted sequence counter and the record of dropped messages."""
    conn.execute(
        """
        CREATE TABLE outbox (
            msg_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            topic_suffix TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
            created_at TEXT NOT NULL,
            result_id INTEGER
        )
        """
    )
    # One row: the last seq handed out. Kept apart from the outbox because acknowledged
    # rows are deleted, and seq must never go back after a restart.
    conn.execute(
        """
        CREATE TABLE outbox_seq (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
        )
        """
    )
    conn.execute("INSERT INTO outbox_seq (id, last_seq) VALUES (1, 0)")
    # No payload here: the summary holds the result's own columns and a hash only.
    conn.execute(
        """
        CREATE TABLE outbox_dropped (
            msg_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            topic_suffix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            dropped_at TEXT NOT NULL,
            reason TEXT NOT NULL,
            summary TEXT NOT NULL,
            result_id INTEGER
        )
        """
    )


def _add_cases_and_audit_v3(conn: sqlite3.Connection) -> None:
    """Cases, their fields and control checks (casebook), and the append-only audit trail."""
    create_case_tables(conn)
    create_audit_table(conn)


def _add_case_assay_v4(conn: sqlite3.Connection) -> None:
    """Which assay each case is of (cases of older stores are HER2's)."""
    add_assay_column(conn)


def _add_dilutions_v5(conn: sqlite3.Connection) -> None:
    """The serum dilution of a HEp-2 case's well now and of each of its fields."""
    add_dilution_columns(conn)


def _add_slides_v6(conn: sqlite3.Connection) -> None:
    """The slide a HEp-2 case's well is on, whose kit controls its cases share."""
    add_slide_column(conn)


# Migration hook: entry i upgrades a database from user_version i to i + 1. Append a
# function to change the schema; never edit one that has shipped.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _create_v1, _add_outbox_v2, _add_cases_and_audit_v3, _add_case_assay_v4,
    _add_dilutions_v5, _add_slides_v6)
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


Companion = Callable[[sqlite3.Connection, int], None]
# What the store keeps: every field result, and a HEp-2 well's pooled call.
Storable = AnyResult | Hep2WellResult


@dataclass(frozen=True)
class _Pending:
    """A result waiting to be written, with the builder of its outbox message if any."""

    row: _Row
    outbox: MessageBuilder | None = None
    companion: Companion | None = None

    def describe(self) -> str:
        return self.row.summary + (" (and its MQTT message)" if self.outbox else "")


def well_file(fields: Sequence[str], refused: Sequence[str]) -> str:
    """The ``file`` column of a HEp-2 well's row: ``well: F1 + F2 + ...`` (its refused
    fields' files when none was scored)."""
    names = list(fields) or [r.split(": ", 1)[0] for r in refused]
    return "well: " + " + ".join(names)


def _make_row(result: Storable, config_sha256: str) -> _Row:
    """Serialise a result into the column values (raises ValueError on a bad result).

    The columns are shared by the assays: for HEp-2, ``score`` holds the first pattern's
    ICAP code, ``category`` the intensity level and ``tumour_cells`` the cell count. A
    HEp-2 well's row has ``file`` from :func:`well_file`, ``seq`` 0, and its JSON's
    ``kind`` is ``"well"``.
    """
    if not _SHA256.match(config_sha256):
        raise ValueError(f"config_sha256 must be 64 lower-case hex digits, got {config_sha256!r}")
    if isinstance(result, Hep2WellResult):
        doc = hep2_json.well_to_dict(result)
        doc_file, doc_seq = well_file(result.fields, result.fields_refused), 0
        text = hep2_json.to_json(doc)
        score = doc["patterns"][0]["icap"] if doc["patterns"] else None
        category = doc["intensity"]["level"] if doc["intensity"] else None
        cells = doc["cell_counts"]["total"]
        doc = {**doc, "file": doc_file, "seq": doc_seq}
    elif isinstance(result, Hep2Result):
        doc = hep2_json.result_to_dict(result, include_cells=True)
        text = hep2_json.to_json(doc)
        score = doc["patterns"][0]["icap"] if doc["patterns"] else None
        category = doc["intensity"]["level"] if doc["intensity"] else None
        cells = doc["cell_counts"]["total"]
    else:
        text = result_to_json(result, include_cells=True)
        doc = json.loads(text)
        score, category, cells = doc["score"], doc["category"], doc["tumour_cells"]
    values = (
        doc["created_at"], doc["file"], doc["seq"], doc["assay"], doc["status"], score,
        category, cells, doc["reason_code"], config_sha256,
        doc["model"]["name"], doc["model"]["sha256"], text,
    )
    summary = (
        f"file={doc['file']!r} seq={doc['seq']} created_at={doc['created_at']} "
        f"assay={doc['assay']} status={doc['status']} score={score} category={category} "
        f"cells={cells} reason_code={doc['reason_code']}"
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


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: committed (fsynced) or rolled back, never half."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                # SQLite may have rolled back already; the first error is the news.
                _log.debug("rollback after a failed write: %s", exc)
        raise


def _retryable(exc: sqlite3.Error) -> bool:
    """Errors of the disk or the lock (full, read-only, I/O, busy) may clear later.

    Constraint and programming errors would fail the same way on every retry and
    must not block the backlog.
    """
    return isinstance(exc, sqlite3.OperationalError)


class ResultStore:
    """SQLite store of field results; a context manager.

    ``close()`` is idempotent; any other call after it raises :class:`StoreError`.
    ``outbox_max_messages`` caps the outbox; an :class:`~appliance.outputs.outbox.Outbox`
    sets it from the configuration.
    """

    def __init__(self, path: str | Path, *, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {max_backlog}")
        self.path = Path(path)
        self.max_backlog = max_backlog
        self.outbox_max_messages = DEFAULT_MAX_MESSAGES
        self._lock = threading.Lock()
        self._backlog: deque[_Pending] = deque()
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
                    for item in self._backlog:
                        _log.error("results store closed with an unwritten result (%s): %s",
                                   exc, item.describe())
                    self._dropped += len(self._backlog)
                    self._backlog.clear()
            self._conn.close()
            self._conn = None

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"results store {self.path} is closed")
        return self._conn

    # ------------------------------------------------------------ writing

    def add(self, result: Storable, *, config_sha256: str,
            outbox: MessageBuilder | None = None, companion: Companion | None = None) -> int:
        """Store one result and return its row id; the row is on disk when this returns.

        Older unwritten results go first, in order. If the write fails for a reason
        that may clear (disk full, read-only file), the result is kept in the
        backlog and StoreError is raised; ValueError means the result itself is bad.

        ``outbox(msg_id, seq) -> (topic_suffix, payload)`` builds the result's MQTT
        message, called inside the result's transaction once seq and msg_id are
        allocated; the message is committed with the result or not at all. It may be
        called again when a failed write is retried, with a new msg_id and seq. It
        runs under the store's lock, so it must not call the store or the outbox. If
        it raises an Exception, the result is still stored and the message is recorded
        in ``outbox_dropped`` (logged at ERROR); an interruption (KeyboardInterrupt)
        rolls both back and keeps the pair in the backlog.

        ``companion(conn, row_id)`` writes what belongs with the result (its case link,
        its audit entry) in the same transaction, under the store's lock. If it raises
        an Exception (a bug), everything is rolled back, logged with the traceback, and
        the result and its message are written again without it: a result is never lost
        for its case link.
        """
        item = _Pending(_make_row(result, config_sha256), outbox, companion)
        with self._lock:
            self._open_conn()
            self._backlog.append(item)
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
            item = self._backlog[0]
            try:
                last_id = self._insert(conn, item)
            except sqlite3.Error as exc:
                if not _retryable(exc):
                    self._backlog.popleft()
                    self._dropped += 1
                    _log.error("results store rejected a result (%s), dropped: %s",
                               exc, item.describe())
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

    def _insert(self, conn: sqlite3.Connection, item: _Pending) -> int:
        """One transaction per result and its message: both committed, or neither."""
        cap = self.outbox_max_messages
        try:
            with _transaction(conn):
                row_id = int(conn.execute(_INSERT, item.row.values).lastrowid or 0)
                if item.companion is not None:
                    item.companion(conn, row_id)
                appended = (append_message(conn, item.outbox, cap=cap, result_id=row_id)
                            if item.outbox is not None else None)
        except sqlite3.Error:
            raise
        except Exception:
            if item.companion is None:
                raise
            # A bug in the case link must not cost the result: store it without the link.
            _log.exception("results store: linking a result to its case failed; stored "
                           "without the link: %s", item.describe())
            return self._insert(conn, _Pending(item.row, item.outbox, None))
        if appended is not None:
            report(appended, cap)  # only now: a rolled-back drop did not happen
        return row_id

    def _trim_backlog(self) -> None:
        while len(self._backlog) > self.max_backlog:
            lost = self._backlog.popleft()
            self._dropped += 1
            _log.error("results store backlog full (%d rows): dropped the oldest result: %s",
                       self.max_backlog, lost.describe())

    # ------------------------------------------------------------ shared with the outbox

    def write_with(self, work: Callable[[sqlite3.Connection], _T], *,
                   flush_backlog: bool) -> _T:
        """Run ``work(conn)`` in one transaction under the store's lock; return its value.

        For companions of the store on the same database (the outbox). With
        ``flush_backlog`` the results waiting in memory are written first, so what
        ``work`` writes comes after them. StoreError when either write fails; a
        failed ``work`` is rolled back whole.
        """
        with self._lock:
            conn = self._open_conn()
            if flush_backlog and self._backlog:
                self._flush_locked()
            try:
                with _transaction(conn):
                    return work(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to results store {self.path}: {exc}") from exc

    def read_with(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` under the store's lock; StoreError when SQLite fails."""
        with self._lock:
            conn = self._open_conn()
            try:
                return work(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store {self.path}: {exc}") from exc

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
