"""Who a client is, once the proxy has proved it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is, as the proxy proved it (verified JWT or static SCRAM user).

    ``tenant`` is the tenant id the server connection is confined to; it is None only
    together with ``bypass_tenancy`` (service accounts for admin, migrations,
    analytics). ``upstream_user`` overrides the database's configured upstream role
    when set. ``expires_at`` is the credential's expiry as a Unix timestamp.
    """

    tenant: str | None
    subject: str | None = None
    bypass_tenancy: bool = False
    upstream_user: str | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        # Fail closed: an identity without a tenant must say so explicitly, or a bug
        # upstream could hand out a connection with no tenant context at all.
        if self.tenant is None and not self.bypass_tenancy:
            raise ValueError("an Identity without a tenant must set bypass_tenancy")
