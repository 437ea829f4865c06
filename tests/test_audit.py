"""The audit trail: append-only triggers, the hash chain, export, validation, two writers."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from appliance.outputs import audit
from appliance.outputs.audit import (
    APPEND_ONLY_MESSAGE,
    GENESIS_HASH,
    AuditLog,
    append,
    create_audit_table,
    entries,
    export_jsonl,
    has_audit_table,
    verify,
    verify_jsonl,
)
from appliance.outputs.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
MODEL_SHA = "ab" * 32


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    """A plain in-memory database holding only the audit table; we manage transactions."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    create_audit_table(connection)
    yield connection
    connection.close()


def add(conn: sqlite3.Connection, **kwargs: Any) -> audit.AuditEntry:
    """append() in its own BEGIN IMMEDIATE ... COMMIT, as the store does it."""
    fields: dict[str, Any] = {"kind": "command", "source": "cli", "detail": {"n": 1}}
    fields.update(kwargs)
    conn.execute("BEGIN IMMEDIATE")
    try:
        entry = append(conn, **fields)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return entry


def fill(conn: sqlite3.Connection, n: int) -> list[audit.AuditEntry]:
    return [add(conn, kind="field_result", source="pipeline", detail={"i": i, "score": "2+"},
                case_id="S25-1" if i % 2 else "S25-2", result_id=i + 1,
                model_sha256=MODEL_SHA) for i in range(n)]


def drop_triggers(conn: sqlite3.Connection) -> None:
    """What anyone with the file and a SQLite shell can do."""
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")


# ---------------------------------------------------------------- append and read


def test_append_reads_back_with_the_chain(conn: sqlite3.Connection) -> None:
    first = add(conn, kind="case_opened", source="mqtt", case_id="S25-1",
                detail={"by": "dr x", "z": [1, 2.5, None]}, at="2025-01-31T14:05:00.123Z")
    second = add(conn, kind="field_result", source="pipeline", case_id="S25-1",
                 model_sha256=MODEL_SHA, result_id=7, detail={"score": "3+"})
    assert first.id == 1 and second.id == 2
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert first.at == "2025-01-31T14:05:00.123+00:00"
    assert second.at.endswith("+00:00") and len(second.at) == len("2025-01-31T14:05:00.123+00:00")
    assert entries(conn) == [first, second]
    back = entries(conn)[0]
    assert back.detail["z"] == (1, 2.5, None) and back.to_dict()["detail"] == {
        "by": "dr x", "z": [1, 2.5, None]}
    (stored,) = conn.execute("SELECT detail FROM audit WHERE id = 1").fetchone()
    assert stored == '{"by":"dr x","z":[1,2.5,null]}'  # sorted keys, compact


def test_hash_is_sha256_of_prev_and_canonical_row(conn: sqlite3.Connection) -> None:
    entry = add(conn, detail={"b": 2, "a": 1}, at="2025-01-31T14:05:00.000+00:00")
    fields = {"id": 1, "at": entry.at, "kind": "command", "source": "cli", "case_id": None,
              "model_sha256": None, "result_id": None, "detail": '{"a":1,"b":2}',
              "prev_hash": GENESIS_HASH}
    text = GENESIS_HASH + json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert entry.hash == hashlib.sha256(text.encode()).hexdigest()


def test_time_is_converted_to_utc(conn: sqlite3.Connection) -> None:
    assert add(conn, at="2025-01-31T15:05:00.5+01:00").at == "2025-01-31T14:05:00.500+00:00"


def test_entries_filters_by_case_since_and_limit(conn: sqlite3.Connection) -> None:
    made = fill(conn, 6)
    assert [e.id for e in entries(conn, case_id="S25-1")] == [2, 4, 6]
    assert [e.id for e in entries(conn, since_id=3)] == [4, 5, 6]
    assert [e.id for e in entries(conn, since_id=1, limit=2)] == [2, 3]
    assert entries(conn, case_id="nobody") == []
    assert entries(conn)[-1] == made[-1]
    with pytest.raises(ValueError, match="limit"):
        entries(conn, limit=0)
    with pytest.raises(ValueError, match="since_id"):
        entries(conn, since_id=-1)


def test_the_entry_is_frozen(conn: sqlite3.Connection) -> None:
    entry = add(conn, detail={"k": {"x": 1}})
    with pytest.raises(AttributeError):
        entry.kind = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.detail["k"]["x"] = 2


