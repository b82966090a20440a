"""Which settings a client may write, and to what: the one place that decides.

Settings fall into four classes:

- protected: the tenant setting and every name under ``protected_prefixes`` (prefix
  match, case-insensitive, as PostgreSQL compares setting names). A session may set the
  tenant setting only to its own tenant, and other protected settings to nothing (their
  values are not the client's to choose: a tenant named "true" must not be able to set
  ``app.is_admin`` to its own name); nothing may store a protected value anywhere it
  outlives the statement (role, database, function, view). RESET and DEFAULT are fine.
- role: ``role`` and ``session_authorization``; only to a role in ``allowed_roles``,
  or back to the default (``NONE``, ``DEFAULT``, ``RESET``).
- parser: ``standard_conforming_strings`` and ``client_encoding``. Changing them changes
  how PostgreSQL reads string literals and bytes, so the text the guard parsed would no
  longer be the statement the server runs; only the values the guard assumes are allowed.
- ordinary: everything else (``search_path``, ``TimeZone``, ...): no opinion.
"""

from __future__ import annotations

import enum
import re

from proxy.config import TenancyConfig
from proxy.guard.verdict import Param, Refusal, SettingValue, Special

ROLE_SETTINGS = frozenset({"role", "session_authorization"})
#: Client encodings in which every byte below 0x80 is the ASCII character it looks like
#: (PostgreSQL's server encodings, by every name PostgreSQL accepts, cleaned as it cleans
#: them: lower case, letters and digits only). Quotes, backslashes, semicolons and keywords
#: then mean the same to the guard and to the server, whichever of these is in force.
ASCII_SAFE_ENCODINGS = frozenset({
    "utf8", "unicode", "sqlascii", "euccn", "eucjp", "eucjis2004", "euckr", "euctw",
    "muleinternal", "koi8", "koi8r", "koi8u", "alt", "abc", "tcvn", "tcvn5712", "vscii", "win",
    *(f"latin{n}" for n in range(1, 11)),
    *(f"iso8859{n}" for n in range(1, 17) if n not in (11, 12)),
    *(f"{p}{n}" for p in ("win", "windows") for n in (866, 874, *range(1250, 1259))),
})
#: Client-only encodings: a multibyte character's second byte can be ``\``, ``'`` or a
#: letter, so the same bytes lex differently depending on which encoding is in force.
CLIENT_ONLY_ENCODINGS = frozenset({
    "sjis", "shiftjis", "mskanji", "win932", "windows932", "shiftjis2004", "big5", "win950",
    "windows950", "gbk", "win936", "windows936", "uhc", "win949", "windows949", "johab",
    "gb18030",
})
_SAFE_PARSER_VALUES = {
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
    "client_encoding": ASCII_SAFE_ENCODINGS,
}
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
#: Settings that are not ordinary whatever the configuration.
GUARDED_SETTINGS = ROLE_SETTINGS | frozenset(_SAFE_PARSER_VALUES)


class SettingClass(enum.Enum):
    PROTECTED = "protected"
    ROLE = "role"
    PARSER = "parser"
    ORDINARY = "ordinary"


class Deferred(enum.Enum):
    """The verdict needs the tenant (or bound values): decide later."""

    TENANT = "tenant"


