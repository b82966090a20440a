"""The proof that makes the tenant context unforgeable inside PostgreSQL.

The proxy sets two settings on each server connection it leases: ``app.current_tenant``
and ``pgtenant.proof = compute_proof(key, tenant, backend_pid)``. The SQL function
``pgtenant.current_tenant()`` (see ``policies/sql/install.sql``) recomputes the same HMAC
with the keys only its owner can read and returns the tenant only when they agree. A
client that sets ``app.current_tenant`` itself cannot produce the proof, and a proof
copied from another server connection names another backend pid.
"""

from __future__ import annotations

import hashlib
import hmac

#: The statement the proxy sends (with two bind parameters: tenant, proof) on each lease.
SET_CONTEXT_SQL = (
    "SELECT set_config('app.current_tenant', $1, false), set_config('pgtenant.proof', $2, false)"
)


def proof_message(tenant: str, backend_pid: int) -> bytes:
    """The bytes that are signed: ``tenant || ':' || backend_pid`` in UTF-8."""
    return f"{tenant}:{backend_pid}".encode()


def compute_proof(key: bytes, tenant: str, backend_pid: int) -> str:
    """HMAC-SHA256(key, ``tenant:backend_pid``) as 64 lower-case hex digits.

    ``key`` is the secret stored with ``pgtenant policies set-key`` (the UTF-8 bytes of
    the environment variable's value); ``backend_pid`` is the server connection's
    process id (``BackendKeyData``). This is exactly what ``pgtenant.current_tenant()``
    expects in ``pgtenant.proof``.
    """
    return hmac.new(key, proof_message(tenant, backend_pid), hashlib.sha256).hexdigest()


def key_id_for(key: bytes) -> str:
    """A stable, non-secret name for a key: 12 hex digits of a domain-separated SHA-256."""
    return hashlib.sha256(b"pgtenant-key-id\x00" + key).hexdigest()[:12]
