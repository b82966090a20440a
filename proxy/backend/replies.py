"""The pending-reply queue of a server connection: its entries and the native FIFO that
holds them.

``BackendSession.pending`` holds one entry per ReadyForQuery the server still owes
(what each entry means: :mod:`proxy.backend.routing`). The entries defined here are
``FORWARD``, :class:`Skip` and :class:`Collect`; ``Amend`` and ``Emit`` come from
:mod:`proxy.backend.statements`. It is read on every chunk the server sends and
changed twice per transaction, so it is a class of its own rather than a
``collections.deque``: compiled, a deque's truthiness, indexing, ``popleft`` and
``extend`` are generic Python calls (measured ~1,500 instructions per simple
transaction); on this class they are native calls into a list and an index.

A ring buffer: the slots list is allocated once and reused (a list emptied and refilled
every transaction would free and re-allocate its storage each time); it doubles when
full and shrinks back once a long pipeline has drained.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, Protocol, TypeVar, cast

from proxy import build
from proxy.backend.pure_queue import DequeReplyQueue  # (a deque subclass: not compiled)
from proxy.backend.statements import Amend, Emit

_T_contra = TypeVar("_T_contra", contravariant=True)


class Outcome(Protocol[_T_contra]):
    """Where the answer to one of the proxy's own requests goes (an asyncio future)."""

    def done(self) -> bool: ...
    def set_result(self, result: _T_contra, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class _Forward:
    """Queue entry for a client request: its reply goes to the client as received."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = _Forward()


class Collect:
    """A proxy-issued query whose reply messages are gathered and handed to an outcome."""

    __slots__ = ("future", "messages")

    def __init__(self, future: Outcome[list[tuple[int, bytes]]]) -> None:
        self.future = future
        self.messages: list[tuple[int, bytes]] = []


class Skip:
    """A proxy-issued request whose reply is dropped; the outcome says whether it succeeded."""

    __slots__ = ("error", "future")

    def __init__(self, future: Outcome[dict[str, str] | None] | None) -> None:
        self.future = future
        self.error: dict[str, str] | None = None


Entry = _Forward | Skip | Collect | Emit | Amend


E = TypeVar("E")

_INITIAL: Final = 4  # slots (a transaction has one entry, with a context set two)
#: Slots beyond which a drained queue gives its storage back.
_SHRINK_ABOVE: Final = 64


class ReplyQueue(Generic[E]):
    """FIFO of pending-reply entries: append at the tail, pop at the head."""

    __slots__ = ("_count", "_head", "_slots")

    def __init__(self) -> None:
        self._slots: list[E | None] = [None] * _INITIAL
        self._head = 0   # slot of the first entry still pending
        self._count = 0  # entries pending

    def __bool__(self) -> bool:
        return self._count > 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[E]:
        return iter([self._at(i) for i in range(self._count)])

    def __getitem__(self, index: int) -> E:
        """The entry ``index`` places from the head (0: the next reply's)."""
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            raise IndexError("reply queue index out of range")
        return self._at(index)

    def __repr__(self) -> str:
        return f"ReplyQueue({list(self)!r})"

    def _at(self, index: int) -> E:
        slots = self._slots
        at = self._head + index
        if at >= len(slots):
            at -= len(slots)
        return cast(E, slots[at])

    def first(self) -> E:
        """The head entry (the queue must not be empty): ``self[0]`` without the checks."""
        return cast(E, self._slots[self._head])

    def append(self, entry: E) -> None:
        slots = self._slots
        count = self._count
        if count == len(slots):
            slots = self._slots = [*self, entry, *([None] * (count - 1))]
            self._head = 0
            self._count = count + 1
            return
        at = self._head + count
        if at >= len(slots):
            at -= len(slots)
        slots[at] = entry
        self._count = count + 1

    def append_many(self, entry: E, count: int) -> None:
        """``count`` times ``entry`` at the tail (one FORWARD per expected reply)."""
        while count > 0:
            self.append(entry)
            count -= 1

    def popleft(self) -> E:
        """Take the head entry off (the queue must not be empty)."""
        if not self._count:
            raise IndexError("popleft from an empty reply queue")
        slots = self._slots
        head = self._head
        entry = slots[head]
        slots[head] = None
        head += 1
        if head == len(slots):
            head = 0
        self._head = head
        self._count -= 1
        if not self._count and len(slots) > _SHRINK_ABOVE:
            self.clear()
        return cast(E, entry)

    def clear(self) -> None:
        self._slots = [None] * _INITIAL
        self._head = 0
        self._count = 0


_COMPILED: Final = build.compiled()


def new_reply_queue() -> ReplyQueue[Entry]:
    """An empty pending-reply queue, the cheaper kind for this build (the same methods)."""
    if _COMPILED:
        return ReplyQueue()
    return cast(ReplyQueue[Entry], DequeReplyQueue())

