"""``pgtenant demo``: a throwaway PostgreSQL with two tenants and the proxy in front of it."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.auth.jwt import mint_token
from proxy.config import AuthConfig, Config, DatabaseConfig, JwtConfig, ServerConfig
from proxy.devtools.cluster import EmbeddedPostgres
from proxy.devtools.provisioning import provision_app

DEMO_TENANTS = ("acme", "globex")

#: How the demo runs the proxy: ``proxy.cli.serve`` (passed in, so this module sits below
#: the command line instead of importing it back).
Serve = Callable[[Config, Callable[[Any], None]], Awaitable[int]]


def demo_config(pg_host: str, pg_port: int, listen_port: int) -> Config:
    """The demo's config; secrets travel through environment variables, as in production."""
    return Config(
        path="<demo>",
        server=ServerConfig(listen=f"127.0.0.1:{listen_port}"),
        auth=AuthConfig(jwt=JwtConfig(secret_env="PGTENANT_DEMO_JWT_SECRET")),
        databases={"app": DatabaseConfig(
            name="app", host=pg_host, port=pg_port, dbname="app", user="app_user",
            password_env="PGTENANT_DEMO_UPSTREAM_PASSWORD", pool_mode="transaction",
            pool_size=10, sslmode="disable")},
    )


async def run_demo(serve: Serve, port: int = 6432) -> int:
    """Start everything, print a psql line per tenant, run until Ctrl-C."""
    jwt_secret = secrets.token_urlsafe(32)
    upstream_password = secrets.token_urlsafe(16)
    os.environ["PGTENANT_DEMO_JWT_SECRET"] = jwt_secret
    os.environ["PGTENANT_DEMO_UPSTREAM_PASSWORD"] = upstream_password
    print("starting a throwaway PostgreSQL ...", flush=True)
    loop = asyncio.get_running_loop()
    pg = await loop.run_in_executor(None, EmbeddedPostgres)
    try:
        await loop.run_in_executor(None, pg.start)
        await loop.run_in_executor(None, lambda: provision_app(
            pg.superuser_dsn, app_password=upstream_password, tenants=DEMO_TENANTS))
        config = demo_config(pg.host, pg.port, port)

        def ready(_app: object) -> None:
            print(f"\npgtenant is listening on 127.0.0.1:{port} (transaction pooling), "
                  f"PostgreSQL {pg.host}:{pg.port}.\nEach tenant sees only its own rows of "
                  "table items. Paste one of these:\n")
            for tenant in DEMO_TENANTS:
                token = mint_token(jwt_secret, tenant, ttl_seconds=24 * 3600)
                url = f"postgresql://{tenant}-user:{token}@127.0.0.1:{port}/app?sslmode=disable"
                print(f"  # tenant {tenant}\n  psql {shlex.quote(url)} -c 'SELECT * FROM items'\n")
            print("Ctrl-C stops the proxy and deletes the database.", flush=True)

        return await serve(config, ready)
    finally:
        await loop.run_in_executor(None, pg.close)
