"""pgJDBC through pgtenant: prepareThreshold crossing to named statements, batches,
fetchSize portals, CopyManager, Statement.cancel() and setQueryTimeout.

The scenarios live in jdbc/DriverScenarios.java, compiled here against Debian's pgJDBC
jar, which `./dev test` fetches (tests/drivers/toolchains.py). Without a JDK they skip
with what to install, and fail in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.drivers import toolchains
from tests.drivers.tenancy import SEED_ROWS, TENANTS
from tests.proxy_harness import ThreadedProxy, token
from tests.support import run

SOURCE = Path(__file__).parent / "jdbc" / "DriverScenarios.java"


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DriverScenarios compiled into a temporary directory, plus the driver's jar."""
    javac, _, jar = toolchains.jdk_and_jar()
    classes = tmp_path_factory.mktemp("jdbc")
    run([javac, "-d", str(classes), "-cp", str(jar), str(SOURCE)], timeout=120)
    return f"{classes}{os.pathsep}{jar}"


def scenario(proxy: ThreadedProxy, classpath: str, name: str) -> dict[str, str]:
    """Run one scenario against ``proxy``; the ``key=value`` lines it printed."""
    env = {**os.environ, "PGTENANT_PORT": str(proxy.port),
           **{f"PGTENANT_TOKEN_{t.upper()}": token(t) for t in TENANTS}}
    _, java, _ = toolchains.jdk_and_jar()
    done = run([java, "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", classpath,
                "DriverScenarios", name], env=env, timeout=60)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def view(tenant: str, rows: int = SEED_ROWS) -> str:
    return f"{tenant}|{tenant}|{rows}"


def test_statements_and_writes_stay_in_the_tenant(driver_proxy: ThreadedProxy,
                                                  classpath: str) -> None:
    out = scenario(driver_proxy, classpath, "isolation")
    for tenant in TENANTS:
        assert out[f"{tenant}.updated"] == str(SEED_ROWS + 1)
        assert out[f"{tenant}.foreign"] == "0"
        assert out[f"{tenant}.planted"] == "42501"
        assert out[f"{tenant}.after"] == view(tenant, SEED_ROWS + 1)


def test_prepare_threshold_crossing_to_named_statements(driver_proxy: ThreadedProxy,
                                                        classpath: str, pool_mode: str) -> None:
    out = scenario(driver_proxy, classpath, "prepared")
    for client, tenant in enumerate(["acme", "globex", "acme", "globex"]):
        for run_ in range(10):
            assert out[f"client{client}.run{run_}"] == " ".join(
                [f"{tenant}:{tenant}:{run_}"] * SEED_ROWS)
        # Unnamed for the first two executions, a named S_n statement from the third on
        # (the flag, read after each execution, is about the next one).
        server_prepared = [out[f"client{client}.serverPrepared{r}"] for r in range(10)]
        assert server_prepared == ["false"] + ["true"] * 9
        assert out[f"client{client}.after"] == view(tenant)
    assert out["client0.serverStatements"] == "42501"  # pg_prepared_statements: refused
    assert out["client0.afterRefusal"] == view("acme")


def test_batches(driver_proxy: ThreadedProxy, classpath: str) -> None:
    out = scenario(driver_proxy, classpath, "batch")
    assert out["inserted"] == "20"
    assert out["updated"] == f"[0, {SEED_ROWS + 20}]"  # acme's rows are invisible
    assert out["failedBatch"].startswith("22012")      # division by zero
    # pgJDBC sends an autocommit batch as one implicit transaction: nothing of it stays.
    assert out["after"] == view("globex", SEED_ROWS + 20)


def test_fetch_size_portal_inside_a_transaction(driver_proxy: ThreadedProxy,
                                                classpath: str) -> None:
    out = scenario(driver_proxy, classpath, "fetchSize")
    assert out["rows"] == str(SEED_ROWS * 5)
    assert out["tenants"] == "acme"
    assert out["after"] == view("acme")
    between = [value for key, value in out.items() if key.startswith("other.between")]
    assert len(between) == 4 and set(between) == {view("globex")}


def test_copy_manager(driver_proxy: ThreadedProxy, classpath: str) -> None:
    out = scenario(driver_proxy, classpath, "copy")
    assert out["copiedOut"] == str(SEED_ROWS)
    assert sorted(out["text"].split(",")) == [f"acme:acme-item-{n}" for n in (1, 2, 3)]
    assert out["refused"] == "0A000"  # COPY FROM not supported with row-level security
    assert out["copiedIn"] == out["loaded"] == "40"
    assert out["after"] == view("acme", SEED_ROWS + 40)


def test_cancel_and_query_timeout(driver_proxy: ThreadedProxy, classpath: str) -> None:
    out = scenario(driver_proxy, classpath, "cancel")
    assert out["cancelled"] == "57014" and int(out["cancelMs"]) < 10_000
    assert out["afterCancel"] == view("acme")
    assert out["other"] == "slept"  # globex's query on another server was not cancelled
    assert out["timedOut"] == "57014" and int(out["timeoutMs"]) < 10_000
    assert out["afterTimeout"] == view("acme")
