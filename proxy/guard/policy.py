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
_SAFE_PARSER_VALUES = {
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
    "client_encoding": frozenset({"utf8", "unicode"}),
}
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
#: Settings that are not ordinary whatever the configuration.
GUARDED_SETTINGS = ROLE_SETTINGS | _SAFE_PARSER_VALUES.keys()


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
        return Refusal(
            kind="parser_state",
            message=f'permission denied to change "{shown}" through pgtenant',
            hint="pgtenant inspects statements as UTF-8 with standard_conforming_strings on",
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
