"""The durable MQTT outbox: result and message in one transaction, order, ack, cap, crashes."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from contextlib import closing
from pathlib import Path

import pytest

from appliance.outputs.outbox import (
    REASON_FULL,
    REASON_PAYLOAD,
    MessageBuilder,
    Outbox,
    OutboxMessage,
)
from appliance.outputs.store import ResultStore, StoreError
from tests.test_store import CONFIG_SHA, REPO, cap_pages, make_result, uncap_pages


def field_message(file: str) -> tuple[list[int], MessageBuilder]:
    """A builder for a result's message, and the list of seqs it was called with."""
    calls: list[int] = []

    def build(msg_id: str, seq: int) -> tuple[str, bytes]:
        calls.append(seq)
        return "field", json.dumps({"msg_id": msg_id, "seq": seq, "file": file}).encode()

    return calls, build


def add(store: ResultStore, n: int, *, n_cells: int = 0) -> int:
    """Add result ``n`` with its message (payload: msg_id, seq, file)."""
    _, build = field_message(f"field-{n:03d}.png")
    return store.add(make_result(n, n_cells=n_cells), config_sha256=CONFIG_SHA,
                     outbox=build)


def check_pairs(path: Path) -> list[int]:
    """Every result has exactly one message and vice versa; seq follows the result order.

    Returns all the seqs (results' and others'). Assumes nothing was acknowledged or
    dropped.
    """
    with closing(sqlite3.connect(path)) as conn:
        results = conn.execute("SELECT id, file FROM results ORDER BY id").fetchall()
        messages = conn.execute(
            "SELECT result_id, seq, msg_id, payload, qos FROM outbox ORDER BY seq").fetchall()
        (last_seq,) = conn.execute("SELECT last_seq FROM outbox_seq").fetchone()
    seqs = [m[1] for m in messages]
    # A rolled-back write also rolls back its seq: no duplicates and no gaps.
    assert seqs == list(range(1, len(seqs) + 1))
    assert last_seq == len(seqs)
    # In seq order, the result messages name the results in id order, each once.
    of_results = [m for m in messages if m[0] is not None]
    assert [r[0] for r in results] == [m[0] for m in of_results]
    for (_, file), (_, seq, msg_id, payload, qos) in zip(results, of_results, strict=True):
        assert json.loads(payload) == {"msg_id": msg_id, "seq": seq, "file": file}
        assert qos == 1 and len(msg_id) == 32
    return seqs


