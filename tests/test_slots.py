"""The one-item mailboxes between pipeline threads: drop-oldest, wait-for-room, end of stream."""

from __future__ import annotations

import threading

from appliance.pipeline.slots import END, Slot


def test_replace_keeps_the_newest_and_counts_the_dropped() -> None:
    slot: Slot[int] = Slot("analysis")
    for i in range(5):
        assert slot.put(i, replace=True)
    assert slot.dropped == 4
    assert slot.depth == 1
    assert slot.get(timeout=0) == 4
    assert slot.get(timeout=0) is None  # empty: the timeout passes


def test_wait_for_room_loses_nothing_across_threads() -> None:
    slot: Slot[int] = Slot("model")
    received: list[int] = []

    def consume() -> None:
        while (item := slot.get()) is not END:
            assert isinstance(item, int)
            received.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(200):
        slot.put(i, replace=False)
    slot.close()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert received == list(range(200))
    assert slot.dropped == 0


def test_close_delivers_what_is_left_then_end() -> None:
    slot: Slot[str] = Slot("finish")
    slot.put("last", replace=False)
    slot.close()
    slot.close()  # idempotent
    assert slot.get() == "last"
    assert slot.get() is END
    assert slot.get(timeout=0) is END
    assert not slot.put("late", replace=True)  # closed: refused, not kept


def test_close_wakes_a_producer_waiting_for_room() -> None:
    slot: Slot[int] = Slot("model")
    slot.put(1, replace=False)
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(slot.put(2, replace=False)))
    producer.start()
    producer.join(timeout=0.05)
    assert producer.is_alive()  # waiting for the consumer
    slot.close()
    producer.join(timeout=10)
    assert results == [False]


def test_wait_for_room_returns_once_the_item_is_taken_or_the_slot_closes() -> None:
    slot: Slot[int] = Slot("finish")
    assert slot.wait_for_room()  # empty: at once
    slot.put(1, replace=False)
    taker = threading.Timer(0.05, slot.get)
    taker.start()
    assert slot.wait_for_room()  # returns when the consumer has taken it
    taker.join()
    slot.put(2, replace=False)
    threading.Timer(0.05, slot.close).start()
    assert not slot.wait_for_room()  # closed while full: no room will ever come
