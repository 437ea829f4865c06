"""The SQLite results store: durability, the full-disk backlog, migrations, lifecycle.

The outbox that shares the store's database is tested in test_outbox.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.assays.her2.types import (
    Category,
    CellMeasurement,
    FieldResult,
    Intensity,
    MembraneClass,
    ModelRef,
    Score,
)
from appliance.outputs import casebook
from appliance.outputs import store as store_module
from appliance.outputs.outbox import Outbox
from appliance.outputs.store import SCHEMA_VERSION, ResultStore, StoreError

REPO = Path(__file__).resolve().parents[1]
CONFIG_SHA = "0123456789abcdef" * 4
MODEL = ModelRef(name="her2-cells-unet", sha256="ab" * 32, precision="int8",
                 validated_on="generated data only")


def make_result(seq: int, *, n_cells: int = 0) -> FieldResult:
    """A scored 2+ result; ``n_cells`` makes the stored JSON as big as needed."""
    cells = tuple(
        CellMeasurement(cell_id=i, x=10.0 + i, y=20.0 + i, nucleus_area_um2=30.0,
                        completeness=1.0, intensity_od=0.45, intensity=Intensity.MODERATE,
                        membrane_class=MembraneClass.COMPLETE_WEAK_MODERATE)
        for i in range(n_cells)
    )
    percent = {c: 0.0 for c in MembraneClass}
    percent[MembraneClass.COMPLETE_WEAK_MODERATE] = 100.0
    return FieldResult(
        file=f"field-{seq:03d}.png", seq=seq, assay="her2", status="scored", model=MODEL,
        image_width=640, image_height=480, score=Score.TWO, category=Category.EQUIVOCAL,
        rule="complete membrane staining in 100.0% > 10%", tumour_cells=max(n_cells, 25),
        percent=percent, cells=cells, um_per_px=0.5, um_per_px_source="config",
        created_at=f"2025-01-31T14:05:{seq % 60:02d}.000+00:00",
    )


def cap_pages(store: ResultStore, extra: int = 0) -> None:
    """Make the database unable to grow: SQLite then fails with 'database or disk is full'."""
    conn = store._conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def uncap_pages(store: ResultStore) -> None:
    assert store._conn is not None
    store._conn.execute("PRAGMA max_page_count = 1073741823")


def test_add_count_recent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "results.sqlite"  # parents are created
    with ResultStore(path) as store:
        ids = [store.add(make_result(i, n_cells=3), config_sha256=CONFIG_SHA) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert store.count() == 5
        assert store.pending() == 0
        rows = store.recent(limit=3)
    assert [r["seq"] for r in rows] == [4, 3, 2]  # newest first
    top = rows[0]
    assert top["id"] == ids[-1]
    assert top["status"] == "scored" and top["score"] == "2+"
    assert top["category"] == "equivocal" and top["config_sha256"] == CONFIG_SHA
    assert top["model_name"] == "her2-cells-unet" and top["model_sha256"] == "ab" * 32
    assert top["result"]["file"] == "field-004.png"
    assert len(top["result"]["cells"]) == 3  # the store keeps the cells
    assert "result_json" not in top


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.add(make_result(1), config_sha256=CONFIG_SHA)
    with ResultStore(path) as store:
        assert store.count() == 1
        store.add(make_result(2), config_sha256=CONFIG_SHA)
        assert [r["seq"] for r in store.recent()] == [2, 1]


def test_close_is_idempotent_and_use_after_close_raises(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.close()
    store.close()
    assert store.closed
    for call in (store.count, store.pending, store.recent, store.flush):
        with pytest.raises(StoreError, match="closed"):
            call()
    with pytest.raises(StoreError, match="closed"):
        store.add(make_result(0), config_sha256=CONFIG_SHA)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="config_sha256"):
            store.add(make_result(0), config_sha256="abc")
        with pytest.raises(ValueError, match="limit"):
            store.recent(limit=0)
        assert store.count() == 0 and store.pending() == 0


def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the folder"):
        ResultStore(blocker / "r.sqlite")
    not_sqlite = tmp_path / "garbage.sqlite"
    not_sqlite.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StoreError, match="cannot prepare results store"):
        ResultStore(not_sqlite)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this software"):
        ResultStore(path)


def test_migration_hook_runs_new_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.add(make_result(1), config_sha256=CONFIG_SHA)

    def add_reviewer(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE results ADD COLUMN reviewer TEXT")

    migrations = (*store_module.MIGRATIONS, add_reviewer)
    monkeypatch.setattr(store_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(migrations))
    with ResultStore(path) as store:
        assert store.count() == 1  # old rows kept
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    assert "reviewer" in columns


def test_v1_database_migrates_in_place_to_the_outbox_schema(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.sqlite"
    with monkeypatch.context() as v1:  # the shipped v1 code: only the first migration
        v1.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        v1.setattr(store_module, "SCHEMA_VERSION", 1)
        with ResultStore(path) as store:
            for seq in range(3):
                store.add(make_result(seq, n_cells=2), config_sha256=CONFIG_SHA)
            before = store.recent()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "outbox" not in tables

    caplog.set_level(logging.INFO, logger="appliance.outputs.store")
    with ResultStore(path) as store:
        assert store.recent() == before  # old results kept as they were
        outbox = Outbox(store, max_messages=10, warn_fraction=0.5)
        store.add(make_result(3), config_sha256=CONFIG_SHA,
                  outbox=lambda msg_id, seq: ("field", f"{seq}".encode()))
        assert [(m.seq, m.payload) for m in outbox.pending()] == [(1, b"1")]
        assert store.count() == 4
    assert any(f"migrated from schema 1 to {SCHEMA_VERSION}" in r.getMessage()
               for r in caplog.records)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6 == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"outbox", "outbox_seq", "outbox_dropped"} <= tables


def old_store(path: Path, monkeypatch: pytest.MonkeyPatch, version: int, sql: str) -> None:
    """A store made by the code that shipped schema ``version``, with one statement run."""
    with monkeypatch.context() as shipped:
        shipped.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:version])
        shipped.setattr(store_module, "SCHEMA_VERSION", version)
        with ResultStore(path) as store:
            store.write_with(lambda conn: conn.execute(sql), flush_backlog=False)


def test_v3_cases_migrate_as_her2_cases(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    # The shipped v3 code: cases without an assay.
    old_store(path, monkeypatch, 3, "INSERT INTO cases (case_id, opened_at, opened_by, mode) "
              "VALUES ('c-old', '2026-01-01T00:00:00.000+00:00', 'cli', 'tumour')")
    with ResultStore(path) as store:
        old = store.read_with(lambda conn: casebook.get_case(conn, "c-old"))
        assert old is not None and old.assay == "her2" and old.open
        store.write_with(lambda conn: casebook.close_case(
            conn, "c-old", at="2026-01-01T01:00:00.000+00:00", by="cli", summary={}),
            flush_backlog=False)
        store.write_with(lambda conn: casebook.insert_case(
            conn, "c-new", at="2026-01-02T00:00:00.000+00:00", by="cli", assay="hep2"),
            flush_backlog=False)
        new = store.read_with(lambda conn: casebook.get_case(conn, "c-new"))
        assert new is not None and new.assay == "hep2"


def test_v5_cases_migrate_without_a_slide(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    # The shipped v5 code: cases without a slide.
    old_store(path, monkeypatch, 5, "INSERT INTO cases (case_id, opened_at, opened_by, mode, "
              "assay) VALUES ('c-old', '2026-01-01T00:00:00.000+00:00', 'cli', 'tumour', "
              "'hep2')")
    with ResultStore(path) as store:
        old = store.read_with(lambda conn: casebook.get_case(conn, "c-old"))
        assert old is not None and old.slide is None and old.assay == "hep2"
        store.write_with(lambda conn: casebook.close_case(
            conn, "c-old", at="2026-01-01T01:00:00.000+00:00", by="cli", summary={}),
            flush_backlog=False)
        store.write_with(lambda conn: casebook.insert_case(
            conn, "c-new", at="2026-01-02T00:00:00.000+00:00", by="cli", assay="hep2",
            slide="s-1"), flush_backlog=False)
        new = store.read_with(lambda conn: casebook.get_case(conn, "c-new"))
        assert new is not None and new.slide == "s-1"
    with sqlite3.connect(path) as conn:
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT case_id FROM cases WHERE slide = 's-1'"))
    assert "cases_slide" in plan  # the slide's cases are found by the index


def test_full_disk_keeps_results_and_writes_them_later(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add(make_result(0, n_cells=40), config_sha256=CONFIG_SHA)
        cap_pages(store)
        for seq in (1, 2):
            with pytest.raises(StoreError, match="database or disk is full"):
                store.add(make_result(seq, n_cells=40), config_sha256=CONFIG_SHA)
        assert store.pending() == 2
        assert store.count() == 1
        with pytest.raises(StoreError, match="2 result"):
            store.flush()  # an explicit retry fails the same way, nothing lost

        uncap_pages(store)
        last = store.add(make_result(3, n_cells=40), config_sha256=CONFIG_SHA)
        assert store.pending() == 0 and store.dropped == 0
        rows = store.recent()
        assert rows[0]["id"] == last
        assert [r["seq"] for r in rows] == [3, 2, 1, 0]  # the backlog went first, in order


def test_explicit_flush_writes_the_backlog(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        cap_pages(store)
        with pytest.raises(StoreError):
            store.add(make_result(1, n_cells=40), config_sha256=CONFIG_SHA)
        uncap_pages(store)
        assert store.flush() == 1
        assert store.flush() == 0
        assert store.pending() == 0 and store.count() == 1


def test_read_only_database_keeps_results(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store._conn is not None
        store._conn.execute("PRAGMA query_only = ON")  # writes now fail as on a read-only file
        with pytest.raises(StoreError, match="readonly"):
            store.add(make_result(1), config_sha256=CONFIG_SHA)
        assert store.pending() == 1
        store._conn.execute("PRAGMA query_only = OFF")
        store.add(make_result(2), config_sha256=CONFIG_SHA)
        assert [r["seq"] for r in store.recent()] == [2, 1]


def test_backlog_overflow_is_counted_and_logged(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="appliance.outputs.store")
    with ResultStore(tmp_path / "r.sqlite", max_backlog=2) as store:
        cap_pages(store)
        for seq in range(1, 5):
            with pytest.raises(StoreError):
                store.add(make_result(seq, n_cells=40), config_sha256=CONFIG_SHA)
        assert store.pending() == 2
        assert store.dropped == 2
        dropped_logs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped_logs) == 2
        assert "field-001.png" in dropped_logs[0] and "score=2+" in dropped_logs[0]
        assert "field-002.png" in dropped_logs[1]
        uncap_pages(store)
        assert store.flush() == 2
        assert [r["seq"] for r in store.recent()] == [4, 3]  # the newest were kept


def test_close_logs_results_it_cannot_write(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="appliance.outputs.store")
    store = ResultStore(tmp_path / "r.sqlite")
    cap_pages(store)
    with pytest.raises(StoreError):
        store.add(make_result(9, n_cells=40), config_sha256=CONFIG_SHA)
    store.close()
    assert store.dropped == 1
    assert any("field-009.png" in r.getMessage() for r in caplog.records)


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from test_store import CONFIG_SHA, make_result
    from appliance.outputs.store import ResultStore

    store = ResultStore(sys.argv[1])
    for seq in range(5):
        store.add(make_result(seq, n_cells=10), config_sha256=CONFIG_SHA)
    print("written", flush=True)
    time.sleep(60)  # killed long before this ends; the store is never closed
    """
)


def test_committed_rows_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(REPO), str(REPO / "tests")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line.strip() == "written", writer.stderr.read() if writer.stderr else ""
        # A reader in another process sees the commits while the writer still runs ...
        with sqlite3.connect(path) as reader:
            assert reader.execute("SELECT count(*) FROM results").fetchone()[0] == 5
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    # ... and after the writer dies without closing anything.
    with ResultStore(path) as store:
        assert store.count() == 5
        rows = store.recent()
    assert [r["seq"] for r in rows] == [4, 3, 2, 1, 0]
    assert json.dumps(rows[0]["result"])  # decodes to a full result
    assert len(rows[0]["result"]["cells"]) == 10
