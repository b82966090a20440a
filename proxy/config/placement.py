"""``[placement.NAME]``: the clusters (database entries) behind one client-facing database
name, read and validated here; the routing itself is ``proxy.placement``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.config.model import DatabaseConfig, Placement

#: Registry status of a tenant being moved between clusters (``pgtenant tenants move``).
MOVING = "moving"

_KEYS = frozenset({"entries", "registry", "default", "tenants"})


def read_placements(section: object, databases: Mapping[str, DatabaseConfig],
                    tenant_pattern: str) -> dict[str, Placement]:
    """Validate the ``[placement]`` TOML table; ValueError names the dotted key."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError("placement: expected a table of [placement.NAME] tables")
    placements: dict[str, Placement] = {}
    owner: dict[str, str] = {}  # entry -> the placement it belongs to
    for name, table in section.items():
        placement = _read_placement(name, table, databases, tenant_pattern)
        for entry in placement.entries:
            if entry in owner:
                raise ValueError(f"placement.{name}.entries: {entry!r} already serves "
                                 f"placement {owner[entry]!r}; an entry serves one name")
            owner[entry] = name
        placements[name] = placement
    for name in placements:
        if name in owner and owner[name] != name:
            raise ValueError(f"placement.{name}: {name!r} is an entry of placement "
                             f"{owner[name]!r}")
    return placements


def _read_placement(name: str, table: object, databases: Mapping[str, DatabaseConfig],
                    tenant_pattern: str) -> Placement:
    where = f"placement.{name}"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key")
    if name.lower() == "pgtenant":
        raise ValueError(f"{where}: the name 'pgtenant' is reserved for the admin console")
    entries = table.get("entries")
    if (not isinstance(entries, list) or not entries
            or not all(isinstance(e, str) for e in entries)):
        raise ValueError(f"{where}.entries: expected a non-empty array of [databases] names")
    for i, entry in enumerate(entries):
        if entry not in databases:
            raise ValueError(f"{where}.entries[{i}]: {entry!r} is not a [databases] entry")
    if name in databases and name not in entries:
        raise ValueError(f"{where}.entries: [databases.{name}] has the placement's name, so "
                         "it must be one of its entries")
    modes = {databases[e].pool_mode for e in entries}
    if len(modes) > 1:
        # A client's pool mode is fixed at startup, before its tenant (and entry) is known.
        raise ValueError(f"{where}.entries: every entry needs the same pool_mode, got "
                         f"{', '.join(sorted(modes))}")
    default = table.get("default", name if name in entries else None)
    if default is None:
        raise ValueError(f"{where}.default: required when {name!r} is not one of entries")
    if default not in entries:
        raise ValueError(f"{where}.default: {default!r} is not one of entries")
    registry = table.get("registry")
    if registry is not None and registry not in databases:
        raise ValueError(f"{where}.registry: {registry!r} is not a [databases] entry")
    tenants = table.get("tenants", {})
    if not isinstance(tenants, dict):
        raise ValueError(f"{where}.tenants: expected a table of tenant = \"entry\"")
    for tenant, entry in tenants.items():
        if not re.fullmatch(tenant_pattern, tenant):
            raise ValueError(f"{where}.tenants.{tenant}: does not match tenancy.tenant_pattern")
        if entry not in entries:
            raise ValueError(f"{where}.tenants.{tenant}: {entry!r} is not one of entries")
    return Placement(name=name, entries=tuple(dict.fromkeys(entries)), default=default,
                     registry=registry, tenants=dict(tenants))
