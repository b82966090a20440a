"""The pending-reply queue of a server connection, as a native FIFO.

``BackendSession.pending`` holds one entry per ReadyForQuery the server still owes
(see :mod:`proxy.backend.routing`). It is read on every chunk the server sends and
changed twice per transaction, so it is a class of its own rather than a
``collections.deque``: compiled, a deque's truthiness, indexing, ``popleft`` and
``extend`` are generic Python calls (measured ~1,500 instructions per simple
transaction); on this class they are native calls into a list and an index.

The queue is usually empty between transactions: ``popleft`` of the last entry resets
the list, so a long pipeline does not leave a long list behind, and the consumed head of
a queue that never empties is dropped once it is half of the list (O(1) amortized).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, TypeVar

E = TypeVar("E")

#: Consumed entries kept at the head before the list is compacted (and at least half).
_COMPACT_AFTER: Final = 32


class ReplyQueue(Generic[E]):
    """FIFO of pending-reply entries: append at the tail, pop at the head."""

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[E] = []
        self._head = 0  # index of the first entry still pending

    def __bool__(self) -> bool:
        return len(self._items) > self._head

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __iter__(self) -> Iterator[E]:
        return iter(self._items[self._head:])

    def __getitem__(self, index: int) -> E:
        """The entry ``index`` places from the head (0: the next reply's)."""
        if index < 0:
            index += len(self._items) - self._head
        if index < 0 or index >= len(self._items) - self._head:
            raise IndexError("reply queue index out of range")
        return self._items[self._head + index]

    def __repr__(self) -> str:
        return f"ReplyQueue({self._items[self._head:]!r})"

    def first(self) -> E:
        """The head entry (the queue must not be empty): ``self[0]`` without the checks."""
        return self._items[self._head]

    def append(self, entry: E) -> None:
        self._items.append(entry)

    def append_many(self, entry: E, count: int) -> None:
        """``count`` times ``entry`` at the tail (one FORWARD per expected reply)."""
        items = self._items
        for _ in range(count):
            items.append(entry)

    def popleft(self) -> E:
        """Take the head entry off (the queue must not be empty)."""
        items = self._items
        head = self._head
        entry = items[head]
        head += 1
        if head == len(items):
            items.clear()
            head = 0
        elif head > _COMPACT_AFTER and head * 2 > len(items):
            del items[:head]
            head = 0
        self._head = head
        return entry

    def clear(self) -> None:
        self._items.clear()
        self._head = 0