class SettingPolicy:
    """Judges writes of settings for one tenancy configuration."""

    def __init__(self, tenancy: TenancyConfig, allowed_roles: frozenset[str]) -> None:
        self.tenant_setting = tenancy.setting.lower()
        self.prefixes = tuple(p.lower() for p in tenancy.protected_prefixes)
        self.allowed_roles = allowed_roles

    def classify(self, name: str) -> SettingClass:
        """The class of the setting ``name`` (any case, surrounding blanks ignored)."""
        key = name.strip().lower()
        if key == self.tenant_setting or key.startswith(self.prefixes):
            return SettingClass.PROTECTED
        if key in ROLE_SETTINGS:
            return SettingClass.ROLE
        if key in _SAFE_PARSER_VALUES:
            return SettingClass.PARSER
        return SettingClass.ORDINARY

    def judge(
        self,
        via: str,
        name: str,
        value: SettingValue,
        *,
        persistent: bool,
        tenant: str | Deferred | None,
    ) -> Refusal | Deferred | None:
        """Judge one write of ``name`` (a literal name) to ``value``.

        ``persistent`` is true when the write is stored in an object that outlives the
        statement (ALTER ROLE/DATABASE/FUNCTION SET, a function body, a view, ...).
        With ``tenant=Deferred.TENANT`` a write that depends on the tenant or on a bind
        parameter returns ``Deferred.TENANT`` instead of a verdict.
        """
        cls = self.classify(name)
        if cls is SettingClass.ORDINARY:
            return None
        shown = name.strip()
        if cls is SettingClass.PROTECTED:
            if persistent:
                return _persist_refusal(shown)
            if value is Special.DEFAULT:
                return None  # back to the default; the proxy re-establishes the context
            if isinstance(value, Special) or name.strip().lower() != self.tenant_setting:
                # Only the tenant setting has a value of the client's own to re-state.
                return _protected_refusal(via, shown)
            if tenant is Deferred.TENANT:
                return Deferred.TENANT
            if isinstance(value, Param) or tenant is None or value != tenant:
                return _protected_refusal(via, shown)
            return None
        if value is Special.DEFAULT:
            return None
        if cls is SettingClass.PARSER and isinstance(value, Param) \
                and tenant is Deferred.TENANT:
            return Deferred.TENANT  # judged at Bind, with the value
        if cls is SettingClass.ROLE:
            if persistent:
                return _persist_refusal(shown)
            if isinstance(value, str) and (
                value in self.allowed_roles
                or (name.strip().lower() == "role" and value.lower() == "none")
            ):
                return None
            return Refusal(
                kind="set_role",
                message="permission denied to change the session role or authorization "
                "through pgtenant",
                hint="the role comes from your credential; ask for it to be listed in "
                "allowed_roles if it is needed",
            )
        # SettingClass.PARSER: a persisted safe value is as harmless as a session one.
        if isinstance(value, str) and self.is_safe_parser_value(name, value):
            return None
        if isinstance(value, str) and _NOT_ALNUM.sub("", value.lower()) in \
                CLIENT_ONLY_ENCODINGS and shown.lower() == "client_encoding":
            return Refusal(
                kind="parser_state",
                message=f'client_encoding "{value.strip()}" is not supported through pgtenant',
                hint="in this encoding a multibyte character can contain the byte of a quote "
                "or backslash, so the SQL pgtenant inspects could differ from the SQL the "
                "server runs; use UTF8 (or another server encoding)",
            )
        return Refusal(
            kind="parser_state",
            message=f'permission denied to change "{shown}" through pgtenant',
            hint="pgtenant inspects statements with standard_conforming_strings on and an "
            "ASCII-compatible client_encoding",
        )

    @staticmethod
    def is_safe_parser_value(name: str, value: str) -> bool:
        """True when ``value`` keeps the parser setting ``name`` as the guard assumes."""
        safe = _SAFE_PARSER_VALUES[name.strip().lower()]
        key = value.strip().lower()
        if name.strip().lower() == "client_encoding":
            key = _NOT_ALNUM.sub("", key)
        return key in safe


def _protected_refusal(via: str, name: str) -> Refusal:
    how = "set_config() of" if via == "set_config" else "SET of"
    return Refusal(
        kind="set_config" if via == "set_config" else "set_protected",
        message=f'permission denied: {how} protected setting "{name}" to a value other '
        "than your own tenant",
        hint="pgtenant sets this from your credential; you may only re-state your own tenant",
    )


def _persist_refusal(name: str) -> Refusal:
    return Refusal(
        kind="persist_protected",
        message=f'permission denied to store a value for "{name}" in a role, database, '
        "function or other object",
        hint="protected settings may only be set for the current session, to your own tenant",
    )