def test_append_needs_a_transaction(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        append(conn, kind="command", source="cli", detail={})
    assert entries(conn) == []


# ---------------------------------------------------------------- append-only


def test_update_and_delete_are_refused(conn: sqlite3.Connection) -> None:
    fill(conn, 2)
    with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY_MESSAGE):
        conn.execute("UPDATE audit SET kind = 'other' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY_MESSAGE):
        conn.execute("DELETE FROM audit WHERE id = 2")
    assert [e.kind for e in entries(conn)] == ["field_result", "field_result"]
    assert verify(conn) == []


# ---------------------------------------------------------------- tamper evidence


def test_an_intact_chain_verifies(conn: sqlite3.Connection) -> None:
    assert verify(conn) == []
    fill(conn, 5)
    assert verify(conn) == []


def test_an_edited_row_is_found_at_its_id(conn: sqlite3.Connection) -> None:
    fill(conn, 5)
    drop_triggers(conn)
    conn.execute("""UPDATE audit SET detail = '{"i":2,"score":"3+"}' WHERE id = 3""")
    problems = verify(conn)
    assert len(problems) == 1 and "hash mismatch at id 3" in problems[0]


def test_an_edited_row_with_its_hash_recomputed_breaks_the_next_link(
        conn: sqlite3.Connection) -> None:
    fill(conn, 4)
    drop_triggers(conn)
    row = dict(zip(audit._COLUMNS, conn.execute("SELECT * FROM audit WHERE id = 2").fetchone(),
                   strict=True))
    row["kind"] = "report"
    forged = audit.row_hash(row["prev_hash"], audit._hashed_fields(row))
    conn.execute("UPDATE audit SET kind = 'report', hash = ? WHERE id = 2", (forged,))
    problems = verify(conn)
    assert len(problems) == 1 and "chain broken at id 3" in problems[0]


def test_a_deleted_middle_row_breaks_the_chain(conn: sqlite3.Connection) -> None:
    fill(conn, 5)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE id = 3")
    problems = verify(conn)
    assert len(problems) == 1 and "chain broken at id 4" in problems[0]


def test_a_deleted_first_row_breaks_the_chain(conn: sqlite3.Connection) -> None:
    fill(conn, 3)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE id = 1")
    assert any("chain broken at id 2" in p for p in verify(conn))


def test_deleted_newest_rows_show_against_the_sequence(conn: sqlite3.Connection) -> None:
    fill(conn, 4)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE id >= 3")
    problems = verify(conn)
    assert len(problems) == 1 and "ids up to 4" in problems[0] and "last row is 2" in problems[0]


def test_ids_continue_after_the_sequence_not_the_last_row(conn: sqlite3.Connection) -> None:
    # A new row after a truncated tail must not reuse an id that was handed out.
    fill(conn, 3)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE id = 3")
    assert add(conn).id == 4


# ---------------------------------------------------------------- export


def test_export_round_trips_and_verifies(conn: sqlite3.Connection) -> None:
    made = fill(conn, 5)
    out = io.StringIO()
    assert export_jsonl(conn, out) == 5
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == [e.to_dict() for e in made]
    assert set(records[0]) == {"id", "at", "kind", "source", "case_id", "model_sha256",
                               "result_id", "detail", "prev_hash", "hash"}
    assert records[0]["detail"] == {"i": 0, "score": "2+"}
    assert verify_jsonl(lines) == []


def test_export_filters_by_case(conn: sqlite3.Connection) -> None:
    fill(conn, 5)
    out = io.StringIO()
    assert export_jsonl(conn, out, case_id="S25-2") == 3
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in records] == [1, 3, 5]
    assert {r["case_id"] for r in records} == {"S25-2"}


