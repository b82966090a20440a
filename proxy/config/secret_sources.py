"""Secrets named by the config: ``*_env`` (an environment variable) or ``*_file`` (a file).

Secrets are never inline in the TOML and never read while loading it; the components
that need one call :func:`resolve_secret` when they start (and on reload).
"""

from __future__ import annotations

import os

from proxy.config.model import ConfigError


def resolve_secret(env: str | None, file: str | None, what: str) -> str | None:
    """Read a secret from the environment variable ``env`` or the file ``file``.

    ``what`` is the dotted key the secret belongs to without its ``_env``/``_file``
    suffix (``"auth.jwt.secret"``, ``"databases.app.password"``); error messages name
    ``what_env`` or ``what_file``, never the secret itself. One trailing newline is
    stripped from a file, because editors and ``echo`` add one. Returns None when
    neither source is configured.
    """
    if env is not None and file is not None:
        raise ConfigError(f"{what}_env and {what}_file: set one, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{what}_env: environment variable {env} is not set or is empty")
        return value
    if file is not None:
        try:
            with open(file, encoding="utf-8", newline="") as f:
                value = f.read()
        except OSError as e:
            raise ConfigError(f"{what}_file: cannot read {file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what}_file: {file} is not UTF-8 text") from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        if not value:
            raise ConfigError(f"{what}_file: {file} is empty")
        return value
    return None
