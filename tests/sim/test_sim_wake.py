"""The simulator where peers sleep, wake and rebind (issue 13): what a moved peer's path costs.

Each test names the simulator defect it kills; the mutations that proved them are in the
commit message that added them.
"""

from __future__ import annotations

import attrs
import pytest

from natrelay.adapters.sim.metrics import beats
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import (
    EventSpec,
    PeerSpec,
    RelaySpec,
    Scenario,
    ScenarioError,
    parse_scenario,
)
from natrelay.adapters.sim.sim_model import sleep_length
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.core.commands import CloseRelaySession, ConnectViaRelay
from natrelay.core.events import RelaySessionEstablished, RelaySessionFailed
from natrelay.core.presets import preset


def asleep_until(wake_ms: int) -> Scenario:
    """One UDP-blocked peer (a relay is its only path) that sleeps from 0.5 s to `wake_ms`."""
    return Scenario(
        name="wake-under-a-connect",
        duration_ms=60_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=(PeerSpec(name="b", nat="udp_blocked", rtt_ms=50),),
        events=(
            EventSpec(at_ms=500, kind="sleep", peer="b"),
            EventSpec(at_ms=wake_ms, kind="wake", peer="b"),
        ),
    )


def opened_at(scenario: Scenario, timeout_ms: int, close_at: int | None = None) -> list[int]:
    """When sessions open for one relay connect issued at 1 s with `timeout_ms`."""
    network = SimNetwork(scenario, seed=1)
    network.poll(1_000)
    [peer] = network.peers.values()
    network.execute(ConnectViaRelay(peer=peer.key, relay="r1", deadline=1_000 + timeout_ms), 1_000)
    events = list(network.poll(close_at or 20_000))
    if close_at is not None:
        network.execute(CloseRelaySession(peer=peer.key, relay="r1"), close_at)
        events += network.poll(20_000)
    assert not [e for e in events if isinstance(e, RelaySessionFailed)]
    return [e.at for e in events if isinstance(e, RelaySessionEstablished)]


def test_a_peer_that_wakes_under_a_relay_connect_answers_wireguards_next_initiation() -> None:
    """Kills a relay connect a peer asleep when it was issued can never answer: WireGuard sends
    its initiation through the relay again 5 s later (REKEY_TIMEOUT), which a peer awake by
    then answers; the simulator charged such a peer the whole connect and the next one."""
    [at] = opened_at(asleep_until(3_000), timeout_ms=6_000)
    assert 6_000 < at < 6_500  # the retry at 1 s + 5 s, plus the relay's setup
    assert opened_at(asleep_until(3_000), timeout_ms=5_000) == []  # the retry falls at its deadline
    assert opened_at(asleep_until(7_000), timeout_ms=6_000) == []  # still asleep at the retry


def test_a_closed_connect_is_not_retried() -> None:
    """Kills a retry that outlives its connect (a session the engine no longer waits for)."""
    assert opened_at(asleep_until(3_000), timeout_ms=6_000, close_at=4_000) == []


def test_sleep_lengths_are_drawn_per_peer_within_the_scenario_bounds() -> None:
    """Kills sleeps of one fixed length for every peer of a range (each waking peer then meets
    a policy's retry cycle in the same phase: `wake` at exactly 60 s measured netbird's 15 s
    period, not its policy), and draws that are not reproducible from the seed."""
    assert sleep_length((60_000, 60_000), 7, 3) == 60_000
    drawn = [sleep_length((10_000, 60_000), 7, index) for index in range(300)]
    assert 10_000 <= min(drawn) < 15_000 and 55_000 < max(drawn) <= 60_000
    assert len(set(drawn)) > 250
    assert drawn == [sleep_length((10_000, 60_000), 7, index) for index in range(300)]
    assert drawn != [sleep_length((10_000, 60_000), 8, index) for index in range(300)]


def test_the_sleep_range_is_parsed_and_a_reversed_one_refused() -> None:
    """Kills a range read backwards or a bad one accepted without naming the key."""
    parsed = parse_scenario({"dynamics": {"sleep_s": [10, 60]}}, "x.toml").dynamics
    assert parsed.sleep_ms == (10_000, 60_000)
    assert parse_scenario({"dynamics": {"sleep_s": 90}}, "x.toml").dynamics.sleep_ms == (90_000, 90_000)
    with pytest.raises(ScenarioError, match=r"x\.toml: key 'dynamics\.sleep_s'"):
        parse_scenario({"dynamics": {"sleep_s": [60, 10]}}, "x.toml")
    assert attrs.evolve(parsed, sleep_ms=(5, 5)).sleep_ms == (5, 5)


def lossy_cone_behind_our_full_cone(*events: EventSpec) -> Scenario:
    """A full-cone peer on a link losing half its packets, behind a local full cone (whose
    filter admits the peer's packets from a new port or address): every first handshake
    is a gamble, a roam is not."""
    return Scenario(
        name="lossy-cone",
        duration_ms=120_000,
        local_nats=("full_cone",),
        relays=(RelaySpec("r1", rtt_ms=40),),
        peer_list=(PeerSpec(name="c", nat="full_cone", rtt_ms=50, loss=0.5),),
        events=events,
    )


def test_the_oracle_roams_after_a_rebinding_as_an_agent_does() -> None:
    """Kills an oracle that pays a new handshake (and its loss: 5 s per lost slot) where the
    peer's packets from its new port reach us on their own and WireGuard roams to it: natrelay,
    roaming, then beat the bound (matrix seed 3: 0.07 s against the oracle's 10.07 s)."""
    scenario = lossy_cone_behind_our_full_cone(EventSpec(at_ms=60_000, kind="rebind", peer="c"))
    for seed in range(1, 9):
        oracle = run_policy(scenario, None, seed=seed)
        assert [took for _, _, took in oracle.recovery_samples] == [0.05], seed
        natrelay = run_policy(scenario, preset("natrelay"), seed=seed)
        assert [took for _, _, took in natrelay.recovery_samples] == [0.05], seed


def test_a_woken_peers_initiation_toward_us_pays_handshake_loss() -> None:
    """Kills the first handshake of a peer that woke elsewhere crossing its lossy link for free
    (natrelay then recovered before the oracle, which pays the loss of every first handshake)."""
    scenario = lossy_cone_behind_our_full_cone(
        EventSpec(at_ms=30_000, kind="sleep", peer="c"),
        EventSpec(at_ms=60_000, kind="wake", peer="c", nat="full_cone"),
    )
    faster = []
    for seed in range(1, 9):
        oracle = run_policy(scenario, None, seed=seed)
        natrelay = run_policy(scenario, preset("natrelay"), seed=seed)
        faster += [seed for name in beats(natrelay, oracle) if name.startswith("recovery")]
    assert faster == []
