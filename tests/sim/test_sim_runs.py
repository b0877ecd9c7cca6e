"""Whole simulated runs: hand-checked metrics, determinism, replay verification, the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import attrs
import pytest
import typer
from typer.testing import CliRunner

from natrelay.adapters.sim.metrics import percentile
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import PeerSpec, RelaySpec, Scenario, load_scenario
from natrelay.core.presets import preset
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
