"""The engine bench's adapter: every place it touches the proxy.

The rest of the bench (:mod:`bench.engine.drive`, :mod:`bench.engine.measure`) drives
asyncio Protocols and reads counters through the functions here, so that when the
proxy's internals move, this is the one module to fix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

import uvloop

import proxy
import proxy.wire.framing
from bench.engine.workloads import TENANT
from bench.fakepg import Engine
from proxy.app import ProxyApp
from proxy.auth.jwt import mint_token
from proxy.backend.server import ServerConnection
from proxy.config import parse_config
from proxy.frontend.client import ClientConnection

# What the bench uses of the proxy:
#
# - ProxyApp(config): the app, never started (no listener is bound).
# - ClientConnection(app): one client, an asyncio.Protocol fed by a fake transport.
# - The event loop's create_connection: ServerConnection.connect() opens its socket
#   through it; NoSocketLoop hands it a fake transport to the fake PostgreSQL instead
#   (for a ServerConnection protocol only: anything else is refused).
#   Everything after (handshake, the pool's role check, leases, context sets) is the
#   proxy's own code talking to FakePostgres. No proxy class is patched, so this works
#   the same on a compiled (mypyc) build.
# - bench/fakepg.py statement_result() knows the proxy's own statements by their text: the
#   context set (set_config), the pool's role check (rolbypassrls), DISCARD/RESET ALL.

_JWT_SECRET_ENV = "PGTENANT_ENGINE_BENCH_JWT_SECRET"


def _config_toml(pool_mode: str, guard: bool) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
[auth.jwt]
secret_env = "{_JWT_SECRET_ENV}"
[tenancy]
guard = {"true" if guard else "false"}
[databases.app]
host = "127.0.0.1"
port = 5432
user = "app_user"
sslmode = "disable"
pool_mode = "{pool_mode}"
pool_size = {POOL_SIZE}
"""


POOL_SIZE = 20  # the config's pool_size (as in ./dev bench)


def build_app(pool_mode: str, guard: bool) -> tuple[ProxyApp, str]:
    """A ProxyApp for database ``app`` in ``pool_mode``, and a valid JWT for TENANT."""
    os.environ.setdefault(_JWT_SECRET_ENV, secrets.token_hex(32))
    config = parse_config(_config_toml(pool_mode, guard), "<engine bench>")
    return ProxyApp(config), token_for(TENANT)


def token_for(tenant: str) -> str:
    """A valid JWT for ``tenant`` (the app's secret)."""
    return mint_token(os.environ.setdefault(_JWT_SECRET_ENV, secrets.token_hex(32)), tenant)


def new_client(app: ProxyApp) -> asyncio.Protocol:
    """One client connection of ``app``, not yet connected."""
    return ClientConnection(app)


def pool_counters(app: ProxyApp) -> tuple[int, int, int]:
    """Database ``app``'s pool: waits, tenant context sets, kept servers reclaimed."""
    stats = app.pools["app"].stats
    return stats.waits, stats.leases_with_context_set, stats.kept_reclaimed


def servers_opening(app: ProxyApp) -> int:
    """Server connections database ``app``'s pool is still opening."""
    return app.pools["app"].connecting


async def stop_app(app: ProxyApp) -> None:
    await app.stop()


def compiled_modules() -> list[str]:
    """The proxy modules loaded from a compiled extension (mypyc), sorted."""
    return sorted(name for name, module in list(sys.modules.items())
                  if name.split(".")[0] == "proxy"
                  and str(getattr(module, "__file__", "") or "").endswith((".so", ".pyd")))


def build_kind() -> str:
    return "compiled" if str(proxy.wire.framing.__file__).endswith((".so", ".pyd")) else "pure"


def proxy_source_dir() -> str:
    return os.path.dirname(os.path.abspath(str(proxy.__file__))) + os.sep


class NoSocketLoop(uvloop.Loop):
    """The proxy's loop (uvloop) whose outgoing connections go to FakePostgres."""

    engine: Engine | None = None

    async def create_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.Protocol], host: str | None = None,
            port: int | None = None, **kwargs: Any) -> tuple[asyncio.Transport, asyncio.Protocol]:
        protocol = protocol_factory()
        if self.engine is None or not isinstance(protocol, ServerConnection):
            raise OSError(f"engine bench: no sockets ({host}:{port})")
        transport = self.engine.server_transport(protocol)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, protocol  # type: ignore[return-value]

    async def create_unix_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.Protocol], path: str | None = None,
            **kwargs: Any) -> Any:
        raise OSError(f"engine bench: no sockets ({path})")
