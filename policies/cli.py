"""``pgtenant policies ...`` and ``pgtenant tenants ...``, hooked into ``proxy.cli``.

Every command connects with ``--dsn`` (or ``$PGTENANT_ADMIN_DSN``) as a privileged role
and runs in one transaction. Exit status: 0 done, 1 ``check`` found problems, 2 error.
Messages never contain the DSN's password or a key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from policies import check, install, move, protect, registry
from policies.catalog import PolicyError
from proxy.config import ConfigError, load_config
from proxy.config.model import Placement

ADMIN_DSN_ENV = "PGTENANT_ADMIN_DSN"
#: ``tenants move``: the admin DSN of entry NAME is in $PGTENANT_ADMIN_DSN_<NAME> (upper
#: case, anything but letters and digits as "_"), e.g. PGTENANT_ADMIN_DSN_APP_EU.
ENTRY_DSN_ENV_PREFIX = ADMIN_DSN_ENV + "_"
EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

Command = Callable[[psycopg.Connection[Any], argparse.Namespace], int]


def register(subparsers: Any) -> None:
    """Add the ``policies`` and ``tenants`` sub-commands to ``pgtenant``'s parser."""
    _register_policies(subparsers)
    _register_tenants(subparsers)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", default=None,
                   help=f"libpq DSN of a privileged role (default: ${ADMIN_DSN_ENV})")


def _app_role_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--app-role", action="append", default=[], metavar="ROLE", help=help_text)


def _register_policies(subparsers: Any) -> None:
    parser = subparsers.add_parser("policies", help="install, protect and audit tenant "
                                                    "isolation in the database")
    sub = parser.add_subparsers(dest="policies_command", required=True)

    p = sub.add_parser("install", help="create schema pgtenant and pgtenant.current_tenant()")
    _connection_args(p)
    _app_role_arg(p, "upstream role of the proxy, granted EXECUTE (repeatable)")
    p.add_argument("--owner-role", default=install.DEFAULT_OWNER_ROLE,
                   help="NOLOGIN role owning schema pgtenant (default: %(default)s)")
    p.add_argument("--create-role", metavar="ROLE", default=None,
                   help="create (or harden) the proxy's upstream role so that "
                        "`policies check` passes; needs a superuser")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--role-password-env", metavar="ENV",
                        help="environment variable holding --create-role's password")
    secret.add_argument("--role-password-file", metavar="PATH",
                        help="file holding --create-role's password (one line)")
    p.set_defaults(func=_runner(_cmd_install))

    p = sub.add_parser("set-key", help="store or rotate the HMAC key of the signed context")
    _connection_args(p)
    p.add_argument("--key-env", required=True, metavar="ENV",
                   help="environment variable holding the key (UTF-8, at least "
                        f"{install.MIN_KEY_BYTES} bytes)")
    p.add_argument("--key-id", default=None, help="name of the key (default: a fingerprint)")
    p.add_argument("--retire-others", action="store_true",
                   help="deactivate every other key (the end of a rotation)")
    p.set_defaults(func=_runner(_cmd_set_key))

    p = sub.add_parser("protect", help="enable and force RLS on a table with a tenant policy")
    _connection_args(p)
    p.add_argument("table", help="table name as in SQL, optionally schema-qualified")
    p.add_argument("--column", default="tenant_id", help="tenant column (default: %(default)s)")
    p.add_argument("--signed", action="store_true",
                   help="compare with pgtenant.current_tenant() (the signed context)")
    p.set_defaults(func=_runner(_cmd_protect))

    p = sub.add_parser("check", help="audit the database; exit 1 when something is found")
    _connection_args(p)
    p.add_argument("--app-role", default=None, metavar="ROLE",
                   help="the proxy's upstream role (enables the role checks)")
    p.add_argument("--column", default="tenant_id", help="tenant column (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fail-on", choices=("warning", "error"), default="warning",
                   help="lowest severity that makes the exit status 1 (default: %(default)s)")
    p.set_defaults(func=_runner(_cmd_check))


