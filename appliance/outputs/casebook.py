"""Cases in the results store: which case is open, its fields, its control checks.

The store is the one place the case state lives, so every process that opens the store
(the service, ``appliance case``, ``appliance score --case``) sees the same open case, a
restart or a SIGKILL loses nothing, and an unclosed case is simply still open when the
box comes back. These are plain functions over a connection: the caller holds the
store's lock and runs them inside its transaction (``ResultStore.write_with`` /
``read_with``, or the companion hook of ``ResultStore.add``), so a field result and its
link to the case are committed together or not at all.

Schema (v3):

* ``cases``: one row per case; at most one has ``closed_at`` NULL (a partial unique
  index). ``mode`` is ``tumour`` or ``control``; a control check in progress has its
  ``control_round`` and ``control_expected`` level.
* ``case_fields``: one row per reported field of a case, pointing at its ``results`` row,
  with its role, the field fingerprint (to recognise a return to the same field) and a
  small JPEG of its overlay for the report.
* ``control_checks``: each decision on a control, with the measurements and calibration.

v4 adds ``cases.assay``: the assay a case was opened under (``her2`` for older cases). A
case pools only its own assay's fields, and its controls are that assay's. The role
``tumour`` is a HEp-2 case's patient well; its ``control`` rounds are the kit's controls.

v5 adds the serum dilution of a HEp-2 case's titration: ``cases.dilution`` (the well shown
now, 80 for 1:80; NULL when not given) and ``case_fields.dilution`` (the well each patient
field was shown in).

v6 adds ``cases.slide``: the (opaque) id of the slide a HEp-2 case's well is on. The kit's
controls are read once per slide; a case on the same slide counts the control checks made
in the slide's other cases (``slide_checks``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.pipeline.field_memory import FP_HEIGHT, FP_WIDTH, Fingerprint, similarity

ROLES = ("tumour", "control")
MODES = ROLES


def create_case_tables(conn: sqlite3.Connection) -> None:
    """The v3 case tables (called by the store's migration, inside its transaction)."""
    conn.execute(
        """
        CREATE TABLE cases (
            case_id TEXT PRIMARY KEY,
            opened_at TEXT NOT NULL,
            opened_by TEXT NOT NULL,
            closed_at TEXT,
            closed_by TEXT,
            mode TEXT NOT NULL CHECK (mode IN ('tumour', 'control')),
            control_expected TEXT,
            control_round INTEGER NOT NULL DEFAULT 0,
            summary_json TEXT
        )
        """
    )
    # At most one open case: the index holds the constant 1 for every open row.
    conn.execute("CREATE UNIQUE INDEX cases_one_open ON cases ((closed_at IS NULL)) "
                 "WHERE closed_at IS NULL")
    conn.execute(
        """
        CREATE TABLE case_fields (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            case_id TEXT NOT NULL REFERENCES cases (case_id),
            number INTEGER NOT NULL,
            result_id INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('tumour', 'control')),
            control_round INTEGER,
            duplicate_of INTEGER,
            fingerprint BLOB,
            thumbnail BLOB,
            added_at TEXT NOT NULL,
            UNIQUE (case_id, number)
        )
        """
    )
    conn.execute("CREATE INDEX case_fields_case ON case_fields (case_id)")
    conn.execute(
        """
        CREATE TABLE control_checks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            case_id TEXT NOT NULL REFERENCES cases (case_id),
            round INTEGER NOT NULL,
            expected TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            valid INTEGER NOT NULL CHECK (valid IN (0, 1)),
            check_json TEXT NOT NULL
        )
        """
    )


@dataclass(frozen=True)
class CaseRow:
    """A case as stored."""

    case_id: str
    opened_at: str
    opened_by: str
    closed_at: str | None
    closed_by: str | None
    mode: str
    control_expected: str | None
    control_round: int
    summary: dict[str, Any] | None
    assay: str = "her2"
    dilution: int | None = None  # HEp-2: the serum dilution of the well shown now
    slide: str | None = None  # HEp-2: the opaque id of the slide the well is on

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class CaseFieldRow:
    """One field of a case, with its stored result (decoded) and overlay thumbnail."""

    number: int
    result_id: int
    role: str
    control_round: int | None
    duplicate_of: int | None
    added_at: str
    result: dict[str, Any]
    thumbnail: bytes | None
    dilution: int | None = None  # HEp-2: the serum dilution of the well it was shown in


@dataclass(frozen=True)
class CheckRow:
    """One stored control decision."""

    round: int
    expected: str
    decided_at: str
    valid: bool
    check: dict[str, Any]
    case_id: str = ""  # the case it was decided in (another case's on the same slide)


_CASE_COLUMNS = ("case_id", "opened_at", "opened_by", "closed_at", "closed_by", "mode",
                 "control_expected", "control_round", "summary_json", "assay", "dilution",
                 "slide")


def _case(row: Iterable[Any]) -> CaseRow:
    d = dict(zip(_CASE_COLUMNS, row, strict=True))
    summary = d.pop("summary_json")
    return CaseRow(**d, summary=json.loads(summary) if summary else None)


def open_case(conn: sqlite3.Connection) -> CaseRow | None:
    """The open case, or None."""
    row = conn.execute(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases "
                       "WHERE closed_at IS NULL").fetchone()
    return _case(row) if row else None


def get_case(conn: sqlite3.Connection, case_id: str) -> CaseRow | None:
    """A case by id, open or closed."""
    row = conn.execute(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases WHERE case_id = ?",
                       (case_id,)).fetchone()
    return _case(row) if row else None


def list_cases(conn: sqlite3.Connection, limit: int = 50) -> list[CaseRow]:
    """The newest cases first."""
    rows = conn.execute(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases "
                        "ORDER BY opened_at DESC LIMIT ?", (limit,)).fetchall()
    return [_case(r) for r in rows]


def add_assay_column(conn: sqlite3.Connection) -> None:
    """v4: the assay of each case (called by the store's migration, in its transaction)."""
    conn.execute("ALTER TABLE cases ADD COLUMN assay TEXT NOT NULL DEFAULT 'her2'")


def add_dilution_columns(conn: sqlite3.Connection) -> None:
    """v5: the serum dilution of a case's well now and of each field (store migration)."""
    conn.execute("ALTER TABLE cases ADD COLUMN dilution INTEGER")
    conn.execute("ALTER TABLE case_fields ADD COLUMN dilution INTEGER")


def add_slide_column(conn: sqlite3.Connection) -> None:
    """v6: the slide a HEp-2 case's well is on (store migration), indexed for the slide's
    control checks."""
    conn.execute("ALTER TABLE cases ADD COLUMN slide TEXT")
    conn.execute("CREATE INDEX cases_slide ON cases (slide) WHERE slide IS NOT NULL")


def set_dilution(conn: sqlite3.Connection, case_id: str, dilution: int) -> None:
    """The serum dilution of the well the case's next patient fields are shown in."""
    conn.execute("UPDATE cases SET dilution = ? WHERE case_id = ?", (dilution, case_id))


def insert_case(conn: sqlite3.Connection, case_id: str, *, at: str, by: str,
                assay: str = "her2", slide: str | None = None) -> None:
    """Open a new case of ``assay`` (on ``slide``, an opaque id); ValueError when one is
    open or the id was used before."""
    current = open_case(conn)
    if current is not None:
        raise ValueError(f"case {current.case_id} is still open: close it first")
    if get_case(conn, case_id) is not None:
        raise ValueError(f"case {case_id} exists already (closed): case ids are not reused")
    conn.execute("INSERT INTO cases (case_id, opened_at, opened_by, mode, assay, slide) "
                 "VALUES (?, ?, ?, 'tumour', ?, ?)", (case_id, at, by, assay, slide))


def set_mode(conn: sqlite3.Connection, case_id: str, mode: str, *,
             expected: str | None = None, control_round: int | None = None) -> None:
    """Switch a case between tumour fields and a control check."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if control_round is None:
        conn.execute("UPDATE cases SET mode = ?, control_expected = ? WHERE case_id = ?",
                     (mode, expected, case_id))
    else:
        conn.execute("UPDATE cases SET mode = ?, control_expected = ?, control_round = ? "
                     "WHERE case_id = ?", (mode, expected, control_round, case_id))


def close_case(conn: sqlite3.Connection, case_id: str, *, at: str, by: str,
               summary: dict[str, Any]) -> None:
    """Close a case and keep its final summary."""
    cur = conn.execute("UPDATE cases SET closed_at = ?, closed_by = ?, mode = 'tumour', "
                       "control_expected = NULL, summary_json = ? "
                       "WHERE case_id = ? AND closed_at IS NULL",
                       (at, by, json.dumps(summary, sort_keys=True, allow_nan=False), case_id))
    if cur.rowcount != 1:
        raise ValueError(f"case {case_id} is not open")


def encode_fingerprint(fp: Fingerprint) -> bytes:
    """A fingerprint as float16 bytes (13.8 KB; ample precision for a correlation)."""
    return fp.pixels.astype(np.float16).tobytes()


def decode_fingerprint(blob: bytes) -> Fingerprint:
    """The inverse of :func:`encode_fingerprint`."""
    pixels = np.frombuffer(blob, np.float16).reshape(FP_HEIGHT, FP_WIDTH).astype(np.float32)
    return Fingerprint(pixels)


def link_field(conn: sqlite3.Connection, case_id: str, result_id: int, *, role: str,
               control_round: int | None, at: str, fingerprint: Fingerprint | None,
               thumbnail: bytes | None, same_field: float,
               dilution: int | None = None) -> tuple[int, int | None]:
    """Add a stored result to a case; (its number in the case, the field it repeats or None).

    A field whose fingerprint matches an earlier field of the same role (and, for a
    control, the same check; for a HEp-2 patient field, the same dilution) at
    ``same_field`` or better is a return to that field: it is kept, pointing at the first
    view.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    (number,) = conn.execute("SELECT coalesce(max(number), 0) + 1 FROM case_fields "
                             "WHERE case_id = ?", (case_id,)).fetchone()
    duplicate_of = None
    if fingerprint is not None and not fingerprint.blank:
        rows = conn.execute(
            "SELECT number, duplicate_of, fingerprint FROM case_fields WHERE case_id = ? AND "
            "role = ? AND control_round IS ? AND dilution IS ? AND fingerprint IS NOT NULL "
            "ORDER BY number", (case_id, role, control_round, dilution)).fetchall()
        for other, other_dup, blob in rows:
            if similarity(fingerprint, decode_fingerprint(blob)) >= same_field:
                duplicate_of = other_dup or other
                break
    conn.execute(
        "INSERT INTO case_fields (case_id, number, result_id, role, control_round, duplicate_of, "
        "fingerprint, thumbnail, added_at, dilution) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (case_id, number, result_id, role, control_round, duplicate_of,
         None if fingerprint is None else encode_fingerprint(fingerprint), thumbnail, at,
         dilution))
    return int(number), duplicate_of