def test_an_edited_export_is_found(conn: sqlite3.Connection) -> None:
    fill(conn, 3)
    out = io.StringIO()
    export_jsonl(conn, out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    records[1]["detail"]["score"] = "3+"
    lines = [json.dumps(r) for r in records]
    assert verify_jsonl(lines) == [
        "hash mismatch at id 2: the row was changed after it was written"]
    with pytest.raises(ValueError, match="line 1"):
        verify_jsonl(["not json"])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"kind": ""}, "kind"),
    ({"kind": "Field Result"}, "kind"),
    ({"kind": 3}, "kind"),
    ({"source": ""}, "source"),
    ({"source": "mqtt;drop"}, "source"),
    ({"detail": {"x": float("nan")}}, "detail"),
    ({"detail": {"x": [1, float("inf")]}}, r"detail\['x'\]\[1\]"),
    ({"detail": {1: "a"}}, "detail"),
    ({"detail": {"x": {1, 2}}}, "detail"),
    ({"detail": [1, 2]}, "detail"),
    ({"model_sha256": "AB" * 32}, "model_sha256"),
    ({"model_sha256": "ab" * 31}, "model_sha256"),
    ({"case_id": ""}, "case_id"),
    ({"case_id": " S25-1"}, "case_id"),
    ({"case_id": "a\nb"}, "case_id"),
    ({"result_id": 0}, "result_id"),
    ({"result_id": True}, "result_id"),
    ({"at": "yesterday"}, "at"),
    ({"at": "2025-01-31T14:05:00"}, "at"),
])
def test_bad_fields_are_refused_by_name(conn: sqlite3.Connection, kwargs: dict[str, Any],
                                        field: str) -> None:
    with pytest.raises(ValueError, match=field):
        add(conn, **kwargs)
    assert entries(conn) == []


# ---------------------------------------------------------------- through a ResultStore


def open_store(path: Path) -> ResultStore:
    """A real store; the audit table is added only if its migration has not made it yet."""
    store = ResultStore(path)
    if not store.read_with(has_audit_table):
        store.write_with(create_audit_table, flush_backlog=False)
    return store


def test_audit_log_over_a_result_store(tmp_path: Path) -> None:
    with open_store(tmp_path / "results.db") as store:
        log = AuditLog(store)
        first = log.record(kind="case_opened", source="button", case_id="S25-9", detail={})
        log.record(kind="command", source="mqtt", detail={"cmd": "snapshot"})
        assert [e.id for e in log.entries()] == [1, 2]
        assert log.entries(case_id="S25-9") == [first]
        assert log.head() == (2, log.entries()[-1].hash)
        assert log.verify() == []
        out = tmp_path / "audit.jsonl"
        assert log.export(out) == 2 and log.export(io.StringIO(), case_id="S25-9") == 1
        assert verify_jsonl(out.read_text(encoding="utf-8").splitlines()) == []
        assert not (tmp_path / "audit.jsonl.tmp").exists()
        with pytest.raises(ValueError, match="kind"):
            log.record(kind="", source="cli", detail={})
    # Committed on disk: a fresh connection sees both rows.
    with closing(sqlite3.connect(tmp_path / "results.db")) as plain:
        assert [e.kind for e in entries(plain)] == ["case_opened", "command"]


def test_audit_log_needs_the_table(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    open_store(path).close()
    # A store whose audit table is gone (DROP TABLE is beyond any trigger's reach).
    with closing(sqlite3.connect(path)) as plain:
        plain.execute("DROP TABLE audit")
        plain.commit()
    with ResultStore(path) as store, pytest.raises(ValueError, match="no audit table"):
        AuditLog(store)


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from appliance.outputs.audit import AuditLog
    from appliance.outputs.store import ResultStore
    name, n, go = sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    with ResultStore(sys.argv[1]) as store:
        log = AuditLog(store)
        # Both start together, so their transactions really contend for the file.
        (go.parent / f"ready-{name}").touch()
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        for i in range(n):
            log.record(kind="command", source="cli", detail={"writer": name, "i": i})
            time.sleep(0.001)  # let the other writer in between our transactions
    print("done")
""")


def test_two_processes_appending_keep_one_chain(tmp_path: Path) -> None:
    path, go = tmp_path / "results.db", tmp_path / "go"
    open_store(path).close()
    n, names = 60, ("a", "b")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(REPO), name,
                                 str(n), str(go)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in names]
    deadline = time.monotonic() + 30
    while (not all((tmp_path / f"ready-{name}").exists() for name in names)
           and time.monotonic() < deadline and all(w.poll() is None for w in writers)):
        time.sleep(0.005)
    go.touch()
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert out.strip() == "done"
    with open_store(path) as store:
        rows = AuditLog(store).entries()
        assert AuditLog(store).verify() == []
    assert [r.id for r in rows] == list(range(1, 2 * n + 1))
    for name in names:
        # Each writer's rows are all there, in its own order.
        assert [r.detail["i"] for r in rows if r.detail["writer"] == name] == list(range(n))
