"""The simulator reports a dead path when, and as, the real agent would (`adapters.liveness`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from natrelay.adapters import liveness
from natrelay.adapters.mesh.agent_config import AgentConfig
from natrelay.adapters.mesh.observe import Observing
from natrelay.adapters.mesh.path_proxy import PathProxy
from natrelay.adapters.mesh.shared_plane import SharedPlane
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import EventSpec, PeerSpec, RelaySpec, Scenario
from natrelay.adapters.sim.sim_model import handshake_lost
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.core.events import PathSilent
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog


def _silences(
    tmp_path: Path, peer: PeerSpec, events: tuple[EventSpec, ...], probe_cost: str
) -> list[PathSilent]:
    scenario = Scenario(
        name="tiny",
        duration_ms=120_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=(peer,),
        events=events,
    )
    path = str(tmp_path / f"{probe_cost}.db")
    run_policy(scenario, preset("natrelay"), seed=1, log=path, probe_cost=probe_cost)
    log = EventLog.open(path)
    try:
        return [e for _, _, e in log.read_events() if isinstance(e, PathSilent)]
    finally:
        log.close()


def test_a_dead_direct_path_is_reported_by_the_heartbeat_after_2_5_s(tmp_path: Path) -> None:
    """Kills: the simulator waiting the counter watch's 4 s for a direct path the shared data
    plane's heartbeat reports after 2.5 s (mutation: always `counter_silence_at_ms` -> 54.0 s)."""
    cone = PeerSpec(name="cone", nat="full_cone", rtt_ms=50)
    # the rebinding peer's packets come from a new port our port-restricted NAT drops: dead at 50 s
    silent = _silences(tmp_path, cone, (EventSpec(50_000, "rebind", "cone"),), "hitless")
    assert [(e.at, e.silent_ms) for e in silent] == [(52_500, 2_500)]


def test_without_the_heartbeat_the_counter_watch_reports_at_its_reading(tmp_path: Path) -> None:
    """Kills: a fixed 4 s after the death instead of the reading after it (mutation: `seen` = the
    death time -> 54.3 s), and a report sooner than the limit after the path was selected."""
    cone = PeerSpec(name="cone", nat="full_cone", rtt_ms=50)
    # blackout probes: today's "endpoint" data plane, no heartbeat; dies at 50.3 s
    silent = _silences(tmp_path, cone, (EventSpec(50_300, "rebind", "cone"),), "blackout")
    assert [(e.at, e.silent_ms) for e in silent] == [(55_000, 4_000)]


def test_the_rules_timings() -> None:
    assert liveness.counter_silence_at_ms(50_300, 0) == (55_000, 4_000)
    # connected 1 s before the death: not reported before the limit after connecting
    assert liveness.counter_silence_at_ms(10_000, 9_000) == (14_000, 4_000)
    assert liveness.counter_silence_at_ms(10_000, 9_500) == (14_000, 4_000)
    assert liveness.counter_silence_at_ms(10_000, 10_500) == (15_000, 5_000)
    assert liveness.heartbeat_dead_at_ms(50_030, 0) == (52_600, 2_500)
    # selected after the last packet: the silence clock starts at the selection
    assert liveness.heartbeat_dead_at_ms(1_000, 1_234) == (3_800, 2_566)


@pytest.mark.parametrize("plane", [SharedPlane, PathProxy])
def test_the_agents_numbers_are_the_shared_ones(plane: type) -> None:
    """Kills a drift: the agent's heartbeat or counter watch changed while the simulator's did not."""
    assert {f.name: f.default for f in attrs.fields(AgentConfig)}["persistent_keepalive"] == (
        liveness.DEFAULT_KEEPALIVE_S
    )
    defaults = {f.name: f.default for f in attrs.fields(plane)}
    assert defaults["dead_after"] == liveness.DEAD_AFTER_S
    assert defaults["heartbeat_after"] == liveness.HEARTBEAT_AFTER_S
    assert defaults["heartbeat_every"] == liveness.HEARTBEAT_EVERY_S
    assert defaults["probe_every"] == liveness.PROBE_EVERY_S
    if plane is SharedPlane:
        assert defaults["sample_every"] == liveness.SAMPLE_EVERY_S
        assert defaults["active_window"] == liveness.ACTIVE_WINDOW_S
    for keepalive in (1, 2, 25):
        agent = SimpleNamespace(config=SimpleNamespace(persistent_keepalive=keepalive))
        agent.silence_limit_ms = lambda a=agent: Observing.silence_limit_ms(a)
        assert Observing.silence_limit_ms(agent) == liveness.silence_limit_ms(keepalive)
        assert Observing.silence_check_ms(agent) == liveness.silence_check_ms(keepalive)


def test_a_lost_handshake_costs_the_oracle_wireguards_retry_too() -> None:
    """Kills an oracle that resends a lost handshake at once (mutation: the oracle's relay setup
    without `_handshake_ms` -> its ttfp 0.12 s, and natrelay 'beats' the bound by 5 s): WireGuard
    sends one initiation per peer per REKEY_TIMEOUT, so no agent can. Seed 8 loses slot 0 of the
    peer's first handshake and not slot 1 (`sim_model.handshake_lost`), for every run alike."""
    assert handshake_lost(8, 0, 0, 0, 0.3) and not handshake_lost(8, 0, 0, 1, 0.3)
    blocked = PeerSpec(name="blocked", nat="udp_blocked", rtt_ms=50, loss=0.3)
    scenario = Scenario(
        name="tiny",
        duration_ms=60_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=(blocked,),
    )
    oracle = run_policy(scenario, None, seed=8)
    assert oracle.ttfp_p50_s == pytest.approx(5.12)  # setup 3 x 40 ms, after one lost try
    natrelay = run_policy(scenario, preset("natrelay"), seed=8)
    assert natrelay.ttfp_p50_s == pytest.approx(5.12)


class _Draws:
    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


@pytest.mark.parametrize(("probe_cost", "expected"), [("hitless", 200 + 60), ("blackout", None)])
def test_a_lost_ping_costs_a_probe_one_ping_interval(probe_cost: str, expected: int | None) -> None:
    """Kills a probe that fails at its first lost ping (mutation: return None after the first
    lost ping in `_probe_ms` -> hitless None): the shared plane pings every 0.2 s until answered;
    today's agent (blackout) points WireGuard at the candidate once."""
    scenario = Scenario(
        name="tiny",
        duration_ms=60_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=(PeerSpec(name="cone", nat="full_cone", rtt_ms=60, loss=0.1),),
    )
    network = SimNetwork(scenario, seed=1, probe_cost=probe_cost)
    peer = network.by_name["cone"]
    network._loss_rng[peer.key] = _Draws(0.99, 0.0)  # type: ignore[assignment]
    assert network._probe_ms(peer, 10_000, 11_000) == expected
