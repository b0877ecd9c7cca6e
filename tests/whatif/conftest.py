"""Small simulated runs for the what-if tests: scenarios, seeds, and logs written once per test."""

from __future__ import annotations

from pathlib import Path

import attrs

from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import (
    EventSpec,
    OutageSpec,
    PeerSpec,
    RelaySpec,
    Scenario,
    load_scenario,
)
from natrelay.adapters.whatif.trace import Trace, read_trace
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog


def outage() -> Scenario:
    """Hand-written: every NAT kind, a lossy peer, a LAN peer, a relay outage, a rebinding and a sleep."""
    peers = (
        PeerSpec(name="cone", nat="full_cone", rtt_ms=30),
        PeerSpec(name="port", nat="port_restricted_cone", rtt_ms=80, join_ms=2_000),
        PeerSpec(name="sym", nat="symmetric", rtt_ms=60, join_ms=500),
        PeerSpec(name="blocked", nat="udp_blocked", rtt_ms=40),
        PeerSpec(name="lossy", nat="restricted_cone", rtt_ms=50, loss=0.3),
        PeerSpec(name="lan", nat="port_restricted_cone", lan=True),
        PeerSpec(name="stale", nat="restricted_cone", rtt_ms=20, stale_candidate=True),
        # a second plain cone: "port" wakes under a relay connect and answers WireGuard's retry
        # through it, which test_whatif_vs_sim counts as chance; enough peers stay compared
        PeerSpec(name="cone-far", nat="full_cone", rtt_ms=120, join_ms=1_000),
    )
    return Scenario(
        name="outage",
        duration_ms=900_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=25), RelaySpec("r2", region="far", rtt_ms=70)),
        outages=(OutageSpec("r1", at_ms=300_000, duration_ms=200_000),),
        peer_list=peers,
        events=(
            EventSpec(at_ms=400_000, kind="rebind", peer="cone"),
            EventSpec(at_ms=500_000, kind="sleep", peer="port"),
            EventSpec(at_ms=560_000, kind="wake", peer="port", nat="symmetric"),
            EventSpec(at_ms=600_000, kind="leave", peer="stale"),
            EventSpec(at_ms=650_000, kind="join", peer="stale"),
        ),
    )


def scenarios() -> dict[str, Scenario]:
    """Small scenarios: the built-in mesh and steady cut down, and the hand-written outage."""
    mesh = load_scenario("mesh").with_overrides(peers=24, duration_ms=1_200_000)
    steady = load_scenario("steady").with_overrides(peers=21, duration_ms=600_000)
    return {
        "mesh": mesh,
        "steady-symmetric": attrs.evolve(steady, local_nats=("symmetric",)),
        "steady-cone": attrs.evolve(steady, local_nats=("full_cone",)),
        "outage": outage(),
    }


def record(scenario: Scenario, policy: Policy, seed: int, where: Path) -> Path:
    """Simulate `policy` on one vantage of `scenario` into a log at `where`."""
    single = attrs.evolve(scenario, local_nats=scenario.local_nats[:1])
    run_policy(single, policy, seed=seed, log=str(where))
    return where


def trace_of(path: Path) -> Trace:
    with EventLog.open(str(path), create=False) as log:
        return read_trace(log, "local")
