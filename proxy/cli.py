"""The ``pgtenant`` command line: serve, token, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from proxy.config import Config, ConfigError, load_config, resolve_secret
from proxy.logs import setup_logging

if TYPE_CHECKING:
    from proxy.supervisor import WorkerRole

log = logging.getLogger("pgtenant")


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop when installed (measured faster: see DESIGN.md), else the stock loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


async def serve(config: Config, ready: Callable[[Any], None] | None = None,
                worker: WorkerRole | None = None) -> int:
    """Run the proxy until SIGTERM/SIGINT or the console's SHUTDOWN; SIGHUP reloads.

    SIGTERM/SIGINT shut down gracefully (running transactions get [server]
    shutdown_timeout); a second one closes the remaining clients at once. A ``worker``
    takes SIGTERM and SIGHUP from its supervisor (a terminal's Ctrl-C reaches the
    supervisor, which passes it on), and shuts down if the supervisor disappears.
    """
    from proxy.app import ProxyApp
    from proxy.build import describe
    from proxy.metrics.collector import build_version

    log.info("pgtenant %s, %s build", build_version(), describe())
    app = ProxyApp(config, worker)
    await app.start()
    if ready is not None:
        ready(app)
    loop = asyncio.get_running_loop()

    def reload() -> None:
        with contextlib.suppress(ConfigError):  # logged and counted; the old config stays
            app.reload()

    handlers: list[tuple[signal.Signals, Callable[[], None]]] = [
        (signal.SIGTERM, app.request_shutdown), (signal.SIGHUP, reload)]
    if worker is None:
        handlers.append((signal.SIGINT, app.request_shutdown))
    for sig, handler in handlers:
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(sig, handler)
    orphan_watch = (loop.create_task(_shutdown_when_orphaned(app, os.getppid()))
                    if worker is not None else None)
    await app.stopped.wait()
    if orphan_watch is not None:
        orphan_watch.cancel()
    log.info("stopped")
    return 0


async def _shutdown_when_orphaned(app: Any, parent: int) -> None:
    """A worker whose supervisor died (SIGKILL) must not hold the port forever."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on: a reparent is polled
        await asyncio.sleep(1.0)
    log.warning("supervisor (pid %d) is gone: shutting down", parent)
    app.request_shutdown()


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pgtenant: {exc}", file=sys.stderr)
        return 2
    worker: WorkerRole | None = None
    if args.worker_index is not None:
        from proxy.supervisor import WorkerRole

        if not args.runtime_dir or not 0 <= args.worker_index < config.server.workers:
            print("pgtenant: --worker-index needs --runtime-dir and an index below "
                  "[server] workers", file=sys.stderr)
            return 2
        worker = WorkerRole(args.worker_index, config.server.workers, args.runtime_dir)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor passes Ctrl-C on
    setup_logging(args.log_level or config.server.log_level, config.server.log_format,
                  None if worker is None else worker.index)
    try:
        if worker is None and config.server.workers > 1:
            from proxy.supervisor import Supervisor

            return _run(Supervisor(config, args.log_level).run)
        return _run(lambda: serve(config, worker=worker))
    except ConfigError as exc:
        print(f"pgtenant: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pgtenant: cannot listen on {config.server.listen}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1


def _cmd_token(args: argparse.Namespace) -> int:
    from proxy.auth.jwt import mint_token

    secret: str | None = None
    if args.config:
        try:
            jwt_cfg = load_config(args.config).auth.jwt
            secret = resolve_secret(jwt_cfg.secret_env, jwt_cfg.secret_file, "auth.jwt.secret")
        except ConfigError as exc:
            print(f"pgtenant: {exc}", file=sys.stderr)
            return 2
    else:
        secret = os.environ.get(args.secret_env)
    if not secret:
        print(f"pgtenant: no signing secret: set ${args.secret_env} or pass --config",
              file=sys.stderr)
        return 2
    print(mint_token(secret, args.tenant, ttl_seconds=args.ttl, subject=args.subject,
                     tenant_claim=args.tenant_claim))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxy.devtools.demo import run_demo

    setup_logging("warning")
    return _run(lambda: run_demo(serve, port=args.port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgtenant", description=(
        "Transparent PostgreSQL proxy: JWT in, tenant-confined server connection out."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", required=True, help="path to the TOML config file")
    p.add_argument("--log-level", default=None, help="override [server] log_level")
    # Set by the supervisor ([server] workers > 1) on the worker processes it starts.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--runtime-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("token", help="mint a development JWT for a tenant (HS256)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--config", help="take the secret from this config's [auth.jwt]")
    p.add_argument("--secret-env", default="PGTENANT_JWT_SECRET",
                   help="environment variable holding the secret (without --config)")
    p.add_argument("--tenant-claim", default="tenant_id")
    p.add_argument("--subject", default=None)
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("demo", help="start a throwaway PostgreSQL with two demo tenants "
                                    "and the proxy in front of it")
    p.add_argument("--port", type=int, default=6432)
    p.set_defaults(func=_cmd_demo)

    from policies.cli import register as register_policies
    register_policies(sub)  # policies install|set-key|protect|check, tenants ...
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
