"""The durable MQTT outbox: messages wait in the results store until the broker has them.

Every message gets our own id (``msg_id``, uuid4 hex) and a sequence number
(``seq``) from a counter kept in the database, so both survive restarts and stay
unique across connections, unlike paho's packet ids. A result and its message are
written in one transaction by :meth:`ResultStore.add`; other messages (case
summaries) by :meth:`Outbox.enqueue`. The publisher reads :meth:`Outbox.pending` in
``seq`` order and calls :meth:`Outbox.ack` after the broker's PUBACK, which deletes
the row. Delivery is therefore at least once; consumers de-duplicate by ``msg_id``.

The outbox is bounded: when a new message would exceed ``max_messages``, the oldest
are dropped to make room, each recorded in the ``outbox_dropped`` table, logged at
ERROR and counted. A message whose payload cannot be built is recorded there too,
while its result stays in the store. :attr:`Outbox.degraded` turns true at
``warn_fraction`` of the cap, long before anything is dropped.

:class:`Outbox` shares the store's connection and lock rather than opening its own
connection: the sequence counter, the cap and the result rows then change under one
lock in one transaction each, there is no second writer to wait on SQLite's file
lock (``SQLITE_BUSY``), and one place handles the full disk. The price is that an
``ack`` waits for a result's commit (a few milliseconds) when both happen at once.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only for annotations: store.py imports this module to write a result's message.
    from appliance.outputs.store import ResultStore

_log = logging.getLogger(__name__)

#: Builds a result's message once its id and sequence number are known:
#: ``(msg_id, seq) -> (topic_suffix, payload)``.
MessageBuilder = Callable[[str, int], tuple[str, bytes]]

QOS = 1  # at least once: a row leaves only after the broker's PUBACK
# The default cap when no Outbox has set one (MqttConfig.outbox_max_messages's default).
DEFAULT_MAX_MESSAGES = 200_000
REASON_FULL = "outbox_full"
REASON_PAYLOAD = "payload_error"

_COLUMNS = ("msg_id", "seq", "topic_suffix", "payload", "qos", "created_at")


@dataclass(frozen=True)
class OutboxMessage:
    """One message waiting for the broker; ``topic_suffix`` goes after the topic prefix."""

    msg_id: str
    seq: int
    topic_suffix: str
    payload: bytes
    qos: int
    created_at: str


@dataclass(frozen=True)
class Appended:
    """What one append did, for the log once its transaction has committed."""

    msg_id: str
    seq: int
    created_at: str
    written: bool  # False: the payload could not be built, recorded as dropped
    failure: str = ""  # why the payload could not be built
    dropped_seqs: tuple[int, ...] = ()  # the oldest messages dropped to make room


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_message(topic_suffix: object, payload: object) -> tuple[str, bytes]:
    """The message as (str, bytes); ValueError/TypeError naming what is wrong."""
    if not isinstance(topic_suffix, str) or not topic_suffix:
        raise ValueError(f"topic suffix must be a non-empty string, got {topic_suffix!r}")
    # A published topic may not hold wildcards; a leading '/' would give an empty level.
    if any(c in topic_suffix for c in "+#\0") or topic_suffix.startswith("/"):
        raise ValueError(f"topic suffix {topic_suffix!r} holds '+', '#', NUL or a leading '/'")
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return topic_suffix, bytes(payload)


def _next_seq(conn: sqlite3.Connection) -> int:
    """Advance the persisted counter; rolled back with the transaction, so no gaps."""
    conn.execute("UPDATE outbox_seq SET last_seq = last_seq + 1 WHERE id = 1")
    row = conn.execute("SELECT last_seq FROM outbox_seq WHERE id = 1").fetchone()
    if row is None:
        raise sqlite3.IntegrityError("the outbox_seq counter row is missing")
    return int(row[0])


def _summary(conn: sqlite3.Connection, result_id: int | None, payload: bytes) -> str:
    """A short description: the result's own columns, the payload's size and hash only."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    text = f"bytes={len(payload)} sha256={digest}"
    if result_id is None:
        return text
    row = conn.execute(
        "SELECT file, seq, status, score, category FROM results WHERE id = ?", (result_id,)
    ).fetchone()
    if row is None:
        return f"result_id={result_id} (row gone) {text}"
    file, field_seq, status, score, category = row
    return (f"result_id={result_id} file={file!r} field_seq={field_seq} status={status} "
            f"score={score} category={category} {text}")