@dataclass(frozen=True)
class FieldPlace:
    """Where a case field was filed: its role, control round and dilution."""

    number: int
    role: str
    control_round: int | None
    dilution: int | None


def place_of(conn: sqlite3.Connection, case_id: str, file: str, seq: int) -> FieldPlace | None:
    """The latest field of the case whose result has this ``file`` and ``seq`` (None: none)."""
    row = conn.execute(
        "SELECT f.number, f.role, f.control_round, f.dilution FROM case_fields f "
        "JOIN results r ON r.id = f.result_id WHERE f.case_id = ? AND r.file = ? AND r.seq = ? "
        "ORDER BY f.number DESC LIMIT 1", (case_id, file, seq)).fetchone()
    return None if row is None else FieldPlace(int(row[0]), str(row[1]), row[2], row[3])


def case_fields(conn: sqlite3.Connection, case_id: str, *, role: str | None = None,
                control_round: int | None = None,
                thumbnails: bool = False) -> list[CaseFieldRow]:
    """The fields of a case in order, with their decoded results."""
    sql = ("SELECT f.number, f.result_id, f.role, f.control_round, f.duplicate_of, f.added_at, "
           f"r.result_json, {'f.thumbnail' if thumbnails else 'NULL'}, f.dilution "
           "FROM case_fields f "
           "JOIN results r ON r.id = f.result_id WHERE f.case_id = ?")
    args: list[Any] = [case_id]
    if role is not None:
        sql += " AND f.role = ?"
        args.append(role)
    if control_round is not None:
        sql += " AND f.control_round = ?"
        args.append(control_round)
    rows = conn.execute(sql + " ORDER BY f.number", args).fetchall()
    return [CaseFieldRow(number=r[0], result_id=r[1], role=r[2], control_round=r[3],
                         duplicate_of=r[4], added_at=r[5], result=json.loads(r[6]),
                         thumbnail=r[7], dilution=r[8]) for r in rows]


