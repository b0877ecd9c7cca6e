"""Liveness on the simulator: every peer with a path gets connected within a bound from the policy.

Hypothesis draws small topologies for the NAT simulator (adapters/sim_network.py):
the local node's NAT and each peer's NAT type (all of sim_nat.NAT_TYPES, UDP
blocked included), link RTT and loss, join times, one or two relays, and an
outage of the first relay. A `Node` runs the policy on an in-memory log, the
simulator answering its commands. The claims, with B = `bound_ms(policy)`:

1. a peer is on a working path (the simulator's data plane, not the engine's
   belief) within B of the moment a path exists for it: its join, or, for a
   peer that cannot go direct, the end of an outage of the only relay;
2. B after an outage starts, every peer for which a path still exists (a direct
   path, or a relay that is still up) is on a working path again;
3. B after the outage ends, every peer is on a working path.

B adds up what the policy lets the engine spend before a path must work:
- reaching relay eligibility: 0 relay-first, else `min_direct_attempts` rounds,
  each at most `attempt_timeout_ms` plus the largest gap between rounds;
- `CYCLES` relay cycles, each at most `relay_connect_timeout_ms` plus
  `relay_retry_ms` (a connect whose handshake is lost, a relay that is down);
- the simulator's own delays: a dead relay is withdrawn after
  RELAY_DOWN_DETECTION_MS, a handshake retried after REKEY_TIMEOUT_MS.
Loss is at most 5 %, so a relay handshake is lost with probability < 10 % and
`CYCLES` lost in a row is below 1e-5: the simulator is seeded, Hypothesis runs
derandomized, and a failure means the engine lost a peer, not bad luck.

Policies: natrelay's default (relay-first, upgrades) and the formnet anchor
(direct-first after 3 rounds, no upgrades).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.adapters.node import Node
from natrelay.adapters.sim.nat_model import NAT_TYPES
from natrelay.adapters.sim.scenario import OutageSpec, PeerSpec, RelaySpec, Scenario
from natrelay.adapters.sim.sim_model import REKEY_TIMEOUT_MS, RELAY_DOWN_DETECTION_MS
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.core.policy import Policy
from natrelay.core.presets import formnet, natrelay
from natrelay.eventlog import EventLog

CYCLES = 5
POLICIES = {"natrelay": natrelay, "formnet": formnet}


def bound_ms(policy: Policy) -> int:
    """The longest a peer may wait for a working path once one exists, from the policy."""
    if policy.mode == "relay_first":
        eligible = 0
    else:
        largest_gap = policy.round_gap_ms(policy.min_direct_attempts, 1.0)
        eligible = policy.min_direct_attempts * (policy.attempt_timeout_ms + largest_gap)
    cycle = policy.relay_connect_timeout_ms + policy.relay_retry_ms
    return eligible + CYCLES * cycle + RELAY_DOWN_DETECTION_MS + REKEY_TIMEOUT_MS


nats = st.sampled_from(sorted(NAT_TYPES))
peer_specs = st.lists(
    st.builds(
        PeerSpec,
        name=st.just(""),
        nat=nats,
        rtt_ms=st.integers(5, 200),
        loss=st.sampled_from([0.0, 0.0, 0.02, 0.05]),
        join_ms=st.integers(0, 20_000),
        stale_candidate=st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def topologies(draw: st.DrawFn) -> Scenario:
    peers = tuple(
        PeerSpec(f"peer-{i}", s.nat, s.rtt_ms, s.loss, s.join_ms, stale_candidate=s.stale_candidate)
        for i, s in enumerate(draw(peer_specs))
    )
    relays = [RelaySpec("relay-1", rtt_ms=draw(st.integers(5, 80)))]
    if draw(st.booleans()):
        relays.append(RelaySpec("relay-2", rtt_ms=draw(st.integers(5, 80))))
    outage = OutageSpec("relay-1", draw(st.integers(0, 120_000)), draw(st.integers(1_000, 90_000)))
    return Scenario(
        name="liveness",
        local_nats=(draw(nats),),
        relays=tuple(relays),
        outages=(outage,) if draw(st.booleans()) else (),
        peer_list=peers,
    )


def _run(node: Node, until: int) -> None:
    while True:
        wake = node.next_wakeup()
        if wake is None or wake > until:
            break
        node.advance(max(wake, node.engine.now))
    node.flush()


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=10, derandomize=True)
@given(scenario=topologies(), seed=st.integers(0, 1_000))
def test_every_peer_with_a_path_is_connected_within_the_policy_bound(
    name: str, scenario: Scenario, seed: int
) -> None:
    policy = POLICIES[name]()
    bound = bound_ms(policy)
    outage = scenario.outages[0] if scenario.outages else None
    network = SimNetwork(scenario, seed=seed)
    log = EventLog.open(":memory:", clock=lambda: node.engine.now)
    node = Node(log, network, node="local", policy=policy, flush_every=64)
    peers = {p.name: p for p in network.peers.values()}
    specs = {s.name: s for s in scenario.peer_list}
    only_relay_down = len(scenario.relays) == 1

    def relay_path_during_outage() -> bool:
        return not only_relay_down

    def path_ready_at(name: str) -> int:
        """When a path exists for the peer: its join, or the outage's end if that was its only way."""
        joined = specs[name].join_ms
        direct = bool(network.working_endpoints(peers[name])) if peers[name].present else None
        cut_off = outage is not None and only_relay_down and not direct
        if cut_off and outage.at_ms <= joined < outage.at_ms + outage.duration_ms:  # type: ignore[union-attr]
            return outage.at_ms + outage.duration_ms  # type: ignore[union-attr]
        return joined

    def working(name: str) -> bool:
        return network._plane_works(peers[name])

    checkpoints = []
    if outage is not None:
        checkpoints.append(("outage", outage.at_ms + bound))
        checkpoints.append(("after", outage.at_ms + outage.duration_ms + bound))
    end = max([s.join_ms for s in scenario.peer_list] + [t for _, t in checkpoints]) + bound
    checkpoints.append(("end", end))
    try:
        for label, at in sorted(checkpoints, key=lambda c: c[1]):
            _run(node, at)
            for peer_name, peer in peers.items():
                if label == "outage":
                    # During the outage (if it still lasts), a path exists only directly or via relay-2.
                    still_down = at < outage.at_ms + outage.duration_ms  # type: ignore[union-attr]
                    direct = bool(network.working_endpoints(peer))
                    if specs[peer_name].join_ms > outage.at_ms:  # type: ignore[union-attr]
                        continue  # joined during the outage: claim 1 covers it
                    if still_down and not direct and not relay_path_during_outage():
                        continue
                assert working(peer_name), (
                    f"{name}: {peer_name} ({peer.nat_name}, local {network.local_name}) has no working "
                    f"path at {at} ms ({label}, bound {bound} ms), state "
                    f"{node.engine.peers[peer.key].state}"
                )
        for peer_name, peer in peers.items():
            first = peer.account.first_path_at
            ready = path_ready_at(peer_name)
            assert first is not None and first - ready <= bound, (
                f"{name}: {peer_name} ({peer.nat_name}) first on a path at {first}, a path existed "
                f"from {ready} (bound {bound} ms)"
            )
    finally:
        log.close()
