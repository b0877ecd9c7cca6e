"""Whole simulated runs: hand-checked metrics, determinism, replay verification, the CLI."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import attrs
import pytest
import typer
from typer.testing import CliRunner

from natrelay.adapters.sim.metrics import beats, paired, percentile
from natrelay.adapters.sim.nat_model import NAT_TYPES, punch
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import (
    EventSpec,
    OutageSpec,
    PeerSpec,
    RelaySpec,
    Scenario,
    builtin_scenarios,
    load_scenario,
)
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.core.commands import ConnectViaRelay
from natrelay.core.events import RelaySessionEstablished, RelaySessionFailed
from natrelay.core.presets import PRESETS, preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import verify
from natrelay.tools.cli.cmd_simulate import register


def tiny(*peers: PeerSpec, local: str = "port_restricted_cone", duration_s: int = 600) -> Scenario:
    return Scenario(
        name="tiny",
        duration_ms=duration_s * 1000,
        local_nats=(local,),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=peers,
    )


def test_percentile_is_nearest_rank_and_keeps_infinity() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, float("inf")], 0.99) == float("inf")


def test_a_punchable_peer_goes_direct_at_its_round_trip_time() -> None:
    scenario = tiny(PeerSpec(name="cone", nat="full_cone", rtt_ms=50))
    for policy in (preset("natrelay"), None):
        metrics = run_policy(scenario, policy, seed=1)
        # the direct handshake (50 ms) beats the relay (3 x 40 ms)
        assert metrics.ttfp_p50_s == pytest.approx(0.05)
        assert metrics.ttdp_p50_s == pytest.approx(0.05)
        assert metrics.connectivity == 1.0
        assert metrics.relayed_share_while_direct_possible == 0.0
        assert metrics.switches_per_peer_hour == 0.0


def test_a_peer_behind_blocked_udp_is_relayed_and_counts_as_possible() -> None:
    scenario = tiny(PeerSpec(name="blocked", nat="udp_blocked", rtt_ms=50))
    natrelay = run_policy(scenario, preset("natrelay"), seed=1)
    assert natrelay.ttfp_p50_s == pytest.approx(0.12)  # relay setup: 3 x 40 ms
    assert natrelay.connectivity_possible == 1.0
    assert natrelay.peak_relay_load == 1
    innernet = run_policy(scenario, preset("innernet"), seed=1)
    assert innernet.connectivity_possible == 0.0
    assert innernet.ttfp_p50_s == float("inf")


def test_a_relay_that_wins_the_race_is_left_when_direct_answers() -> None:
    scenario = tiny(PeerSpec(name="far", nat="full_cone", rtt_ms=200))
    metrics = run_policy(scenario, preset("natrelay"), seed=1)
    assert metrics.ttfp_p50_s == pytest.approx(0.12)  # relay first
    assert metrics.ttdp_p50_s == pytest.approx(0.2)  # then direct
    # relayed from 120 ms to 200 ms of 600 s with a direct path
    assert metrics.relayed_share_while_direct_possible == pytest.approx(0.08 / 600)
    assert metrics.switches_per_peer_hour == pytest.approx(1 / (600 / 3600))


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM events ORDER BY seq").fetchall()


def test_same_seed_same_log_and_the_log_replays(tmp_path: Path) -> None:
    scenario = load_scenario("mesh").with_overrides(peers=40, duration_ms=600_000)
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    run_policy(scenario, preset("natrelay"), seed=3, log=str(first))
    run_policy(scenario, preset("natrelay"), seed=3, log=str(second))
    assert _rows(first) == _rows(second)
    with EventLog.open(str(first)) as log:
        result = verify(log, "local")
    assert result.ok, result.divergence
    other = tmp_path / "c.db"
    run_policy(scenario, preset("natrelay"), seed=4, log=str(other))
    assert _rows(other) != _rows(first)


def test_every_vantage_gets_its_share_of_peers() -> None:
    scenario = attrs.evolve(
        load_scenario("matrix").with_overrides(peers=21, duration_ms=120_000),
    )
    metrics = run_policy(scenario, None, seed=1)
    assert metrics.peers == 21


def test_simulate_compare_json_through_the_cli(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command keeps typer from flattening `simulate`
        pass

    result = CliRunner().invoke(
        app,
        ["simulate", "--compare", "--json", "--peers", "14", "--duration", "120", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [row["name"] for row in report["policies"]]
    assert names == ["oracle", "innernet", "formnet", "netbird", "tailscale", "natrelay"]
    for row in report["policies"]:
        for key in ("connectivity_possible", "ttfp_p50_s", "ttfp_p99_s"):
            assert key in row
        assert 0.0 <= row["connectivity_possible"] <= 1.0
        assert 0.0 <= row["relayed_share_while_direct_possible"] <= 1.0
        assert row["switches_per_peer_hour"] >= 0.0


# ----------------------------------------------------------------- issue 13


@pytest.mark.parametrize("name", [name for name, _ in builtin_scenarios()])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_policy_beats_the_oracle_on_any_metric(name: str, seed: int) -> None:
    """The oracle is the physical limit: no preset does better on any outcome (costs: see `beats`).
    Seed 3 on `hardnat` caught a punched path that worked the moment it was taken by a peer
    with no WireGuard session yet (no first handshake paid: ttfp p99 1.66 s, the oracle's 5.08 s)."""
    scenario = load_scenario(name)
    scenario = scenario.with_overrides(
        peers=min(scenario.peers, 40), duration_ms=min(scenario.duration_ms, 900_000)
    )
    oracle = run_policy(scenario, None, seed=seed)
    for policy in PRESETS:
        assert beats(run_policy(scenario, preset(policy), seed=seed), oracle) == []


def test_reconnecting_to_the_same_relay_counts_as_connected_and_as_a_switch() -> None:
    scenario = attrs.evolve(
        tiny(PeerSpec(name="blocked", nat="udp_blocked", rtt_ms=50), duration_s=900),
        outages=(OutageSpec("r1", 300_000, 60_000),),
    )
    metrics = run_policy(scenario, preset("natrelay"), seed=1)
    # down 60 s (no path possible then); back within a few seconds of the relay's return
    assert metrics.connected_time_share > 0.99
    assert metrics.switches_per_peer_hour == pytest.approx(1 / (900 / 3600))
    assert metrics.failovers == 1 and metrics.failover_p50_s < 1.0 and metrics.recoveries == 0


def test_a_relay_outage_is_a_failover_and_a_rebinding_a_recovery() -> None:
    """Kills a recovery percentile that mixes the two: which peers an outage hits depends on the
    policy (a pair relayed by one policy is direct in another), so a mix compares different sets
    of changes (issue 13, `mesh`: the anchors' relayed hard pairs failed over in 0.18 s and
    pulled their "recovery" p50 below natrelay's, whose hard pairs never lost a path)."""
    scenario = attrs.evolve(
        tiny(
            PeerSpec(name="blocked", nat="udp_blocked", rtt_ms=50),
            PeerSpec(name="cone", nat="full_cone", rtt_ms=50),
            duration_s=600,
        ),
        outages=(OutageSpec("r1", 300_000, 60_000),),
        events=(EventSpec(at_ms=200_000, kind="rebind", peer="cone"),),
    )
    metrics = run_policy(scenario, preset("natrelay"), seed=1)
    assert (metrics.recoveries, metrics.failovers) == (1, 1)
    # the rebinding is noticed by the heartbeat (2.5 s); the relay's return at once
    assert metrics.recovery_p50_s > 2.0 > metrics.failover_p50_s
    oracle = run_policy(scenario, None, seed=1)
    assert (oracle.recoveries, oracle.failovers) == (1, 1)


def test_paired_compares_the_same_changes_and_counts_the_rest_apart() -> None:
    """Kills a change-by-change comparison that pairs by peer alone (a peer changes more than
    once) or lets a change only one run lost a path to into the percentiles."""
    base = run_policy(tiny(PeerSpec(name="cone", nat="full_cone")), preset("natrelay"), seed=1)
    ours = attrs.evolve(base, recovery_samples=((0, 100, 2.0), (0, 900, 5.0), (2, 300, 1.0)))
    theirs = attrs.evolve(base, recovery_samples=((0, 100, 3.0), (0, 900, 2.5), (3, 400, 0.1)))
    found = paired(ours, theirs)
    assert (found.common, found.faster, found.slower, found.only_ours, found.only_theirs) == (2, 1, 1, 1, 1)
    assert (found.ours_p50_s, found.theirs_p50_s) == (2.0, 2.5)
    assert (found.ours_p99_s, found.theirs_p99_s) == (5.0, 3.0)
    assert paired(ours, theirs, "failover").common == 0


def test_a_stale_candidate_does_not_reach_a_peer_behind_our_restricted_cone() -> None:
    assert not punch(NAT_TYPES["restricted_cone"], NAT_TYPES["full_cone"], "stale").works


def test_capacity_is_checked_when_the_session_opens() -> None:
    peers = [PeerSpec(name=f"p{i}", nat="udp_blocked", rtt_ms=50) for i in range(6)]
    scenario = attrs.evolve(tiny(*peers, duration_s=120), relays=(RelaySpec("r1", rtt_ms=40, capacity=4),))
    for policy in ("formnet", "netbird"):
        metrics = run_policy(scenario, preset(policy), seed=1)
        assert metrics.peak_relay_load <= 4
    oracle = run_policy(scenario, None, seed=1)
    assert oracle.peak_relay_load == 4 and oracle.over_capacity_events == 0


def test_no_peer_present_is_no_data_and_json_tells_never_from_missing() -> None:
    scenario = tiny(duration_s=60)
    metrics = run_policy(scenario, None, seed=1)
    assert math.isnan(metrics.connectivity) and math.isnan(metrics.connected_time_share)
    data = metrics.to_json()
    assert data["connectivity"] is None and data["recovery_p50_s"] is None
    blocked = run_policy(tiny(PeerSpec(name="b", nat="udp_blocked")), preset("innernet"), seed=1)
    assert blocked.to_json()["ttfp_p50_s"] == "inf"


def test_a_blackout_probe_darkens_the_live_path_and_the_hitless_one_does_not() -> None:
    # symmetric against our port-restricted NAT: no direct path, so every upgrade probe fails
    scenario = tiny(PeerSpec(name="sym", nat="symmetric", rtt_ms=50), duration_s=600)
    hitless = run_policy(scenario, preset("natrelay"), seed=1)
    blackout = run_policy(scenario, preset("natrelay"), seed=1, probe_cost="blackout")
    assert hitless.blackout_share == 0.0
    assert blackout.blackout_share > 0.001
    assert blackout.connected_time_share < hitless.connected_time_share


def test_the_simulated_relay_refuses_sessions_past_its_capacity_when_they_open() -> None:
    peers = [PeerSpec(name=f"p{i}", nat="udp_blocked", rtt_ms=50) for i in range(5)]
    scenario = attrs.evolve(tiny(*peers, duration_s=60), relays=(RelaySpec("r1", rtt_ms=40, capacity=3),))
    network = SimNetwork(scenario, seed=1)
    network.poll(0)  # joins, the relay announced
    for peer in network.peers.values():  # five connects issued while the relay is empty
        network.execute(ConnectViaRelay(peer=peer.key, relay="r1", deadline=10_000), 0)
    events = network.poll(5_000)
    opened = [e for e in events if isinstance(e, RelaySessionEstablished)]
    refused = [e for e in events if isinstance(e, RelaySessionFailed)]
    assert len(opened) == 3 and len(network.relays["r1"].sessions) == 3
    assert [e.reason for e in refused] == ["at capacity", "at capacity"]
    assert network.over_capacity == 2
