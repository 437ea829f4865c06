"""One-item mailboxes between the pipeline's threads.

A :class:`Slot` holds at most one item. Capture puts with ``replace=True``: the
newest frame pushes out an older one nobody has taken yet (drop-oldest, counted),
so capture never waits. Later stages put with ``replace=False``: they wait for
room, because work already done on a frame should not be thrown away.

Closing a slot is how the end of the stream travels downstream: ``get`` returns
what is still inside, then :data:`END`.
"""

from __future__ import annotations

import threading
from typing import Final, Generic, TypeVar

T = TypeVar("T")


class _End:
    def __repr__(self) -> str:
        return "END"


END: Final = _End()


class Slot(Generic[T]):
    """A single-item mailbox with drop-oldest or wait-for-room puts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T, *, replace: bool) -> bool:
        """Hand over ``item``; returns False when the slot is closed (the item is dropped).

        ``replace=True`` overwrites an item not yet taken (counted in ``dropped``);
        ``replace=False`` waits until the consumer has taken it.
        """
        with self._cond:
            while self._full and not replace and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def wait_for_room(self) -> bool:
        """Block until the slot is empty (the consumer took the last item); False if closed."""
        with self._cond:
            self._cond.wait_for(lambda: not self._full or self._closed)
            return not self._closed

    def get(self, timeout: float | None = None) -> T | _End | None:
        """The item; END once closed and empty; None when ``timeout`` passes first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return END
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; the consumer gets what is left, then END (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        """0 or 1: whether an item is waiting."""
        return int(self._full)
