"""Another policy in the trace-driven world agrees with that policy run on the simulator.

The recorded run is natrelay's default with hard-NAT attempts off; each anchor preset is run twice: in
the world built from the recorded log, and on the simulator itself with the
same scenario and seed. For every peer the alternative asked nothing
extrapolated about, the figures must agree within the tolerance below. The
simulator loses handshakes per 5 s slot (`sim_model.handshake_lost`: a run that
tries in other slots meets other losses) while the world replays the recorded
outcomes, so exact agreement is not expected where loss or timing differ; the
tolerance is the stated one of docs/whatif.md.

Why hard-NAT attempts are off in the recorded run: the anchors make none, so what is compared
here is their relay and direct answers; with attempts on, the recorded natrelay run takes the
symmetric peers direct by birthday punches within seconds, so its log holds no evidence of a relay
path to them afterwards (no renewal, no connect during the relay outage) and the world must
extrapolate every relay answer an anchor needs for them. Attempts themselves are compared with
the simulator in tests/whatif/test_whatif_hard_nat.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
from conftest import record, scenarios, trace_of

from natrelay.adapters.sim.scenario import Scenario
from natrelay.adapters.sim.sim_model import REKEY_TIMEOUT_MS
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.adapters.whatif.counterfactual import run
from natrelay.adapters.whatif.figures import PeerFigures, measure
from natrelay.adapters.whatif.trace import Trace
from natrelay.core.policy import Policy
from natrelay.core.presets import preset

#: Per peer: time to first path, time relayed while direct known, time without a path (ms): 5 s, or
#: three of the policy's rounds if longer: the simulator draws handshake losses afresh, and each
#: handshake it loses where the recorded run got one through (or the reverse) costs a round.
TIME_TOLERANCE_MS = 5_000
#: Per peer: path switches.
SWITCH_TOLERANCE = 1
#: Per peer: direct attempts and relay connects, as a share (at least 3).
PROBE_TOLERANCE = 0.15
#: At least this share of the peers must be compared (the test is not vacuous). Not compared: peers
#: the alternative asked something extrapolated about, and peers the log shows losing handshakes
#: (`Trace.lossy`): the simulator draws losses afresh, so which handshakes another run loses — and
#: so that peer's whole course, a relay kept for good under formnet, say — is chance, not evidence.
MIN_CLEAN_SHARE = 0.6
#: A link that loses at least this share of packets: another run's handshakes there are chance.
LOSSY_LINK = 0.05


def _disagreement(world: PeerFigures, sim: PeerFigures, policy: Policy) -> str | None:
    limit = max(TIME_TOLERANCE_MS, 3 * max(policy.attempt_timeout_ms, policy.step_interval_ms))

    def _close_ms(a: float, b: float) -> bool:
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= limit

    checks = {
        "time to first path": _close_ms(world.first_path_ms, sim.first_path_ms),
        "relayed while direct known": _close_ms(world.relayed_while_direct_ms, sim.relayed_while_direct_ms),
        "without a path": _close_ms(world.without_path_ms, sim.without_path_ms),
        "switches": abs(world.switches - sim.switches) <= SWITCH_TOLERANCE,
        "probes": abs(world.probes + world.relay_connects - sim.probes - sim.relay_connects)
        <= max(3, PROBE_TOLERANCE * (sim.probes + sim.relay_connects)),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    return f"{world.name}: {', '.join(wrong)} (world {world}, simulator {sim})" if wrong else None


def _chance(scenario: Scenario, seed: int, trace: Trace) -> frozenset[str]:
    """Peers whose course is chance: a lossy link (the recorded run may have been lucky in the
    5 s slots it tried: WireGuard's loss is per slot, `sim_model.handshake_lost`, so the log
    shows nothing), or a relay connect whose handshake the recorded run lost while the relay
    was up (silent, or answered after WireGuard's 5 s retry: the world would make every
    connect near it take as long)."""
    network = SimNetwork(scenario, seed=seed)
    lossy = {key for key, peer in network.peers.items() if peer.loss >= LOSSY_LINK}
    for (peer, relay), connects in trace.connects.items():
        down = trace.down.get(relay, ())
        for connect in connects:
            up = not any(start <= connect.at and (end is None or connect.at < end) for start, end in down)
            retried = (
                connect.outcome == "established"
                and connect.answered_at is not None
                and connect.answered_at - connect.at >= REKEY_TIMEOUT_MS
            )
            if up and (connect.outcome == "silent" or retried):
                lossy.add(peer)
    return frozenset(lossy)


@pytest.mark.parametrize("scenario", list(scenarios()))
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_other_policies_in_the_world_agree_with_the_simulator(
    tmp_path: Path, scenario: str, seed: int
) -> None:
    chosen = scenarios()[scenario]
    recorded = attrs.evolve(preset("natrelay"), hard_nat_enabled=False)  # why: the docstring
    trace = trace_of(record(chosen, recorded, seed, tmp_path / "recorded.db"))
    chance = _chance(chosen, seed, trace)
    for name in ("formnet", "innernet", "netbird", "tailscale"):
        policy = preset(name)
        direct = trace_of(record(chosen, policy, seed, tmp_path / f"{name}.db"))
        simulated = {p.peer: p for p in measure([e for _, e in direct.recorded], trace).peers}
        replay = run(trace, policy)
        world = {p.peer: p for p in measure(replay.events, trace).peers}
        assert set(world) == set(simulated)
        clean = [
            peer
            for peer in world
            if not replay.world.extrapolated_by_peer.get(peer)
            and peer not in trace.lossy
            and peer not in chance
        ]
        assert len(clean) >= MIN_CLEAN_SHARE * len(world), f"{name}: too few peers without extrapolation"
        problems = [d for peer in clean if (d := _disagreement(world[peer], simulated[peer], policy))]
        assert not problems, f"{name} on {scenario}, seed {seed}:\n" + "\n".join(problems)
