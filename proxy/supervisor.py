"""``[server] workers = N``: one supervisor process, N proxy worker processes.

Every worker is ``pgtenant serve --worker-index i`` (a fresh interpreter: no state is
inherited through fork), a full :class:`~proxy.app.ProxyApp` with its own pools, bound to
the same ``listen`` address with SO_REUSEPORT so the kernel spreads connections over them.

The supervisor
- forwards SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload) to the workers and
  exits 0 once all have exited after a shutdown;
- restarts a worker that dies unexpectedly, after a growing delay (:data:`RESTART_DELAYS`);
  a worker that fails before it ever started (bad config, port taken) stops everything;
- serves ``metrics_listen`` itself, aggregating the workers (:mod:`proxy.metrics.aggregate`);
- runs the admin console's commands that concern every worker (:mod:`proxy.admin.cluster`),
  sent by the console of the worker an admin is connected to; a worker it restarts is
  paused like the others if they are paused.

Workers talk to each other and to the supervisor through Unix sockets in a private
runtime directory (mode 0700): ``metrics-i.sock`` (worker i's operations endpoint),
``control-i.sock`` and ``control.sock`` (the console's control channel, worker i's and
the supervisor's) and ``cancel-i.sock`` (worker i's own listener, which takes the
CancelRequests that the kernel delivered to another worker: the cancel key's process id
names the worker, see :meth:`WorkerRole.owner_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass

from proxy.config import MAX_WORKERS, Config, parse_listen
from proxy.tasks import TaskSet

log = logging.getLogger("pgtenant.supervisor")

# Seconds before restarting a worker that died, by consecutive failures; a worker that
# ran for STABLE_AFTER seconds resets the count.
RESTART_DELAYS = (0.2, 1.0, 2.0, 5.0, 10.0)
STABLE_AFTER = 30.0
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process knows about its place among the others."""

    index: int
    count: int
    runtime_dir: str

    def metrics_socket(self, index: int | None = None) -> str:
        return metrics_socket(self.runtime_dir, self.index if index is None else index)

    def cancel_socket(self, index: int | None = None) -> str:
        return cancel_socket(self.runtime_dir, self.index if index is None else index)

    def control_socket(self, index: int | None = None) -> str:
        return control_socket(self.runtime_dir, self.index if index is None else index)

    def supervisor_socket(self) -> str:
        """Where this worker's admin console sends commands meant for every worker."""
        return supervisor_socket(self.runtime_dir)

    def cancel_pid(self, random_part: int) -> int:
        """A BackendKeyData process id that names this worker in its low bits."""
        return random_part * MAX_WORKERS + self.index

    @staticmethod
    def owner_of(pid: int) -> int:
        """The worker index a cancel key's process id was issued by."""
        return pid % MAX_WORKERS


def metrics_socket(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"metrics-{index}.sock")


def cancel_socket(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"cancel-{index}.sock")


def control_socket(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"control-{index}.sock")


def supervisor_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, "control.sock")


def check_address_free(listen: str) -> None:
    """Raise OSError if something already listens on ``listen``.

    The workers bind with SO_REUSEPORT, which would let them join the listeners of
    another process of the same user (say, a second pgtenant) without an error; a bind
    without it fails when anybody listens there.
    """
    host, port = parse_listen(listen)
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