def _register_tenants(subparsers: Any) -> None:
    parser = subparsers.add_parser("tenants", help="the tenant registry (pgtenant.tenants)")
    sub = parser.add_subparsers(dest="tenants_command", required=True)

    p = sub.add_parser("create", help="register a tenant, optionally with its own schema")
    _connection_args(p)
    p.add_argument("tenant")
    p.add_argument("--schema", action="store_true", help="create schema tenant_<id>")
    p.add_argument("--migrations", metavar="DIR",
                   help="run DIR/*.sql in name order inside the new schema")
    _app_role_arg(p, "role granted USAGE on the new schema (repeatable)")
    p.add_argument("--placement", metavar="ENTRY", default=None,
                   help="the [databases] entry holding its rows (default: the placement's "
                        "default entry)")
    p.set_defaults(func=_runner(_cmd_tenants_create))

    p = sub.add_parser("list", help="list tenants")
    _connection_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_runner(_cmd_tenants_list))

    for name, status in (("suspend", "suspended"), ("resume", "active")):
        p = sub.add_parser(name, help=f"mark a tenant {status}")
        _connection_args(p)
        p.add_argument("tenant")
        p.set_defaults(func=_runner(_cmd_tenants_status), status=status)

    p = sub.add_parser("delete", help="remove a tenant from the registry")
    _connection_args(p)
    p.add_argument("tenant")
    p.add_argument("--drop-schema", action="store_true",
                   help="also drop its schema and everything in it")
    p.set_defaults(func=_runner(_cmd_tenants_delete))

    p = sub.add_parser("move", help="move a tenant's rows to another cluster of its "
                                    "placement (docs/scale-out.md)")
    p.add_argument("tenant")
    p.add_argument("--to", required=True, metavar="ENTRY",
                   help="the [databases] entry (cluster) to move the tenant to")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the proxies' config: placements, entries, registry_cache_seconds")
    p.add_argument("--placement", default=None, metavar="NAME",
                   help="the [placement.NAME] (default: the one ENTRY belongs to)")
    p.add_argument("--column", default="tenant_id", help="tenant column (default: %(default)s)")
    p.add_argument("--drain-seconds", type=float, default=None, metavar="S",
                   help="wait after marking the tenant moving (default: the config's "
                        "registry_cache_seconds + 5; never less than it)")
    p.add_argument("--lock-timeout", type=float, default=5.0, metavar="S",
                   help="longest wait for open write transactions (default: %(default)s)")
    p.add_argument("--keep-source", action="store_true",
                   help="leave the rows on the old cluster (unreachable through the proxy)")
    p.set_defaults(func=_cmd_tenants_move)


# -- running a command --------------------------------------------------------------------

def _fail(message: str) -> int:
    print(f"pgtenant: {message}", file=sys.stderr)
    return EXIT_ERROR


