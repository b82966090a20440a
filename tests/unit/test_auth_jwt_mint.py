"""mint_token: the tokens pgtenant makes itself carry the standard claims and are signed."""

from __future__ import annotations

import jwt as pyjwt
import pytest

from proxy.auth.jwt import mint_token
from tests.unit.jwt_tokens import SECRET

# --------------------------------------------------------------------- mint_token


def test_mint_token_sets_the_standard_claims() -> None:
    token = mint_token(
        SECRET, "acme", subject="svc", issuer="iss", audience="aud", key_id="k1",
        extra={"role": "reader"},
    )
    assert pyjwt.get_unverified_header(token)["kid"] == "k1"
    decoded = pyjwt.decode(token, SECRET, algorithms=["HS256"], audience="aud")
    assert decoded["tenant_id"] == "acme"
    assert (decoded["sub"], decoded["iss"], decoded["role"]) == ("svc", "iss", "reader")
    assert decoded["exp"] - decoded["iat"] == 3600


@pytest.mark.parametrize("algorithm", ["none", "NONE"])
def test_mint_token_refuses_unsigned_tokens(algorithm: str) -> None:
    with pytest.raises(ValueError, match="none"):
        mint_token(SECRET, "acme", algorithm=algorithm)


def test_mint_token_refuses_a_short_hmac_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_token("short", "acme")