def insert_check(conn: sqlite3.Connection, case_id: str, *, control_round: int,
                 expected: str, at: str, valid: bool, check: dict[str, Any]) -> None:
    """Record one control decision."""
    conn.execute("INSERT INTO control_checks (case_id, round, expected, decided_at, valid, "
                 "check_json) VALUES (?, ?, ?, ?, ?, ?)",
                 (case_id, control_round, expected, at, int(valid),
                  json.dumps(check, sort_keys=True, allow_nan=False)))


# What each control-check query reads (``k`` is control_checks), in _check's order.
_CHECK_COLUMNS = "k.round, k.expected, k.decided_at, k.valid, k.check_json, k.case_id"


def checks(conn: sqlite3.Connection, case_id: str) -> list[CheckRow]:
    """A case's control decisions, oldest first."""
    rows = conn.execute(f"SELECT {_CHECK_COLUMNS} FROM control_checks k WHERE k.case_id = ? "
                        "ORDER BY k.id", (case_id,)).fetchall()
    return [_check(r) for r in rows]


def slide_checks(conn: sqlite3.Connection, slide: str, *, assay: str, since: str,
                 until: str | None, exclude: str) -> list[CheckRow]:
    """The control decisions made in the other ``assay`` cases on ``slide`` (not case
    ``exclude``), decided in [``since``, ``until``] (``until`` None: up to now), oldest
    first. Times are the store's UTC ISO strings, which sort as text."""
    rows = conn.execute(
        f"SELECT {_CHECK_COLUMNS} "
        "FROM control_checks k JOIN cases c ON c.case_id = k.case_id "
        "WHERE c.slide = ? AND c.assay = ? AND c.case_id != ? AND k.decided_at >= ? "
        "AND (? IS NULL OR k.decided_at <= ?) ORDER BY k.decided_at, k.id",
        (slide, assay, exclude, since, until, until)).fetchall()
    return [_check(r) for r in rows]


