"""resolve_secret: a secret from the environment or from a file, never both, and errors
that name the key but never show the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, resolve_secret

SECRET = "correct horse battery staple"


def test_resolve_secret_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGT_TEST_SECRET", SECRET)
    assert resolve_secret("PGT_TEST_SECRET", None, "auth.jwt.secret") == SECRET


@pytest.mark.parametrize("value", [None, ""])
def test_resolve_secret_missing_env_names_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("PGT_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("PGT_TEST_SECRET", value)
    with pytest.raises(ConfigError, match=r"^databases\.app\.password_env: .*not set"):
        resolve_secret("PGT_TEST_SECRET", None, "databases.app.password")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET + "\n", SECRET),
        (SECRET + "\r\n", SECRET),
        (SECRET + "\n\n", SECRET + "\n"),  # only one newline is the editor's
        (SECRET, SECRET),
        (" " + SECRET + " ", " " + SECRET + " "),  # spaces may be part of a secret
    ],
)
def test_resolve_secret_reads_a_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert resolve_secret(None, str(path), "auth.jwt.secret") == expected


def test_resolve_secret_file_problems_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_file: cannot read "):
        resolve_secret(None, str(tmp_path / "missing"), "auth.jwt.secret")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"^auth\.jwt\.secret_file: .* is empty"):
        resolve_secret(None, str(empty), "auth.jwt.secret")


def test_resolve_secret_needs_at_most_one_source(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_secret(None, None, "auth.jwt.secret") is None
    monkeypatch.setenv("PGT_TEST_SECRET", SECRET)
    with pytest.raises(ConfigError, match="not both") as info:
        resolve_secret("PGT_TEST_SECRET", "/dev/null", "auth.jwt.secret")
    assert SECRET not in str(info.value)
