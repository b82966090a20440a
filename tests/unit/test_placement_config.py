"""``[placement.NAME]``: validation, and which entry a tenant goes to."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.model import Placement
from proxy.placement import PlacementRouter

REPO_ROOT = Path(__file__).resolve().parents[2]

BASE = """
[auth.jwt]
secret_env = "PGTENANT_JWT_SECRET"
[databases.app]
[databases.app_us]
port = 5433
[databases.reporting]
pool_mode = "transaction"
"""


def placements(text: str) -> dict[str, Placement]:
    return parse_config(text + BASE if text.startswith("placement =") else BASE + text,
                        "test.toml").placement


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        placements(text)
    return str(info.value)


def test_no_placement_table_means_no_placement() -> None:
    assert placements("") == {}


def test_a_placement_named_like_an_entry_defaults_to_it() -> None:
    found = placements('[placement.app]\nentries = ["app", "app_us"]\nregistry = "app"\n'
                       '[placement.app.tenants]\nglobex = "app_us"\n')
    assert found == {"app": Placement("app", ("app", "app_us"), "app", "app",
                                      {"globex": "app_us"})}


def test_the_registry_wins_over_the_static_map_which_wins_over_the_default() -> None:
    placement = Placement("app", ("app", "app_us", "app_eu"), "app",
                          tenants={"globex": "app_us"})
    assert placement.entry_for("globex", "app_eu") == "app_eu"
    assert placement.entry_for("globex", None) == "app_us"
    assert placement.entry_for("acme", None) == "app"


@pytest.mark.parametrize(("text", "fragment"), [
    ('[placement.app]\nentries = []', "placement.app.entries: expected a non-empty array"),
    ('[placement.app]\nentries = ["app", "nope"]',
     "placement.app.entries[1]: 'nope' is not a [databases] entry"),
    ('[placement.app]\nentries = ["app_us"]',
     "[databases.app] has the placement's name, so it must be one of its entries"),
    ('[placement.front]\nentries = ["app", "app_us"]',
     "placement.front.default: required when 'front' is not one of entries"),
    ('[placement.front]\nentries = ["app"]\ndefault = "app_us"',
     "placement.front.default: 'app_us' is not one of entries"),
    ('[placement.app]\nentries = ["app", "reporting"]',
     "every entry needs the same pool_mode, got session, transaction"),
    ('[placement.app]\nentries = ["app"]\nregistry = "nope"',
     "placement.app.registry: 'nope' is not a [databases] entry"),
    ('[placement.app]\nentries = ["app"]\n[placement.app.tenants]\nacme = "app_us"',
     "placement.app.tenants.acme: 'app_us' is not one of entries"),
    ('[placement.app]\nentries = ["app"]\n[placement.app.tenants]\n"bad tenant" = "app"',
     "does not match tenancy.tenant_pattern"),
    ('[placement.app]\nentries = ["app"]\nentry = "app"', "placement.app.entry: unknown key"),
    ('[placement.app]\nentries = ["app", "app_us"]\n'
     '[placement.front]\nentries = ["app_us"]\ndefault = "app_us"',
     "'app_us' already serves placement 'app'"),
    ('[placement.pgtenant]\nentries = ["app"]', "reserved for the admin console"),
    ("placement = 1", "placement: expected a table"),
])
def test_bad_placements_are_refused_naming_file_and_key(text: str, fragment: str) -> None:
    message = error_for(text)
    assert message.startswith("test.toml: ") and fragment in message


def test_the_example_config_documents_every_placement_key() -> None:
    text = (REPO_ROOT / "config.example.toml").read_text(encoding="utf-8")
    for f in dataclasses.fields(Placement):
        if f.name != "name":
            assert f"# {f.name} = " in text or f"[placement.app.{f.name}]" in text, f.name


def test_without_placement_the_router_leaves_every_client_where_it_is() -> None:
    config = parse_config(BASE, "test.toml")
    pools = {name: object() for name in config.databases}
    host = SimpleNamespace(config=config, pools=pools)
    router = PlacementRouter(host, lambda db: None, lambda client: None)  # type: ignore[arg-type]
    client = SimpleNamespace(database="app", context=SimpleNamespace(tenant="acme"))
    assert asyncio.run(router.place(client)) is None  # type: ignore[arg-type]
    assert router.front_pool("app") is pools["app"]
    assert router.front_pool("nope") is None


def test_a_placement_name_of_its_own_starts_clients_on_the_default_entry() -> None:
    config = parse_config(BASE + '[placement.front]\nentries = ["app", "app_us"]\n'
                          'default = "app_us"\n', "test.toml")
    pools = {name: object() for name in config.databases}
    host = SimpleNamespace(config=config, pools=pools)
    router = PlacementRouter(host, lambda db: None, lambda client: None)  # type: ignore[arg-type]
    assert router.front_pool("front") is pools["app_us"]
    assert router.placement_of("app") is router.placement_of("front") is not None
    assert router.placement_of("reporting") is None
