"""The pending-reply queue of the pure-Python build (see
:func:`proxy.backend.replies.new_reply_queue`).

A module of its own because it subclasses ``collections.deque``: mypyc cannot compile
such a class (a native class derives from object), so this module stays interpreted in
both builds and only the pure build uses it.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

E = TypeVar("E")


class DequeReplyQueue(deque[E]):
    """The pure build's queue: interpreted, every method of :class:`ReplyQueue` is a Python
    call (seven truth tests a transaction), while a deque's are C; the two methods the
    routing adds to a deque's are the only Python calls left."""

    __slots__ = ()

    def first(self) -> E:
        return self[0]

    def append_many(self, entry: E, count: int) -> None:
        self.extend([entry] * count)