# What outbox_dropped needs of a message: msg_id, seq, topic_suffix, created_at,
# result_id and the payload (for its size and hash only).
_DropRow = tuple[str, int, str, str, int | None, bytes]


def _record_dropped(conn: sqlite3.Connection, rows: list[_DropRow], reason: str) -> None:
    """Record messages in outbox_dropped, each with a short summary instead of its payload."""
    now = _utc_now()
    conn.executemany(
        "INSERT INTO outbox_dropped (msg_id, seq, topic_suffix, created_at, dropped_at, "
        "reason, summary, result_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(m, s, t, c, now, reason, _summary(conn, r, p), r) for m, s, t, c, r, p in rows],
    )


def _make_room(conn: sqlite3.Connection, cap: int) -> tuple[int, ...]:
    """Drop the oldest messages so one more fits under ``cap``; their seqs."""
    oldest, newest = conn.execute("SELECT min(seq), max(seq) FROM outbox").fetchone()
    # The seq span bounds the depth: below the cap there is no need to count rows.
    if oldest is None or newest - oldest + 1 < cap:
        return ()
    (depth,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    excess = int(depth) + 1 - cap
    if excess <= 0:
        return ()
    rows = conn.execute(
        "SELECT msg_id, seq, topic_suffix, created_at, result_id, payload FROM outbox "
        "ORDER BY seq LIMIT ?", (excess,),
    ).fetchall()
    _record_dropped(conn, rows, REASON_FULL)
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (rows[-1][1],))
    return tuple(int(r[1]) for r in rows)


def append_message(conn: sqlite3.Connection, build: MessageBuilder, *, cap: int,
                   result_id: int | None = None) -> Appended:
    """Allocate seq and msg_id, build the message and insert it, inside the caller's transaction.

    A builder that raises (or returns something that is not (str, bytes)) does not undo
    the transaction: the message is recorded in outbox_dropped instead, so the result
    it belongs to is kept. Errors of SQLite propagate for the caller to roll back.
    """
    seq = _next_seq(conn)
    msg_id = uuid.uuid4().hex
    created_at = _utc_now()
    try:
        topic_suffix, payload = check_message(*build(msg_id, seq))
    except Exception as exc:  # any bug in a builder must not cost the result
        failure = f"{type(exc).__name__}: {exc}"
        _record_dropped(conn, [(msg_id, seq, "", created_at, result_id, b"")],
                        f"{REASON_PAYLOAD}: {failure}")
        return Appended(msg_id, seq, created_at, written=False, failure=failure)
    dropped = _make_room(conn, cap)
    conn.execute(
        "INSERT INTO outbox (msg_id, seq, topic_suffix, payload, qos, created_at, result_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (msg_id, seq, topic_suffix, payload, QOS, created_at, result_id),
    )
    return Appended(msg_id, seq, created_at, written=True, dropped_seqs=dropped)


def report(appended: Appended, cap: int) -> None:
    """Log, after the commit, what an append dropped: at ERROR, once per batch."""
    if not appended.written:
        _log.error("outbox: message seq %d (%s) not built, recorded in outbox_dropped: %s",
                   appended.seq, appended.msg_id, appended.failure)
    if appended.dropped_seqs:
        seqs = appended.dropped_seqs
        _log.error("outbox full (%d messages): dropped the %d oldest (seq %d..%d), recorded "
                   "in outbox_dropped", cap, len(seqs), seqs[0], seqs[-1])


def _message(row: tuple[str, int, str, bytes, int, str]) -> OutboxMessage:
    msg_id, seq, topic_suffix, payload, qos, created_at = row
    return OutboxMessage(msg_id=msg_id, seq=int(seq), topic_suffix=topic_suffix,
                         payload=bytes(payload), qos=int(qos), created_at=created_at)


