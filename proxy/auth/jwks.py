"""Verification keys published by an identity provider at a JWKS URL.

Identity providers (Auth0, Keycloak, Cognito, Supabase Auth, Clerk, Firebase) publish
their signing keys as a JWKS document over HTTPS and rotate them: a new key appears in
the set some time before tokens are signed with it. :class:`RemoteJwks` keeps the last
good key set:

- fetched at start-up, then every ``refresh_seconds``;
- fetched again, at most once every ``min_refresh_seconds``, when a token names a key id
  the set does not have (rotation): random ``kid`` values cannot make the proxy hammer
  the provider;
- kept when the provider is unreachable, slow or serves something unusable: logins
  with known keys go on, the failure is logged and counted;
- fail closed: until one fetch has succeeded there is no key, every token is refused
  and ``/readyz`` says why.

The fetch is blocking I/O (urllib) and runs in a worker thread, so a slow provider never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pgtenant.jwks")

#: A JWKS document larger than this is refused (real ones are a few kB).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: After a failed fetch, the next scheduled one comes at most this much later.
RETRY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class JwksSettings:
    url: str
    ca_file: str | None
    refresh_seconds: float
    min_refresh_seconds: float
    timeout_seconds: float
    algorithms: tuple[str, ...]   # what the keys are checked against when parsed


def fetch_document(settings: JwksSettings) -> Any:
    """GET the JWKS document (blocking); raises OSError/ValueError with a short reason."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    request = urllib.request.Request(settings.url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_seconds,
                                    context=context) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError("the document is larger than 1 MiB")
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError("the document is not valid JSON") from None


class RemoteJwks:
    """The key set of one JWKS URL; ``keys`` is replaced whole by each good fetch.

    ``parse`` turns a document into keys (raising ValueError for an unusable one); it is
    the same check a ``jwks_file`` gets.
    """

    def __init__(self, settings: JwksSettings, parse: Callable[[Any], dict[str | None, Any]],
                 *, fetch: Callable[[JwksSettings], Any] = fetch_document,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._parse = parse
        self._fetch = fetch
        self._clock = clock
        self.keys: dict[str | None, Any] = {}
        self.loaded = False
        self.refreshes_ok = 0
        self.refreshes_failed = 0
        self.last_success_unix = 0.0
        self.last_error = "not fetched yet"
        self._last_attempt = -float("inf")
        self._running: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch already under way); True if the set was replaced."""
        if self._running is not None and not self._running.done():
            return await asyncio.shield(self._running)
        self._running = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._running)

    async def _refresh(self) -> bool:
        self._last_attempt = self._clock()
        try:
            document = await asyncio.to_thread(self._fetch, self.settings)
            keys = self._parse(document)
        except (OSError, ValueError) as exc:
            self.refreshes_failed += 1
            self.last_error = str(exc) or type(exc).__name__
            log.warning("JWKS %s: refresh failed (%s); %s", self.settings.url, self.last_error,
                        f"keeping the last {len(self.keys)} key(s)" if self.loaded
                        else "no key loaded yet: every token is refused")
            return False
        added = keys.keys() - self.keys.keys()
        self.keys = keys
        self.loaded = True
        self.refreshes_ok += 1
        self.last_success_unix = time.time()
        self.last_error = ""
        if added:
            log.info("JWKS %s: %d key(s), new key ids %s", self.settings.url, len(keys),
                     sorted(str(k) for k in added))
        return True

    def may_refresh_for(self, kid: object) -> bool:
        """A token named a key id we lack: may we ask the provider again now?"""
        return (kid not in self.keys
                and self._clock() - self._last_attempt >= self.settings.min_refresh_seconds)

    def start_soon(self) -> None:
        """Fetch now and then on schedule, in the background. Idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def start(self) -> None:
        """:meth:`start_soon`, waiting for the first fetch (a failure is not fatal: logins
        are refused until a key set arrives)."""
        self.start_soon()
        if not self.loaded:
            await self.refresh()

    async def _run(self) -> None:
        if not self.loaded:
            await self.refresh()
        while True:
            delay = self.settings.refresh_seconds
            if self.last_error:
                delay = min(delay, RETRY_SECONDS)
            await asyncio.sleep(delay)
            await self.refresh()

    def stop_soon(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
