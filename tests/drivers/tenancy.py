"""What every driver test asks PostgreSQL to prove it runs as the right tenant."""

from __future__ import annotations

TENANTS = ("acme", "globex")
SEED_ROWS = 3  # per tenant, see proxy.devtools.provisioning.reset_items

# One row: (the tenant setting, the distinct tenant_ids of the visible rows, their count).
WHO_AM_I = ("SELECT current_setting('app.current_tenant'), "
            "string_agg(DISTINCT tenant_id, ','), count(*) FROM items")


def own_view(tenant: str, rows: int = SEED_ROWS) -> tuple[str, str, int]:
    """What ``WHO_AM_I`` returns for ``tenant`` when it sees exactly ``rows`` rows."""
    return (tenant, tenant, rows)