def _connect(dsn: str) -> psycopg.Connection[Any]:
    """Connect in autocommit mode (commands open their own transaction).

    Raises PolicyError with a message that never contains the password: the DSN is
    parsed first (libpq's syntax errors quote pieces of it), then connection errors are
    scrubbed of the password anyway.
    """
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        raise PolicyError("the DSN is not valid libpq syntax") from None
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                               application_name="pgtenant-policies")
    except psycopg.Error as exc:
        message = str(exc).strip()
        if password:
            message = message.replace(password, "***")
        raise PolicyError(f"cannot connect: {message}") from None


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: connect, run it in one transaction, turn errors into messages."""

    def run(args: argparse.Namespace) -> int:
        dsn = args.dsn or os.environ.get(ADMIN_DSN_ENV)
        if not dsn:
            return _fail(f"no database: pass --dsn or set ${ADMIN_DSN_ENV}")

        def in_transaction() -> int:
            with _connect(dsn) as conn, conn.transaction():
                return command(conn, args)

        return _guarded(in_transaction)

    return run


def _guarded(action: Callable[[], int]) -> int:
    """Run ``action``; turn the errors a user can fix into a message and exit status 2."""
    try:
        return action()
    except PolicyError as exc:
        return _fail(str(exc))
    except psycopg.errors.InsufficientPrivilege as exc:
        return _fail(f"{exc.diag.message_primary} (connect as a more privileged role)")
    except psycopg.Error as exc:
        return _fail(exc.diag.message_primary or str(exc).strip())


# -- the commands -------------------------------------------------------------------------

def _role_password(args: argparse.Namespace) -> str | None:
    """--create-role's password from the environment or a file, never the command line."""
    if args.role_password_env:
        value = os.environ.get(args.role_password_env)
        if not value:
            raise PolicyError(
                f"environment variable {args.role_password_env} is not set or is empty")
        return value
    if args.role_password_file:
        try:
            with open(args.role_password_file, encoding="utf-8") as f:
                value = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read {args.role_password_file}: "
                              f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
        if not value:
            raise PolicyError(f"{args.role_password_file} holds no password")
        return value
    return None


