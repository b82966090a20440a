"""Fixtures of the unit tests: a config file loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, load_config


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write TOML to ./config.toml in a temp dir and return a loader for it."""
    monkeypatch.chdir(tmp_path)

    def load(text: str) -> Config:
        Path("config.toml").write_text(text, encoding="utf-8")
        return load_config("config.toml")

    return load
