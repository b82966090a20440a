"""The TOML the config tests start from, and how they read a refusal (the loader is the
``config_file`` fixture, tests/unit/conftest.py)."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError

# The smallest valid config: an HS256 secret source and one database.
MINIMAL = """
[auth.jwt]
secret_env = "PGTENANT_JWT_SECRET"

[databases.app]
"""


def error_for(load, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)