def _cmd_install(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    app_roles: list[str] = list(args.app_role)
    password = _role_password(args)
    if password is not None and args.create_role is None:
        raise PolicyError("--role-password-env/--role-password-file need --create-role")
    if args.create_role is not None:
        created = install.harden_role(conn, args.create_role, password=password,
                                      owner_role=args.owner_role)
        note = "" if password is not None else (
            " (no password: set one or use certificate authentication)" if created
            else " (password unchanged)")
        print(f"{'created' if created else 'hardened'} upstream role {args.create_role}{note}")
        app_roles = list(dict.fromkeys([*app_roles, args.create_role]))
    warnings = install.install(conn, app_roles=app_roles, owner_role=args.owner_role)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.create_role is not None:
        for finding in check.audit_role(conn, args.create_role):
            print(f"warning: still to fix: {finding.code} {finding.object}: "
                  f"{finding.message} ({finding.advice})", file=sys.stderr)
    roles = ", ".join(app_roles) or "no app role (pass --app-role)"
    print(f"installed pgtenant in {conn.info.dbname} (owner {args.owner_role}; "
          f"EXECUTE granted to {roles})")
    if not install.active_key_ids(conn):
        print("next: pgtenant policies set-key --key-env ENV (until then "
              "pgtenant.current_tenant() returns NULL)")
    return EXIT_OK


def _cmd_set_key(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    value = os.environ.get(args.key_env)
    if not value:
        raise PolicyError(f"environment variable {args.key_env} is not set or is empty")
    key_id = install.set_key(conn, value.encode(), key_id=args.key_id,
                             retire_others=args.retire_others)
    print(f"stored key {key_id}; active keys: {', '.join(install.active_key_ids(conn))}")
    return EXIT_OK


def _cmd_protect(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    result = protect.protect(conn, args.table, column=args.column, signed=args.signed)
    if result.changed:
        print(f"protected {result.table} (policy {protect.POLICY_NAME} on {args.column})")
    else:
        print(f"{result.table} is already protected: nothing changed")
    return EXIT_OK


def _cmd_check(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    findings = check.audit(conn, tenant_column=args.column, app_role=args.app_role)
    if args.json:
        print(check.render_json(findings))
    else:
        if args.app_role is None:
            print("note: no --app-role given; the checks about the proxy's role were skipped")
        print(check.render_table(findings), end="")
    return EXIT_FINDINGS if check.exit_status(findings, args.fail_on) else EXIT_OK


def _tenant_dict(tenant: registry.Tenant) -> dict[str, Any]:
    return {"id": tenant.id, "status": tenant.status,
            "created_at": tenant.created_at.isoformat(), "schema_name": tenant.schema_name,
            "placement": tenant.placement}


def _cmd_tenants_create(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    tenant = registry.create_tenant(conn, args.tenant, schema=args.schema,
                                    migrations=args.migrations, app_roles=args.app_role,
                                    placement=args.placement)
    where = f" with schema {tenant.schema_name}" if tenant.schema_name else ""
    where += f" on {tenant.placement}" if tenant.placement else ""
    print(f"created tenant {tenant.id}{where}")
    return EXIT_OK


def _cmd_tenants_list(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    tenants = registry.list_tenants(conn)
    if args.json:
        print(json.dumps([_tenant_dict(t) for t in tenants], indent=2))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "CREATED", "SCHEMA", "PLACEMENT")]
    rows.extend((t.id, t.status, t.created_at.strftime("%Y-%m-%d %H:%M:%S%z"),
                 t.schema_name or "-", t.placement or "-") for t in tenants)
    if not any(t.placement for t in tenants):  # no placement across clusters: as before
        rows = [r[:4] for r in rows]
    last = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    for r in rows:
        print("  ".join([*(r[i].ljust(widths[i]) for i in range(last)), r[last]]))
    return EXIT_OK


def _cmd_tenants_status(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    tenant = registry.set_status(conn, args.tenant, args.status)
    print(f"tenant {tenant.id} is {tenant.status}")
    return EXIT_OK


def _cmd_tenants_delete(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    tenant = registry.delete_tenant(conn, args.tenant, drop_schema=args.drop_schema)
    print(f"deleted tenant {tenant.id}")
    if tenant.schema_name and not args.drop_schema:
        print(f"schema {tenant.schema_name} was kept (pass --drop-schema to drop it)")
    return EXIT_OK


# -- tenants move (policies/move.py) -------------------------------------------------------

def entry_dsn_env(entry: str) -> str:
    """The environment variable holding the admin DSN of [databases] entry ``entry``."""
    return ENTRY_DSN_ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in entry.upper())


def _connect_entry(entry: str) -> psycopg.Connection[Any]:
    variable = entry_dsn_env(entry)
    dsn = os.environ.get(variable)
    if not dsn:
        raise PolicyError(f"no admin DSN for entry {entry}: set ${variable}")
    return _connect(dsn)


def _placement_for(placements: dict[str, Placement], name: str | None, entry: str
                   ) -> Placement:
    if name is not None:
        if name not in placements:
            raise PolicyError(f"the config has no [placement.{name}]")
        return placements[name]
    for placement in placements.values():
        if entry in placement.entries:
            return placement
    raise PolicyError(f"{entry} is not an entry of any [placement.NAME] in the config")


def _cmd_tenants_move(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    cache = config.tenancy.registry_cache_seconds
    drain = cache + 5 if args.drain_seconds is None else args.drain_seconds
    if drain < cache:
        return _fail(f"--drain-seconds {drain:g} is shorter than registry_cache_seconds "
                     f"({cache:g}): a proxy could still route a new login to the old cluster")

    def run() -> int:
        placement = _placement_for(config.placement, args.placement, args.to)
        if placement.registry is None:
            raise PolicyError(f"[placement.{placement.name}] has no registry entry: the "
                              "move records the tenant's new placement there")
        with _connect_entry(placement.registry) as conn:
            result = move.move_tenant(
                conn, _connect_entry, placement, args.tenant, args.to, column=args.column,
                setting=config.tenancy.setting, drain_seconds=drain,
                lock_timeout=args.lock_timeout, keep_source=args.keep_source,
                report=print)
        for table in result.tables:
            stale = f" ({table.stale} stale rows replaced)" if table.stale else ""
            print(f"  {table.name}: {table.rows} rows{stale}")
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        kept = "deleted" if result.source_deleted else "kept (--keep-source)"
        print(f"moved tenant {result.tenant} from {result.source} to {result.destination}; "
              f"rows on {result.source} {kept}")
        return EXIT_OK

    return _guarded(run)