class Outbox:
    """The outbox of one results store; thread-safe (it uses the store's lock).

    Creating it sets the store's cap, which :meth:`ResultStore.add` applies too.
    Every method raises :class:`~appliance.outputs.store.StoreError` when the
    database cannot be read or written, or the store is closed.
    """

    def __init__(self, store: ResultStore, *, max_messages: int, warn_fraction: float) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        if not 0.0 < warn_fraction <= 1.0:
            raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
        self.store = store
        self.max_messages = max_messages
        self.warn_fraction = warn_fraction
        store.outbox_max_messages = max_messages

    def enqueue(self, topic_suffix: str, payload: bytes) -> OutboxMessage:
        """Add a message that is not a result (a case summary); committed when this returns.

        Results still in the store's memory backlog are written first, so the
        message's seq follows theirs. ValueError/TypeError: a bad topic or payload.
        """
        topic_suffix, payload = check_message(topic_suffix, payload)
        return self.enqueue_built(lambda _m, _s: (topic_suffix, payload))

    def enqueue_built(self, build: MessageBuilder) -> OutboxMessage:
        """Like :meth:`enqueue`, for a payload that carries its own msg_id and seq.

        ``build(msg_id, seq)`` runs inside the transaction (under the store's lock: it
        must not call the store or this outbox) and returns (topic suffix, payload).
        """
        built: list[tuple[str, bytes]] = []

        def keep(msg_id: str, seq: int) -> tuple[str, bytes]:
            built.append(check_message(*build(msg_id, seq)))
            return built[-1]

        def write(conn: sqlite3.Connection) -> Appended:
            return append_message(conn, keep, cap=self.max_messages)

        appended = self.store.write_with(write, flush_backlog=True)
        report(appended, self.max_messages)
        topic_suffix, payload = built[-1]
        return OutboxMessage(msg_id=appended.msg_id, seq=appended.seq, topic_suffix=topic_suffix,
                             payload=payload, qos=QOS, created_at=appended.created_at)

    def pending(self, *, after_seq: int = 0, limit: int = 100) -> list[OutboxMessage]:
        """Up to ``limit`` waiting messages with seq > ``after_seq``, in seq order."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if after_seq < 0:
            raise ValueError(f"after_seq must not be negative, got {after_seq}")
        rows = self.store.read_with(lambda conn: conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit)).fetchall())
        return [_message(r) for r in rows]

    def ack(self, msg_id: str) -> bool:
        """Delete a message the broker has acknowledged; False if it was not there.

        A duplicate or unknown acknowledgement is normal after a reconnect, not an error.
        """
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,)).rowcount

        return self.store.write_with(delete, flush_backlog=False) == 1

    def depth(self) -> int:
        """Messages waiting."""
        return int(self._scalar("SELECT count(*) FROM outbox") or 0)

    def newest_seq(self) -> int:
        """The highest seq waiting, 0 when none: where a replayed backlog ends."""
        return int(self._scalar("SELECT max(seq) FROM outbox") or 0)

    def oldest_created_at(self) -> str | None:
        """When the oldest waiting message was written (ISO 8601, UTC), None when none."""
        value = self._scalar("SELECT created_at FROM outbox ORDER BY seq LIMIT 1")
        return None if value is None else str(value)

    def dropped_total(self) -> int:
        """Messages ever dropped (cap reached, payload not built), as recorded on disk."""
        return int(self._scalar("SELECT count(*) FROM outbox_dropped") or 0)

    def fill(self) -> float:
        """depth / max_messages: 1.0 means the next message drops the oldest."""
        return self.depth() / self.max_messages

    @property
    def degraded(self) -> bool:
        """True once the fill reaches ``warn_fraction``: health turns degraded."""
        return self.fill() >= self.warn_fraction

    def _scalar(self, sql: str) -> Any:
        row = self.store.read_with(lambda conn: conn.execute(sql).fetchone())
        return None if row is None else row[0]
