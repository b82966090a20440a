"""node-postgres (pg, pg-copy-streams) through pgtenant: simple and extended queries,
named statements, pipeline mode, pg.Pool, COPY, cancel and statement_timeout.

The scenarios live in node/scenarios.js; `./dev test` installs their packages with
`npm ci` (tests/drivers/toolchains.py). Without Node.js they skip with what to install,
and fail in CI.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.drivers import toolchains
from tests.drivers.tenancy import SEED_ROWS, TENANTS
from tests.proxy_harness import ThreadedProxy, token
from tests.support import run


def scenario(proxy: ThreadedProxy, name: str) -> Any:
    """Run ``node scenarios.js NAME`` against ``proxy``; the JSON it printed."""
    node = toolchains.node()
    env = {**os.environ, "PGTENANT_PORT": str(proxy.port),
           **{f"PGTENANT_TOKEN_{t.upper()}": token(t) for t in TENANTS}}
    done = run([node, "--no-deprecation", "scenarios.js", name], cwd=toolchains.NODE_DIR,
               env=env, timeout=60)
    return json.loads(done.stdout)


def view(tenant: str, rows: int = SEED_ROWS) -> dict[str, Any]:
    return {"setting": tenant, "tenants": tenant, "rows": rows}


def test_simple_and_extended_queries_stay_in_the_tenant(driver_proxy: ThreadedProxy) -> None:
    out = scenario(driver_proxy, "isolation")
    for tenant in TENANTS:
        assert out[tenant]["updated"] == SEED_ROWS + 2
        assert out[tenant]["foreign"] == 0
        assert out[tenant]["planted"]["code"] == "42501"  # the policy's WITH CHECK
        assert out[tenant]["after"] == view(tenant, SEED_ROWS + 2)


def test_named_statements_shared_names_across_clients(driver_proxy: ThreadedProxy) -> None:
    for client in scenario(driver_proxy, "named"):
        tenant = client["tenant"]
        for round_, seen in enumerate(client["seen"]):
            assert seen["rows"] == [{"setting": tenant, "tenant_id": tenant, "round": round_}
                                    ] * SEED_ROWS
            assert seen["count"] == SEED_ROWS


def test_pipeline_mode(driver_proxy: ThreadedProxy) -> None:
    out = scenario(driver_proxy, "pipeline")
    for tenant in TENANTS:
        assert out[tenant] == {"inserted": [tenant] * 10, "after": view(tenant, SEED_ROWS + 10)}


def test_pool_clients_keep_their_tenant(driver_proxy: ThreadedProxy) -> None:
    out = scenario(driver_proxy, "pool")
    for tenant in TENANTS:
        assert out[tenant] == {"seen": [tenant] * 8, "after": view(tenant, SEED_ROWS + 8)}


def test_copy_to_stream_and_staged_copy_from(driver_proxy: ThreadedProxy) -> None:
    out = scenario(driver_proxy, "copy")
    assert sorted(out["lines"]) == [f"globex\tglobex-item-{n}" for n in (1, 2, 3)]
    assert out["refused"]["code"] == "0A000"  # COPY FROM not supported with RLS
    assert out["loaded"] == 25
    assert out["after"] == view("globex", SEED_ROWS + 25)


def test_cancel_and_statement_timeout(driver_proxy: ThreadedProxy) -> None:
    out = scenario(driver_proxy, "cancel")
    assert out["cancelled"]["code"] == "57014" and out["cancelMs"] < 10_000
    assert out["afterCancel"] == view("acme")
    assert out["othersResult"] is True  # globex's query ran on undisturbed
    assert out["timedOut"]["code"] == "57014" and out["timedOut"]["ms"] < 10_000
    assert out["timedOut"]["after"] == view("acme")
