"""The pending-reply queue behaves as a FIFO deque whatever the mix of operations."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backend.pure_queue import DequeReplyQueue
from proxy.backend.replies import ReplyQueue, new_reply_queue
from proxy.build import compiled

# (op, value): 0 append value, 1 append value 3 times, 2 popleft, 3 clear
_OPS = st.lists(st.tuples(st.sampled_from([0, 0, 1, 2, 2, 2, 3]), st.integers(0, 9)),
                max_size=400)


@pytest.mark.parametrize("kind", [ReplyQueue, DequeReplyQueue])
@settings(max_examples=300, deadline=None)
@given(ops=_OPS)
def test_reply_queue_matches_a_deque(kind: Any, ops: list[tuple[int, int]]) -> None:
    # Both kinds: the ring (compiled builds) and the deque with two methods (pure ones).
    queue = kind()
    model: deque[int] = deque()
    for op, value in ops:
        if op == 0:
            queue.append(value)
            model.append(value)
        elif op == 1:
            queue.append_many(value, 3)
            model.extend([value] * 3)
        elif op == 2 and model:
            assert queue.first() == model[0]
            assert queue.popleft() == model.popleft()
        elif op == 3:
            queue.clear()
            model.clear()
        assert bool(queue) == bool(model) and len(queue) == len(model)
        assert list(queue) == list(model)
        if model:
            assert queue[0] == model[0] and queue[-1] == model[-1]


def test_a_long_pipeline_gives_its_storage_back_once_drained() -> None:
    queue: ReplyQueue[int] = ReplyQueue()
    for i in range(1000):
        queue.append(i)
    for i in range(990):
        assert queue.popleft() == i
    assert list(queue) == list(range(990, 1000))
    for i in range(990, 1000):
        assert queue.popleft() == i
    assert not queue and len(queue._slots) <= 4  # the drained storage was given back
    with pytest.raises(IndexError):
        queue.popleft()


def test_index_out_of_range() -> None:
    queue: ReplyQueue[str] = ReplyQueue()
    queue.append("a")
    queue.popleft()
    queue.append("b")
    assert queue[0] == "b" and queue[-1] == "b"
    with pytest.raises(IndexError):
        queue[1]
    with pytest.raises(IndexError):
        queue[-2]


def test_each_build_gets_its_cheaper_queue() -> None:
    assert isinstance(new_reply_queue(), ReplyQueue if compiled() else DequeReplyQueue)

