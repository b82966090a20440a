"""The operations endpoint: ``/metrics``, ``/healthz``, ``/readyz`` on ``[server] metrics_listen``.

A deliberately tiny HTTP/1.1 server on the proxy's own event loop (so the collector reads
the proxy's state without locks): one request per connection (``Connection: close``),
a request head of at most :data:`MAX_REQUEST_HEAD` bytes read within
:data:`REQUEST_TIMEOUT` seconds, at most :data:`MAX_CONNECTIONS` at once. Anything odd
gets a 4xx or a closed socket; no exception leaves a handler, so a scanner or a slow
client can never take the proxy down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder

from proxy.config import DatabaseConfig, parse_listen
from proxy.metrics.collector import make_registry

if TYPE_CHECKING:
    from proxy.app import ProxyApp

log = logging.getLogger("pgtenant.metrics")

MAX_REQUEST_HEAD = 8192        # bytes: request line + headers
REQUEST_TIMEOUT = 5.0          # seconds to send the request and take the response
MAX_CONNECTIONS = 64
UPSTREAM_TIMEOUT = 1.0         # seconds for the readiness TCP connect
READINESS_CACHE = 2.0          # seconds a readiness answer is reused

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


class BadRequest(Exception):
    """The request is not HTTP we understand."""


class ReadinessProbe:
    """Is the proxy listening, and can it reach at least one upstream? Cached briefly."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self._answer: tuple[bool, str] = (False, "not checked yet")
        self._checked_at = -READINESS_CACHE
        self._running: asyncio.Task[tuple[bool, str]] | None = None

    async def check(self) -> tuple[bool, str]:
        """``(ready, reason)``; concurrent callers share one probe."""
        if time.monotonic() - self._checked_at < READINESS_CACHE:
            return self._answer
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._probe())
        # shield: a caller that gives up (timeout, disconnect) must not cancel the others'.
        return await asyncio.shield(self._running)

    async def _probe(self) -> tuple[bool, str]:
        answer = await self._evaluate()
        self._answer = answer
        self._checked_at = time.monotonic()
        return answer

    async def _evaluate(self) -> tuple[bool, str]:
        app = self.app
        if not app.sockets:
            return False, "not listening"
        pools = list(app.pools.values())
        if not pools:
            return False, "no databases configured"
        if all(pool.closed for pool in pools):
            return False, "shutting down"
        remote = app.verifier.remote
        if remote is not None and not remote.loaded:
            return False, f"no JWT keys loaded from jwks_url yet ({remote.last_error})"
        results = await asyncio.gather(*(upstream_reachable(p.db) for p in pools))
        failures = [f"{p.db.name}: {err}" for p, err in zip(pools, results, strict=True)
                    if err is not None]
        if len(failures) == len(pools):
            return False, "no upstream reachable (" + "; ".join(failures) + ")"
        return True, "ready"


async def upstream_reachable(db: DatabaseConfig) -> str | None:
    """None if a TCP (or Unix socket) connect to the upstream succeeds, else why not."""
    where = f"{db.host}:{db.port}"
    try:
        async with asyncio.timeout(UPSTREAM_TIMEOUT):
            if db.host.startswith("/"):
                where = f"{db.host}/.s.PGSQL.{db.port}"
                _, writer = await asyncio.open_unix_connection(where)
            else:
                _, writer = await asyncio.open_connection(db.host, db.port)
    except TimeoutError:
        return f"{where} did not answer within {UPSTREAM_TIMEOUT:g}s"
    except OSError as exc:
        return f"{where} unreachable ({exc.strerror or exc})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class HttpEndpoint:
    """The tiny HTTP server; subclasses answer requests in :meth:`respond`."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=MAX_REQUEST_HEAD, reuse_address=True)
        log.info("metrics on http://%s/metrics", listen if port else self.address)

    async def start_unix(self, path: str) -> None:
        """Serve on a Unix socket (a worker's endpoint, read by its supervisor)."""
        self._server = await asyncio.start_unix_server(self._handle, path,
                                                       limit=MAX_REQUEST_HEAD)

    @property
    def address(self) -> str:
        """``host:port`` actually bound (port 0 in the config picks a free one)."""
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return f"{name[0]}:{name[1]}"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    # ---- one connection -----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._handlers) >= MAX_CONNECTIONS or task is None:
            writer.transport.abort()
            return
        self._handlers.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    method, path, accept = parse_request_head(head)
                except (BadRequest, asyncio.LimitOverrunError, asyncio.IncompleteReadError,
                        UnicodeDecodeError):
                    status, ctype, body = 400, _TEXT, b"bad request\n"
                else:
                    status, ctype, body = await self._route(method, path, accept)
                writer.write(render_response(status, ctype, body))
                # close() flushes what is buffered; wait_closed() bounds a client that
                # does not read its response (the timeout then aborts it).
                writer.close()
                await writer.wait_closed()
        except asyncio.CancelledError:
            pass  # stop(): drop the connection
        except TimeoutError:
            log.debug("metrics client %s too slow; dropped", writer.get_extra_info("peername"))
        except OSError as exc:
            log.debug("metrics client %s: %s", writer.get_extra_info("peername"), exc)
        except Exception:
            # Never let a request take the proxy down; a collector bug shows up here.
            log.exception("metrics request failed")
        finally:
            self._handlers.discard(task)
            writer.transport.abort()  # no-op once closed; drops a stuck or failed one

    async def _route(self, method: str, path: str, accept: str) -> tuple[int, str, bytes]:
        if path not in ("/metrics", "/healthz", "/readyz"):
            return 404, _TEXT, b"not found\n"
        if method != "GET":
            return 405, _TEXT, b"method not allowed\n"
        return await self.respond(path, accept)

    async def respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for a GET of ``path``."""
        raise NotImplementedError


class MetricsServer(HttpEndpoint):
    """Serves the operations endpoints of one :class:`ProxyApp`."""

    def __init__(self, app: ProxyApp) -> None:
        super().__init__()
        self.app = app
        self.registry = make_registry(app)
        self.readiness = ReadinessProbe(app)

    async def respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            ready, reason = await self.readiness.check()
            return (200 if ready else 503), _TEXT, (reason + "\n").encode()
        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(self.registry)


def parse_request_head(head: bytes) -> tuple[str, str, str]:
    """``(method, path without query, Accept header)`` from a request head, or BadRequest."""
    lines = head.decode("ascii").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("request line")
    method, target, version = parts
    if not method.isalpha() or not method.isupper() or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("request line")
    if not target.startswith("/"):
        raise BadRequest("target")
    accept = ""
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("header")
        if name.lower() == "accept":
            accept = value.strip()
    return method, target.partition("?")[0], accept


def render_response(status: int, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Allow: GET\r\n" if status == 405 else "")
            + "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body
