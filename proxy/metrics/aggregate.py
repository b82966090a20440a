"""The supervisor's operations endpoint with ``[server] workers`` > 1.

Each worker serves its own ``/metrics`` and ``/readyz`` on a Unix socket in the
supervisor's runtime directory; the supervisor's endpoint on ``metrics_listen`` asks all
of them, adds a ``worker="i"`` label to every sample of worker i, and adds its own
``pgtenant_workers`` and ``pgtenant_worker_restarts_total``. ``/healthz`` answers while the
supervisor runs; ``/readyz`` is ready when every worker says it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from proxy.metrics.http import _TEXT, HttpEndpoint

WORKER_TIMEOUT = 2.0  # seconds a worker gets to answer the supervisor


async def unix_http_get(path: str, target: str) -> tuple[int, str]:
    """GET ``target`` from the HTTP server on Unix socket ``path``: ``(status, body)``."""
    async with asyncio.timeout(WORKER_TIMEOUT):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: worker\r\n"
                         "Connection: close\r\n\r\n".encode("ascii"))
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError("malformed HTTP response")
    return int(status_line[1]), body.decode("utf-8", "replace")


def merge_worker_metrics(texts: Sequence[tuple[int, str]]) -> list[Metric]:
    """Families from every worker's exposition text, each sample labelled with its worker."""
    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "worker": str(worker)},
                                  sample.value, sample.timestamp)
    return list(families.values())


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class SupervisorMetricsServer(HttpEndpoint):
    """``/metrics``, ``/healthz``, ``/readyz`` over all workers of a supervisor.

    ``sockets()`` gives ``(worker index, metrics socket path)`` of the workers running now;
    ``expected`` is how many there should be; ``restarts()`` the restart count so far.
    """

    def __init__(self, sockets: Callable[[], list[tuple[int, str]]], expected: int,
                 restarts: Callable[[], int]) -> None:
        super().__init__()
        self.sockets = sockets
        self.expected = expected
        self.restarts = restarts

    async def respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        workers = self.sockets()
        answers = await asyncio.gather(*(unix_http_get(sock, path) for _, sock in workers),
                                       return_exceptions=True)
        if path == "/readyz":
            reasons = []
            for (index, _), answer in zip(workers, answers, strict=True):
                if isinstance(answer, BaseException):
                    reasons.append(f"worker {index}: no answer ({answer!r})")
                elif answer[0] != 200:
                    reasons.append(f"worker {index}: {answer[1].strip()}")
            if len(workers) < self.expected:
                reasons.append(f"{len(workers)} of {self.expected} workers running")
            if reasons:
                return 503, _TEXT, ("not ready: " + "; ".join(reasons) + "\n").encode()
            return 200, _TEXT, b"ready\n"
        texts = [(index, answer[1]) for (index, _), answer in zip(workers, answers, strict=True)
                 if not isinstance(answer, BaseException) and answer[0] == 200]
        metrics = merge_worker_metrics(texts)
        running = GaugeMetricFamily("pgtenant_workers",
                                    "Worker processes answering the supervisor.",
                                    value=len(texts))
        restarts = CounterMetricFamily("pgtenant_worker_restarts",
                                       "Workers restarted after dying unexpectedly.",
                                       value=self.restarts())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([*metrics, running, restarts]))
        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(registry)
