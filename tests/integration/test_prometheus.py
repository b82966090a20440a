"""deploy/: the alert rules and the Grafana dashboard, checked by a real Prometheus.

promtool checks and unit-tests the rules (deploy/prometheus/alerts_test.yml has a test
for every alert). Then a Prometheus server scrapes a pgtenant under load (tenant
traffic, waits for the one server connection, a guard refusal, a failed login) and
every expression of every dashboard panel is evaluated through Prometheus's HTTP API:
each must return data.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.proxy_harness import ThreadedProxy, make_config, startup_refusal, stop_process
from tests.support import AppDatabase, free_port, require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "pgtenant.json"


#: The tests that run promtool or a Prometheus server (Debian package prometheus).
needs_prometheus = pytest.mark.requires_programs("prometheus", "prometheus", "promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@needs_prometheus
def test_alert_rules_are_valid(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_prometheus
def test_every_alert_has_a_passing_unit_test(promtool: str) -> None:
    rules = ALERTS.read_text()
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    names = [line.split(":", 1)[1].strip() for line in rules.splitlines()
             if line.strip().startswith("- alert:")]
    assert names and all(f"alertname: {name}" in tests for name in names)
    done = subprocess.run([promtool, "test", "rules", "alerts_test.yml"],
                          cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"]
            for target in panel["targets"]]


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: pgtenant\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log)

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"Prometheus did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)


def load(proxy: ThreadedProxy, stop: threading.Event) -> None:
    """Tenant traffic with waits (two clients, one server connection), a refusal and a
    failed login, again and again until ``stop``."""
    def sleeper(tenant: str) -> None:
        with psycopg.connect(proxy.dsn(tenant), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT pg_sleep(0.05), count(*) FROM items")

    threads = [threading.Thread(target=sleeper, args=(t,)) for t in ("acme", "globex")]
    for thread in threads:
        thread.start()
    try:
        while not stop.is_set():
            with psycopg.connect(proxy.dsn("acme"), autocommit=True) as conn:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SET app.current_tenant = 'globex'")
            startup_refusal(proxy.dsn("not-a-jwt", raw_token=True))
            stop.wait(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


@pytest.fixture
def scraped(app_db: AppDatabase, tmp_path: Path) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    metrics_port = free_port()
    config = make_config(app_db, pool_mode="transaction", pool_size=1)
    config = dataclasses.replace(config, server=dataclasses.replace(
        config.server, metrics_listen=f"127.0.0.1:{metrics_port}"))
    proxy = ThreadedProxy(config).start()
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(proxy, stop))
    prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{metrics_port}")
    try:
        loader.start()
        prometheus.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # enough samples for rate() over 10 s
            result = prometheus.get("/api/v1/query", query="count_over_time(up[10s])")
            values = [float(r["value"][1]) for r in result["data"]["result"]]
            if values and min(values) >= 8:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("Prometheus did not scrape pgtenant")
        yield prometheus
    finally:
        stop.set()
        loader.join(60)
        prometheus.stop()
        proxy.stop()


@pytest.mark.slow
@needs_prometheus
def test_every_dashboard_panel_returns_data(scraped: Prometheus) -> None:
    empty = []
    for title, expr in dashboard_expressions():
        query = expr.replace("$__rate_interval", "10s").replace("$database", ".*")
        answer = scraped.get("/api/v1/query", query=query)
        assert answer["status"] == "success", (title, answer)
        if not answer["data"]["result"]:
            empty.append(f"{title}: {query}")
    assert empty == []
    up = scraped.get("/api/v1/query", query='up{job="pgtenant"}')["data"]["result"]
    assert [r["value"][1] for r in up] == ["1"]


def test_the_dashboard_is_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "pgtenant"
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "database"}
