"""PostgreSQL SCRAM-SHA-256 secrets, for static users authenticated by the proxy.

The format is the one PostgreSQL stores in ``pg_authid.rolpassword`` (RFC 5803):
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, all base64 (standard
alphabet, padded). :func:`parse_scram_verifier` returns the tuple a
``scramp.ScramMechanism.make_server`` auth function returns.
"""

from __future__ import annotations

import base64
import os

import scramp

SCRAM_MECHANISM = "SCRAM-SHA-256"
_PREFIX = SCRAM_MECHANISM + "$"
_KEY_BYTES = 32  # SHA-256 output
_DEFAULT_SALT_BYTES = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
_MIN_ITERATIONS = 4096


def make_scram_verifier(password: str, iterations: int = 4096, *, salt: bytes | None = None) -> str:
    """Return the PostgreSQL-format SCRAM-SHA-256 secret for ``password``.

    ``iterations`` must be at least 4096 (PostgreSQL's default, scramp's floor).
    ``salt`` defaults to 16 random bytes (as PostgreSQL); pass one only for tests.
    Raises :class:`ValueError` for too few iterations or a password SASLprep refuses.
    """
    if iterations < _MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {_MIN_ITERATIONS}")
    mechanism = scramp.ScramMechanism(SCRAM_MECHANISM)
    try:
        salt_bytes, stored_key, server_key, count = mechanism.make_auth_info(
            password,
            iteration_count=iterations,
            salt=os.urandom(_DEFAULT_SALT_BYTES) if salt is None else salt,
        )
    except scramp.ScramException:
        raise ValueError("the password cannot be prepared for SCRAM (SASLprep)") from None
    b64 = base64.b64encode
    return (
        f"{_PREFIX}{count}:{b64(salt_bytes).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def parse_scram_verifier(s: str) -> tuple[bytes, bytes, bytes, int]:
    """Split a PostgreSQL SCRAM-SHA-256 secret into ``(salt, stored_key, server_key, iterations)``.

    Raises :class:`ValueError` (without echoing the input) if it is not one.
    """
    if not s.startswith(_PREFIX):
        raise ValueError("not a SCRAM-SHA-256 secret (expected 'SCRAM-SHA-256$...')")
    try:
        params, keys = s[len(_PREFIX) :].split("$")
        count_text, salt_text = params.split(":")
        stored_text, server_text = keys.split(":")
        salt = base64.b64decode(salt_text, validate=True)
        stored_key = base64.b64decode(stored_text, validate=True)
        server_key = base64.b64decode(server_text, validate=True)
    except ValueError:  # includes binascii.Error
        raise ValueError("malformed SCRAM-SHA-256 secret") from None
    if not count_text.isascii() or not count_text.isdigit() or int(count_text) < 1:
        raise ValueError("malformed SCRAM-SHA-256 secret: bad iteration count")
    if not salt or len(stored_key) != _KEY_BYTES or len(server_key) != _KEY_BYTES:
        raise ValueError("malformed SCRAM-SHA-256 secret: bad salt or key length")
    return salt, stored_key, server_key, int(count_text)