def control_history(conn: sqlite3.Connection, *, assay: str, expected: str,
                    since: str = "") -> list[CheckRow]:
    """Every decision on ``expected`` controls in ``assay`` cases decided at or after
    ``since`` (a UTC ISO time; "" for all), oldest first (a lab's control chart: a lab
    runs one or two a day, so a year is a few hundred rows).

    A control round decided again (a view of it read again under new settings) is one run:
    only its latest decision is returned.
    """
    rows = conn.execute(
        f"SELECT {_CHECK_COLUMNS} "
        "FROM control_checks k JOIN cases c ON c.case_id = k.case_id "
        "WHERE c.assay = ? AND k.expected = ? AND k.decided_at >= ? "
        "ORDER BY k.decided_at, k.id",
        (assay, expected, since)).fetchall()
    runs = [_check(r) for r in rows]
    last = {(c.case_id, c.round): i for i, c in enumerate(runs)}
    return [c for i, c in enumerate(runs) if last[(c.case_id, c.round)] == i]


def _check(row: Iterable[Any]) -> CheckRow:
    """A CheckRow from a row of ``_CHECK_COLUMNS``."""
    round_, expected, decided_at, valid, check_json, case_id = row
    return CheckRow(round_, expected, decided_at, bool(valid), json.loads(check_json), case_id)
