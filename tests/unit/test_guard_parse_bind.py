"""The SQL guard on the extended protocol: a Parse that writes the tenant setting from a
parameter gives a rule, and the Bind's value is judged by it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.guard import BindRule, Param, Refusal
from tests.unit.guard_verdicts import GUARD, OWN

PARAM_SQL = "SELECT set_config('app.current_tenant', $1, false)"


def rule_for(sql: str = PARAM_SQL, tenant: str | None = OWN,
             types: tuple[int, ...] = ()) -> BindRule:
    rule = GUARD.check_parse(sql, tenant, types)
    assert isinstance(rule, BindRule), rule
    return rule


def test_parse_with_tenant_parameter_gives_a_bind_rule() -> None:
    rule = rule_for()
    assert rule.tenant == OWN
    assert rule.writes[0].value == Param(0)


@pytest.mark.parametrize("formats", [[], [0], [1], [0, 0]])
def test_bind_of_own_tenant_is_allowed(formats: list[int]) -> None:
    params: list[bytes | None] = [b"acme", b"x"] if len(formats) == 2 else [b"acme"]
    assert GUARD.check_bind(rule_for(), params, formats) is None


@pytest.mark.parametrize(("params", "formats"), [
    ([b"globex"], []),
    ([b"globex"], [1]),
    ([b"acme "], []),
    ([b"ACME"], []),
    ([None], []),
    ([b"\xff"], []),
    ([], []),
    ([b"acme"], [2]),
])
def test_bind_of_anything_else_is_refused(params: list[bytes | None], formats: list[int]
                                          ) -> None:
    verdict = GUARD.check_bind(rule_for(), params, formats)
    assert isinstance(verdict, Refusal)
    assert verdict.kind == "set_config"


def test_bind_rule_variants() -> None:
    cast = rule_for("SELECT set_config('app.current_tenant', $1::text, true)")
    assert GUARD.check_bind(cast, [b"acme"], []) is None
    named = rule_for("SELECT set_config($1, $2, false)")
    assert GUARD.check_bind(named, [b"app.current_tenant", b"acme"], []) is None
    assert GUARD.check_bind(named, [b"search_path", b"public"], []) is None
    assert isinstance(GUARD.check_bind(named, [b"App.Current_Tenant", b"globex"], []), Refusal)
    assert isinstance(GUARD.check_bind(named, [b"role", b"postgres"], []), Refusal)
    assert GUARD.check_bind(named, [b"role", b"reporting"], []) is None
    assert isinstance(GUARD.check_bind(named, [None, b"acme"], []), Refusal)
    assert isinstance(GUARD.check_bind(named, [b"app.is_admin", b"acme"], []), Refusal)
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('pgtenant.proof', $1, false)", OWN), Refusal)
    second = rule_for("SELECT $1::int, set_config('app.current_tenant', $2, false)")
    assert GUARD.check_bind(second, [b"\x00\x00\x00\x01", b"acme"], [1, 0]) is None
    assert isinstance(GUARD.check_bind(second, [b"1", b"globex"], [0, 0]), Refusal)


def test_parse_refusals() -> None:
    # A parameter type whose cast to text could change the value.
    assert isinstance(GUARD.check_parse(PARAM_SQL, OWN, [16384]), Refusal)
    assert isinstance(rule_for(types=(25,)), BindRule)
    # Bypass identity: no own tenant, so no value can be bound.
    assert isinstance(GUARD.check_parse(PARAM_SQL, None), Refusal)
    # A parameter whose value is then changed is not the bound value.
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('app.current_tenant', $1 || 'x', false)", OWN), Refusal)
    assert isinstance(GUARD.check_parse(
        "SELECT set_config('app.current_tenant', 'globex', false)", OWN), Refusal)
    assert GUARD.check_parse(
        "SELECT set_config('app.current_tenant', 'acme', false)", OWN) is None
    # A parameter of a function body is not the Bind's parameter.
    assert isinstance(GUARD.check_parse(
        "DO $$ BEGIN PERFORM set_config('app.current_tenant', $1, false); END $$", OWN),
        Refusal)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=3),
       st.lists(st.integers(-2, 3), max_size=3))
def test_random_binds_always_get_a_verdict(params: list[bytes | None], formats: list[int]
                                           ) -> None:
    rule = rule_for("SELECT set_config($1, $2, false)")
    verdict = GUARD.check_bind(rule, params, formats)
    assert verdict is None or isinstance(verdict, Refusal)
