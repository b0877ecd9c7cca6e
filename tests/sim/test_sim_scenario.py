"""Scenario files: the built-ins load, and mistakes are reported with the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from natrelay.adapters.sim.scenario import ScenarioError, builtin_scenarios, load_scenario


@pytest.mark.parametrize("name", ["mesh", "matrix", "steady"])
def test_builtin_scenarios_load(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name and scenario.peers > 0 and len(scenario.relays) == 2


def test_every_builtin_is_listed_and_loads() -> None:
    names = [name for name, _ in builtin_scenarios()]
    assert {"wake", "rebind", "relay-outage", "relay-scarce", "lan", "mesh", "matrix", "steady"} <= set(names)
    scarce = load_scenario("relay-scarce")
    assert sum(relay.capacity for relay in scarce.relays) < scarce.peers // 2
    assert not load_scenario("lan").local_hairpinning
    outage = load_scenario("relay-outage")
    assert len(outage.relays) == 1 and outage.outages[0].duration_ms == 300_000


def test_a_json_scenario_with_hand_written_peers_and_events(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(
        '{"name": "tiny", "duration_s": 60, "local": {"nat": "full_cone"},'
        ' "relays": [{"id": "r1", "rtt_ms": 30}],'
        ' "peer": [{"name": "a", "nat": "symmetric", "rtt_ms": 80}],'
        ' "event": [{"at_s": 30, "kind": "rebind", "peer": "a"}]}'
    )
    scenario = load_scenario(path)
    assert scenario.duration_ms == 60_000
    assert scenario.peer_list[0].nat == "symmetric" and scenario.events[0].at_ms == 30_000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[local]\nnat = "cone"\n', "local.nat"),
        ("[dynamics]\nlan_share = 2\n", "dynamics.lan_share"),
        ('[[relays]]\nid = "r"\ncapacity = "many"\n', "relays[0].capacity"),
        ('[[outages]]\nrelay = "nowhere"\n', "outages[0].relay"),
        ("peers_count = 3\n", "peers_count"),
        ('[[event]]\nkind = "rebind"\npeer = "ghost"\n', "event[0].peer"),
        ("[mix]\nfull_cone = 0\nsymmetric = 0\n", "mix"),
        ("[mix]\nfull_cone = -1.5\n", "mix.full_cone"),
        ('[mix]\nfull_cone = "2"\n', "mix.full_cone"),
        ("peers = 2.5\n", "peers"),
        ("[dynamics]\nactive_from = 0.6\nactive_until = 0.4\n", "dynamics.active_until"),
        (
            "[dynamics]\nrebinding_share = 0.5\nnetwork_change_share = 0.4\nleave_share = 0.2\n",
            "dynamics.rebinding_share",
        ),
        ('[[peer]]\nname = "a"\n[[peer]]\nname = "a"\n', "peer[1].name"),
        ('[[relays]]\nid = "r"\n[[relays]]\nid = "r"\n', "relays[1].id"),
        ('[[relays]]\nid = "r"\ncapacity = 0\n', "relays[0].capacity"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(path) in str(caught.value) and f"'{key}'" in str(caught.value)


def test_unparsable_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ScenarioError, match=r"broken\.toml: cannot parse"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="not a built-in"):
        load_scenario(tmp_path / "absent.toml")
