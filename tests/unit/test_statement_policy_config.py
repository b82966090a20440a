"""The statement policy's configuration: the keys that relax it, read from the config
file with secure defaults, and documented in config.example.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, TenancyConfig, parse_config
from proxy.guard import Guard, Refusal
from tests.unit.config_text import MINIMAL as CONFIG_BASE
from tests.unit.guard_verdicts import OWN
from tests.unit.policy_guard import MODES

# ---- configuration ---------------------------------------------------------------------

def test_allow_ddl_in_session_mode() -> None:
    guard = Guard(TenancyConfig(allow_ddl_in_session_mode=True))
    for sql in ("CREATE TABLE t (a int)", "CREATE TEMP VIEW v AS SELECT 1",
                "CREATE TEMP TABLE t (a int) INHERITS (items)", "SELECT 1 INTO TEMP t"):
        assert guard.check_query(sql, OWN) is None
        assert isinstance(guard.check_query(sql, OWN, transaction_mode=True), Refusal)
    # Not DDL: still refused, and the setting rules still hold inside DDL.
    for sql in ("TRUNCATE items", "GRANT SELECT ON items TO PUBLIC", "DO $$BEGIN END$$",
                "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS "
                "$$ SELECT set_config('app.current_tenant', 'globex', false) $$",
                "CREATE FUNCTION f() RETURNS bool LANGUAGE sql AS "
                "$$ SELECT pg_terminate_backend(1) $$"):
        assert isinstance(guard.check_query(sql, OWN), Refusal), sql


def test_allow_listen_and_notify() -> None:
    listen = Guard(TenancyConfig(allow_listen_in_session_mode=True))
    assert listen.check_query("LISTEN orders", OWN) is None
    assert isinstance(listen.check_query("LISTEN orders", OWN, transaction_mode=True), Refusal)
    assert isinstance(listen.check_query("NOTIFY orders", OWN), Refusal)
    notify = Guard(TenancyConfig(allow_notify=True))
    for mode in MODES:
        assert notify.check_query("NOTIFY orders, 'x'", OWN, transaction_mode=mode) is None
        assert notify.check_query("SELECT pg_notify('o', 'x')", OWN,
                                  transaction_mode=mode) is None
        assert isinstance(notify.check_query("LISTEN orders", OWN, transaction_mode=mode),
                          Refusal)


def test_allowed_functions() -> None:
    guard = Guard(TenancyConfig(allowed_functions=("pg_advisory_lock", "lo_get")))
    for mode in MODES:
        assert guard.check_query("SELECT pg_advisory_lock(1)", OWN,
                                 transaction_mode=mode) is None
        assert guard.check_query("SELECT lo_get(1)", OWN, transaction_mode=mode) is None
        assert isinstance(guard.check_query("SELECT lo_creat(1)", OWN,
                                            transaction_mode=mode), Refusal)


# ---- configuration file -----------------------------------------------------------------

def test_tenancy_keys_are_read_with_secure_defaults() -> None:
    default = parse_config(CONFIG_BASE).tenancy
    assert (default.allow_ddl_in_session_mode, default.allow_listen_in_session_mode,
            default.allow_notify, default.allowed_functions) == (False, False, False, ())
    tenancy = parse_config(
        "[tenancy]\nallow_ddl_in_session_mode = true\nallow_listen_in_session_mode = true\n"
        "allow_notify = true\nallowed_functions = ['PG_Advisory_Lock', 'lo_get']\n"
        + CONFIG_BASE).tenancy
    assert tenancy.allow_ddl_in_session_mode and tenancy.allow_listen_in_session_mode
    assert tenancy.allow_notify
    assert tenancy.allowed_functions == ("pg_advisory_lock", "lo_get")


@pytest.mark.parametrize(("toml", "key"), [
    ("allow_notify = 'yes'\n", "tenancy.allow_notify"),
    ("allowed_functions = ['pg_catalog.lo_get']\n", "tenancy.allowed_functions[0]"),
    ("allowed_functions = ['lo_get()']\n", "tenancy.allowed_functions[0]"),
    ("allowed_functions = 'lo_get'\n", "tenancy.allowed_functions"),
    ("allow_ddl = true\n", "tenancy.allow_ddl"),
])
def test_bad_tenancy_keys_are_errors_naming_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config("[tenancy]\n" + toml + CONFIG_BASE)


def test_config_example_documents_the_statement_policy_keys() -> None:
    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    for key in ("allow_ddl_in_session_mode", "allow_listen_in_session_mode", "allow_notify",
                "allowed_functions"):
        assert f"# {key} = " in text
