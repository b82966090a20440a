"""The object every connected client is stays within its size (idle clients: 2 kB each).

``./dev bench --workloads e`` measures the RSS of 10,000 idle clients; one more attribute
on ``ClientConnection`` (its basic size 272 -> 280 bytes compiled) cost 160 bytes of RSS
per idle client there, reproducibly (2eb1240): the object moves to the allocator's next
size class, and the idle target is 2 kB. So a new per-client field replaces an old one,
or this limit is raised together with a new idle measurement.
"""

from __future__ import annotations

from proxy import build
from proxy.frontend.client import ClientConnection

#: Basic size in bytes, by build: compiled (mypyc's struct) and pure (``__slots__``).
LIMIT = {True: 272, False: 288}


def test_a_client_object_is_no_larger_than_measured() -> None:
    assert ClientConnection.__basicsize__ <= LIMIT[build.compiled()]
