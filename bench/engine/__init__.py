"""The proxy's own cost per transaction, in process: no sockets, no PostgreSQL.

Run: ``./dev bench --engine`` or ``.venv/bin/python -m bench.engine [--help]``.

The real :class:`proxy.app.ProxyApp`, its client connections (fed through their
``asyncio.Protocol`` callbacks from fake transports) and its pool, whose server
connections log in to a fake PostgreSQL in this file through the real handshake. The
fake answers every request with the bytes PostgreSQL would send, from a per-connection
memo once it has seen a request, so the time measured is the proxy's Python (and this
file's small harness, measured on its own as the ``harness`` row).

Delivery is synchronous like socket callbacks: a client's bytes go in with one
``data_received`` call; the server replies the proxy wrote during that call are
delivered afterwards, one ``data_received`` per server connection (``--delivery loop``:
by ``call_soon``, through the event loop). With 8 clients a round sends all 8
requests first (8 leases), then delivers the 8 replies: the pool works as under
``pgbench -c 8``. Each transaction's reply is compared byte for byte with what
PostgreSQL would send the client (RowDescription, DataRow, CommandComplete,
ReadyForQuery), so an error path cannot pass for a measurement.

Reported per workload: CPU µs per transaction (this thread's CPU time for a block of
transactions, median over repeats; wall time beside it), proxy Python calls per
transaction (``sys.setprofile``, one extra run; a compiled module's functions do not
count), and whether the proxy runs compiled.

Layout: :mod:`~bench.engine.workloads` (what a transaction is, the workloads, a result's
fields), :mod:`~bench.engine.adapter` (every place the bench touches the proxy),
:mod:`~bench.engine.drive` (one workload driven through the proxy, every reply checked),
:mod:`~bench.engine.measure` (timing, call counts, the harness's own share),
:mod:`~bench.engine.cli` (the command line); the fake PostgreSQL is ``bench/fakepg.py``.
"""