def test_pending_in_seq_order_with_enqueued_messages(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        ids = [add(store, 0), add(store, 1)]
        case = outbox.enqueue("case", b'{"case": "c1"}')
        ids.append(add(store, 2))
        pending = outbox.pending()
        assert [m.seq for m in pending] == [1, 2, 3, 4]
        assert [m.topic_suffix for m in pending] == ["field", "field", "case", "field"]
        assert pending[2] == case
        assert isinstance(case, OutboxMessage) and case.payload == b'{"case": "c1"}'
        assert len({m.msg_id for m in pending}) == 4
        assert all(m.qos == 1 and m.created_at.endswith("+00:00") for m in pending)
        assert json.loads(pending[3].payload)["file"] == "field-002.png"
        assert outbox.pending(after_seq=2, limit=1) == [case]
        assert outbox.newest_seq() == 4
        assert outbox.oldest_created_at() == pending[0].created_at
    with closing(sqlite3.connect(tmp_path / "r.sqlite")) as conn:
        links = conn.execute("SELECT result_id FROM outbox ORDER BY seq").fetchall()
    assert [r[0] for r in links] == [ids[0], ids[1], None, ids[2]]


def test_ack_deletes_once_and_unknown_acks_are_false(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        for n in range(3):
            add(store, n)
        first, second, third = outbox.pending()
        assert outbox.ack(second.msg_id) is True
        assert outbox.ack(second.msg_id) is False  # a duplicate PUBACK
        assert outbox.ack("0" * 32) is False
        assert outbox.pending() == [first, third]
        assert outbox.pending(after_seq=first.seq) == [third]
        assert outbox.depth() == 2
        assert outbox.ack(first.msg_id) and outbox.ack(third.msg_id)
        assert outbox.depth() == 0 and outbox.pending() == []
        assert outbox.oldest_created_at() is None and outbox.newest_seq() == 0
        assert store.count() == 3  # acknowledging never touches the results
        assert outbox.dropped_total() == 0


def test_seq_continues_after_reopen_even_when_all_acked(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        add(store, 0)
        for message in (outbox.enqueue("case", b"x"), *outbox.pending()):
            outbox.ack(message.msg_id)
        assert outbox.depth() == 0
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        assert outbox.enqueue("case", b"y").seq == 3


def test_cap_drops_the_oldest_with_a_record(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="appliance.outputs.outbox")
    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=4, warn_fraction=0.5)
        for n in range(6):
            add(store, n)
        assert outbox.depth() == 4 and outbox.dropped_total() == 2
        assert [m.seq for m in outbox.pending()] == [3, 4, 5, 6]  # the newest are kept
        assert store.count() == 6  # the results themselves stay in the store
        logs = [r.getMessage() for r in caplog.records]
        assert len(logs) == 2 and all("dropped the 1 oldest" in m for m in logs)

        # A smaller cap drops several at once: one log line for the batch.
        caplog.clear()
        outbox = Outbox(store, max_messages=2, warn_fraction=0.5)
        outbox.enqueue("case", b"c")
        assert [m.seq for m in outbox.pending()] == [6, 7]
        assert outbox.dropped_total() == 5
        assert [r.getMessage() for r in caplog.records] == [
            "outbox full (2 messages): dropped the 3 oldest (seq 3..5), recorded in "
            "outbox_dropped"]
    with closing(sqlite3.connect(tmp_path / "r.sqlite")) as conn:
        rows = conn.execute(
            "SELECT seq, topic_suffix, reason, summary, result_id, created_at, dropped_at "
            "FROM outbox_dropped ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r[1] == "field" and r[2] == REASON_FULL for r in rows)
    _, _, _, summary, result_id, created_at, dropped_at = rows[0]
    assert result_id == 1 and "file='field-000.png'" in summary and "score=2+" in summary
    assert "msg_id" not in summary  # a summary, never the payload
    assert created_at <= dropped_at


def test_fill_and_degraded_thresholds(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=10, warn_fraction=0.3)
        assert outbox.fill() == 0.0 and not outbox.degraded
        outbox.enqueue("case", b"1")
        outbox.enqueue("case", b"2")
        assert outbox.fill() == pytest.approx(0.2) and not outbox.degraded
        third = outbox.enqueue("case", b"3")
        assert outbox.fill() == pytest.approx(0.3) and outbox.degraded
        outbox.ack(third.msg_id)
        assert not outbox.degraded
        for n in range(20):
            outbox.enqueue("case", str(n).encode())
        assert outbox.depth() == 10 and outbox.fill() == 1.0 and outbox.degraded


def test_a_failing_builder_keeps_the_result_and_records_the_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="appliance.outputs.outbox")

    def broken(msg_id: str, seq: int) -> tuple[str, bytes]:
        raise KeyError("score")

    def wrong_type(msg_id: str, seq: int) -> tuple[str, bytes]:
        return "field", "not bytes"  # type: ignore[return-value]

    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=10, warn_fraction=0.5)
        store.add(make_result(0), config_sha256=CONFIG_SHA, outbox=broken)
        store.add(make_result(1), config_sha256=CONFIG_SHA, outbox=wrong_type)
        add(store, 2)
        assert store.count() == 3
        assert [m.seq for m in outbox.pending()] == [3]  # the gap shows consumers the loss
        assert outbox.dropped_total() == 2
    logs = [r.getMessage() for r in caplog.records]
    assert "seq 1" in logs[0] and "KeyError" in logs[0]
    assert "seq 2" in logs[1] and "TypeError" in logs[1]
    with closing(sqlite3.connect(tmp_path / "r.sqlite")) as conn:
        reasons = [r[0] for r in conn.execute("SELECT reason FROM outbox_dropped ORDER BY seq")]
    assert all(r.startswith(REASON_PAYLOAD) for r in reasons)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="max_messages"):
            Outbox(store, max_messages=0, warn_fraction=0.5)
        with pytest.raises(ValueError, match="warn_fraction"):
            Outbox(store, max_messages=10, warn_fraction=0.0)
        outbox = Outbox(store, max_messages=10, warn_fraction=0.5)
        for topic in ("", "a/+", "a/#", "/a"):
            with pytest.raises(ValueError, match="topic suffix"):
                outbox.enqueue(topic, b"x")
        with pytest.raises(TypeError, match="bytes"):
            outbox.enqueue("case", "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            outbox.pending(limit=0)
        with pytest.raises(ValueError, match="after_seq"):
            outbox.pending(after_seq=-1)
        assert outbox.depth() == 0 and outbox.newest_seq() == 0
    with pytest.raises(StoreError, match="closed"):
        outbox.depth()
    with pytest.raises(StoreError, match="closed"):
        outbox.enqueue("case", b"x")


def test_full_disk_keeps_result_and_message_together(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        add(store, 0, n_cells=40)
        cap_pages(store)
        for n in (1, 2):
            with pytest.raises(StoreError, match="database or disk is full"):
                add(store, n, n_cells=40)
        with pytest.raises(StoreError, match="database or disk is full"):
            outbox.enqueue("case", b"x" * 20000)  # goes after the results: not written
        assert store.pending() == 2 and store.count() == 1 and outbox.depth() == 1
        check_pairs(path)

        uncap_pages(store)
        add(store, 3, n_cells=40)
        case = outbox.enqueue("case", b"summary")
        assert store.pending() == 0 and store.dropped == 0
    assert check_pairs(path) == [1, 2, 3, 4, 5] and case.seq == 5


def test_message_that_does_not_fit_rolls_back_its_result(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        add(store, 0)
        # Free pages for a small result row, then no room for anything bigger.
        outbox.ack(outbox.enqueue("case", b"z" * 20000).msg_id)
        cap_pages(store)
        calls, build = field_message("field-001.png")

        def huge(msg_id: str, seq: int) -> tuple[str, bytes]:
            build(msg_id, seq)
            return "field", b"x" * 200_000

        with pytest.raises(StoreError, match="database or disk is full"):
            store.add(make_result(1), config_sha256=CONFIG_SHA, outbox=huge)
        assert calls == [3]  # the result row was in, and the message failed
        assert store.count() == 1 and outbox.depth() == 1 and store.pending() == 1
        uncap_pages(store)
        assert store.flush() == 1
        assert calls == [3, 3]  # the retry got the seq the rollback gave back
        assert store.count() == 2 and [m.seq for m in outbox.pending()] == [1, 3]


def test_an_interrupted_builder_leaves_neither_row(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        calls, build = field_message("field-000.png")

        def interrupted_once(msg_id: str, seq: int) -> tuple[str, bytes]:
            message = build(msg_id, seq)
            if len(calls) == 1:  # a stop request in the middle of the transaction
                raise KeyboardInterrupt
            return message

        with pytest.raises(KeyboardInterrupt):
            store.add(make_result(0), config_sha256=CONFIG_SHA, outbox=interrupted_once)
        assert store.count() == 0 and outbox.depth() == 0 and outbox.dropped_total() == 0
        assert store.pending() == 1  # not the result's fault: kept for a retry
        case = outbox.enqueue("case", b"x")  # the backlog goes first
        assert calls == [1, 1]  # the counter was rolled back too
        assert store.pending() == 0 and case.seq == 2
    assert check_pairs(path) == [1, 2]


def test_backlog_overflow_drops_result_and_message_together(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path, max_backlog=2) as store:
        outbox = Outbox(store, max_messages=100, warn_fraction=0.5)
        cap_pages(store)
        for n in range(1, 5):
            with pytest.raises(StoreError):
                add(store, n, n_cells=40)
        assert store.dropped == 2 and store.pending() == 2
        uncap_pages(store)
        assert store.flush() == 2
        assert [json.loads(m.payload)["file"] for m in outbox.pending()] == [
            "field-003.png", "field-004.png"]
    check_pairs(path)


def test_threads_add_and_ack_at_once(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        outbox = Outbox(store, max_messages=1000, warn_fraction=0.5)
        acked: list[str] = []
        done = threading.Event()

        def publisher() -> None:
            while not done.is_set() or outbox.depth():
                for message in outbox.pending(limit=5):
                    assert outbox.ack(message.msg_id)
                    acked.append(message.msg_id)

        thread = threading.Thread(target=publisher)
        thread.start()
        for n in range(30):
            add(store, n)
            if n % 10 == 0:
                outbox.enqueue("case", b"c")
        done.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert len(acked) == len(set(acked)) == 33
        assert outbox.depth() == 0 and store.count() == 30


WRITER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from tests.test_store import CONFIG_SHA, make_result
    from appliance.outputs.outbox import Outbox
    from appliance.outputs.store import ResultStore

    store = ResultStore(sys.argv[1])
    Outbox(store, max_messages=1_000_000, warn_fraction=0.5)
    n = store.count()

    def builder(file):
        def build(msg_id, seq):
            return "field", json.dumps({"msg_id": msg_id, "seq": seq, "file": file}).encode()
        return build

    while True:
        result = make_result(n, n_cells=5)
        store.add(result, config_sha256=CONFIG_SHA, outbox=builder(result.file))
        n += 1
        print(n, flush=True)
    """
)


def test_sigkill_at_random_moments_leaves_pairs_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    seen = 0
    for run in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(REPO)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None
            for _ in range(rng.randint(1, 15)):  # some commits, then a random moment
                assert writer.stdout.readline(), writer.stderr.read() if writer.stderr else ""
            threading.Event().wait(rng.uniform(0.0, 0.01))
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.communicate(timeout=10)
        assert writer.returncode == -signal.SIGKILL
        seqs = check_pairs(path)
        assert len(seqs) > seen, f"run {run} wrote nothing (seed {seed})"
        seen = len(seqs)
    with ResultStore(path) as store:
        outbox = Outbox(store, max_messages=1_000_000, warn_fraction=0.5)
        add(store, seen)
        assert outbox.pending(after_seq=seen)[0].seq == seen + 1
        assert outbox.enqueue("case", b"c").seq == seen + 2
