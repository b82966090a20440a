"""Typed reading of one TOML table: every error names ``file: dotted.key``.

:class:`TomlTable` refuses unknown keys (suggesting the closest known one) and checks
the type and range of each value it hands out; the section readers build on it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from difflib import get_close_matches
from typing import Any, TypeVar, cast

from proxy.config.model import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_T = TypeVar("_T")


def field_names(cls: type) -> set[str]:
    """The field names of a config dataclass: the keys its TOML table may hold."""
    return {f.name for f in fields(cls)}


def dotted(parts: tuple[str, ...]) -> str:
    """Join key parts as TOML writes them, quoting the ones that are not bare keys."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def show(value: object) -> str:
    """Render a TOML value for an error message, briefly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


class TomlTable:
    """One TOML table being read: typed getters that name ``file: dotted.key``."""

    def __init__(
        self,
        source: str,
        parts: tuple[str, ...],
        data: Mapping[str, Any],
        allowed: set[str] | None,
    ) -> None:
        self.source = source
        self.parts = parts
        self.data = data
        self.read: set[str] = set()
        if allowed is not None:
            # Unknown keys first: a misspelt key is usually why a value looks missing.
            for key in data:
                if key not in allowed:
                    hint = get_close_matches(key, sorted(allowed), n=1)
                    suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
                    raise self.error(key, f"unknown key{suffix}")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(key)}: {message}")

    def key(self, key: str) -> str:
        if key.startswith("["):  # array index: algorithms[1]
            return dotted(self.parts) + key
        name, bracket, index = key.partition("[")
        return dotted((*self.parts, name)) + bracket + index

    def raw(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def table(self, key: str, allowed: set[str] | None) -> TomlTable:
        value = self.raw(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {show(value)}")
        return TomlTable(self.source, (*self.parts, key), value, allowed)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.read:
                raise self.error(key, "unknown key")

    def check(self, value: str, key: str, parse: Callable[[str], object]) -> None:
        try:
            parse(value)
        except ValueError as e:
            raise self.error(key, f"{e}, got {show(value)}") from None

    def _get(self, key: str, default: _T) -> Any:
        value = self.raw(key)
        return default if value is None else value

    def string(self, key: str, default: str, *, allow_empty: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {show(value)}")
        if not value and not allow_empty:
            raise self.error(key, "expected a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.data.get(key) is None:
            self.read.add(key)
            return None
        return self.string(key, "")

    def env_name(self, key: str) -> str | None:
        value = self.optional_string(key)
        if value is not None and not _ENV_NAME.fullmatch(value):
            # Never echo the value: it may be a secret pasted where its name belongs.
            raise self.error(
                key, "expected the name of an environment variable (letters, digits, _), "
                "not the secret itself",
            )
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {show(value)}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        # bool is an int subclass in Python; `pool_size = true` is a mistake, not 1.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < minimum or (maximum is not None and value > maximum):
            expected = (
                f"an integer >= {minimum}" if maximum is None
                else f"an integer between {minimum} and {maximum}"
            )
            raise self.error(key, f"expected {expected}, got {show(value)}")
        return cast(int, value)

    def seconds(self, key: str, default: float) -> float:
        value = self._get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise self.error(key, f"expected a number of seconds >= 0, got {show(value)}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            raise self.error(key, f"expected one of {options}, got {show(value)}")
        return value

    def string_tuple(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, list | tuple):
            raise self.error(key, f"expected an array of strings, got {show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{key}[{i}]", f"expected a non-empty string, got {show(item)}")
        return tuple(value)