class Supervisor:
    """Starts, watches and signals the workers of one ``pgtenant serve``."""

    def __init__(self, config: Config, log_level: str | None = None) -> None:
        self.config = config
        self.count = config.server.workers
        self.log_level = log_level
        self.runtime_dir = ""
        self.restarts = 0
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._started: dict[int, bool] = {}
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._startup: list[asyncio.Future[int | None]] = []
        self._tasks = TaskSet()

    # ---- running ------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; the exit status of ``pgtenant serve``."""
        from proxy.admin import control
        from proxy.admin.cluster import ClusterConsole
        from proxy.metrics.aggregate import SupervisorMetricsServer

        check_address_free(self.config.server.listen)
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self.runtime_dir = tempfile.mkdtemp(prefix="pgtenant-")
        os.chmod(self.runtime_dir, 0o700)
        metrics: SupervisorMetricsServer | None = None
        cluster = ClusterConsole(self.worker_control_sockets, self.count, self.request_shutdown)
        console = await control.serve(supervisor_socket(self.runtime_dir), cluster.run)
        self._startup = [loop.create_future() for _ in range(self.count)]
        keepers = [loop.create_task(self._keep(i)) for i in range(self.count)]
        for sig, handler in ((signal.SIGTERM, self.request_shutdown),
                             (signal.SIGINT, self.request_shutdown),
                             (signal.SIGHUP, self.reload)):
            loop.add_signal_handler(sig, handler)
        status = 0
        try:
            startup = await asyncio.gather(*self._startup)
            failed = [code for code in startup if code is not None]
            if failed:
                log.error("a worker failed to start (exit status %s); stopping", failed[0])
                status = failed[0] or 1
                self.request_shutdown()
            else:
                log.info("pgtenant supervisor: %d workers listening on %s", self.count,
                         self.config.server.listen)
                if self.config.server.metrics_listen:
                    metrics = SupervisorMetricsServer(self.worker_metrics_sockets,
                                                      self.count, lambda: self.restarts)
                    await metrics.start(self.config.server.metrics_listen)
            await self._stop_requested.wait()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for keeper in keepers:
                keeper.cancel()
            for proc in self._procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if metrics is not None:
                await metrics.stop()
            console.close()
            self._tasks.cancel_all()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("stopped")
        return status

    def worker_metrics_sockets(self) -> list[tuple[int, str]]:
        """``(index, socket)`` of each worker that has started and still runs."""
        return [(i, metrics_socket(self.runtime_dir, i)) for i in sorted(self._procs)
                if self._started.get(i) and self._procs[i].returncode is None]

    def worker_control_sockets(self) -> list[tuple[int, str]]:
        """``(index, control socket)`` of each worker that has started and still runs."""
        return [(i, control_socket(self.runtime_dir, i)) for i, _ in
                self.worker_metrics_sockets()]

    async def _pause_like_the_others(self, index: int) -> None:
        """A restarted worker pauses the databases the running workers have paused."""
        from proxy.admin import control

        others = [path for i, path in self.worker_control_sockets() if i != index]
        if not others:
            return
        try:
            pools = await control.ask_briefly(others[0], "SHOW POOLS")
            assert pools.columns is not None
            name, paused = pools.columns.index("database"), pools.columns.index("paused")
            for database in sorted({str(r[name]) for r in pools.rows if r[paused] == "yes"}):
                log.info("worker %d restarted while %s is paused: pausing it", index, database)
                await control.ask(control_socket(self.runtime_dir, index), f"PAUSE {database}")
        except Exception as exc:
            log.error("could not pause restarted worker %d like the others: %r", index, exc)

    def request_shutdown(self) -> None:
        """Ask every worker to shut down gracefully (again: to stop waiting)."""
        log.info("shutting down %d workers", len(self._procs))
        self._stopping = True
        assert self._stop_requested is not None
        self._stop_requested.set()
        self._signal_all(signal.SIGTERM)

    def reload(self) -> None:
        """Forward SIGHUP: every worker re-reads the config file."""
        log.info("reload: signalling %d workers", len(self._procs))
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, sig: signal.Signals) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    # ---- one worker ---------------------------------------------------------------------

    async def _keep(self, index: int) -> None:
        """Run worker ``index`` and restart it whenever it dies before a shutdown."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping:
            for path in (metrics_socket(self.runtime_dir, index),
                         cancel_socket(self.runtime_dir, index),
                         control_socket(self.runtime_dir, index)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._started[index] = False
            proc = await self._spawn(index)
            self._procs[index] = proc
            began = loop.time()
            started = await self._wait_started(index, proc)
            first = not self._startup[index].done()
            if first:
                self._startup[index].set_result(None if started else (proc.returncode or 1))
                if not started:
                    return
            elif started:
                self._tasks.spawn(self._pause_like_the_others(index))
            code = await proc.wait()
            if self._stopping:
                if code != 0:
                    log.warning("worker %d exited with status %s during shutdown", index, code)
                return
            failures = 0 if loop.time() - began >= STABLE_AFTER else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1] if failures else 0.0
            log.warning("worker %d (pid %d) exited unexpectedly with status %s; restarting "
                        "in %gs", index, proc.pid, code, delay)
            self.restarts += 1
            assert self._stop_requested is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_requested.wait()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        args = [sys.executable, "-m", "proxy.cli", "serve", "--config", self.config.path,
                "--worker-index", str(index), "--runtime-dir", self.runtime_dir]
        if self.log_level:
            args += ["--log-level", self.log_level]
        return await asyncio.create_subprocess_exec(*args)

    async def _wait_started(self, index: int, proc: asyncio.subprocess.Process) -> bool:
        """True once the worker serves its endpoint (it binds that last), False if it died."""
        path = metrics_socket(self.runtime_dir, index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while proc.returncode is None and loop.time() < deadline:
            if os.path.exists(path):  # noqa: ASYNC240 - one stat of a local tmpfs path
                self._started[index] = True
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await proc.wait()
        if proc.returncode is None:
            log.error("worker %d did not start within %gs", index, STARTUP_TIMEOUT)
            proc.kill()
            await proc.wait()
        return False
