"""The SQL guard on what arrives outside a statement: the startup packet's settings, the
client encodings (at startup, in SET and set_config, and bound at Bind), FunctionCall."""

from __future__ import annotations

import pytest

from proxy.guard import FUNCTION_CALL_REFUSAL, BindRule, Refusal
from tests.unit.guard_verdicts import GUARD, OWN


@pytest.mark.parametrize("settings_", [
    {"app.current_tenant": "globex"},
    {"APP.CURRENT_TENANT": "acme"},
    {"pgtenant.proof": "x"},
    {"role": "postgres"},
    {"session_authorization": "postgres"},
    {"client_encoding": "SJIS"},
    {"standard_conforming_strings": "off"},
    {"replication": "database"},
    {"options": "-c app.current_tenant=globex"},
])
def test_startup_settings_refused(settings_: dict[str, str]) -> None:
    verdict = GUARD.check_startup(settings_)
    assert isinstance(verdict, Refusal)
    assert verdict.kind == "startup_option"


def test_startup_settings_allowed() -> None:
    assert GUARD.check_startup({
        "user": "x", "database": "app", "application_name": "psql",
        "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
        "search_path": "public", "replication": "false", "extra_float_digits": "3",
    }) is None


@pytest.mark.parametrize("encoding", ["LATIN9", "latin1", "EUC_JP", "WIN1252", "SQL_ASCII",
                                      "ISO-8859-5", "KOI8-R", "UTF-8", "euc_kr", "MULE_INTERNAL"])
def test_server_encodings_are_accepted_everywhere(encoding: str) -> None:
    assert GUARD.check_startup({"client_encoding": encoding}) is None
    assert GUARD.check_query(f"SET client_encoding = '{encoding}'", OWN) is None
    assert GUARD.check_query(f"SET NAMES '{encoding}'", OWN) is None
    assert GUARD.check_query(
        f"SELECT set_config('client_encoding', '{encoding}', false)", OWN) is None


@pytest.mark.parametrize("encoding", ["SJIS", "Shift_JIS", "BIG5", "GBK", "UHC", "JOHAB",
                                      "GB18030", "WIN932", "windows-950"])
def test_client_only_encodings_are_refused_with_the_reason(encoding: str) -> None:
    startup = GUARD.check_startup({"client_encoding": encoding})
    assert isinstance(startup, Refusal) and startup.kind == "startup_option"
    assert "not supported through pgtenant" in startup.message
    assert startup.hint is not None and "backslash" in startup.hint
    for sql in (f"SET client_encoding = '{encoding}'",
                f"SELECT set_config('client_encoding', '{encoding}', false)"):
        verdict = GUARD.check_query(sql, OWN)
        assert isinstance(verdict, Refusal) and verdict.kind == "parser_state"


@pytest.mark.parametrize("tenant", [OWN, None])
def test_bound_client_encoding_is_judged_at_bind(tenant: str | None) -> None:
    rule = GUARD.check_parse("SELECT set_config('client_encoding', $1, false)", tenant, [25])
    assert isinstance(rule, BindRule)
    assert GUARD.check_bind(rule, [b"utf8"], []) is None
    assert GUARD.check_bind(rule, [b"LATIN9"], []) is None
    refused_ = GUARD.check_bind(rule, [b"SJIS"], [])
    assert isinstance(refused_, Refusal) and refused_.kind == "parser_state"


def test_function_call_message_refusal() -> None:
    assert FUNCTION_CALL_REFUSAL.kind == "function_call"
    assert FUNCTION_CALL_REFUSAL.sqlstate == "42501"
