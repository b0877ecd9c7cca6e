"""Hard-NAT (birthday punch) attempts in the trace-driven world (adapters/whatif/world_hard_nat.py).

A hand-written mesh: symmetric peers (one far, one lossy, one rebinding, one leaving and
rejoining, one joining late) and a full cone, against a port-restricted cone: every
symmetric peer is relayed, then gets attempts (natrelay's default turns them on).

- the recorded policy replays its log event for event, attempts and meetings included,
  each attempt answered from the record;
- another hard-NAT knob agrees with the simulator run of it, answered from the record and
  nearby attempts only;
- a log without attempts (an anchor's) answers natrelay's attempts by the stated model (no
  meeting), counted as extrapolated, and the peers stay relayed;
- turning attempts off shows the time relayed while the found pair worked (the meeting is a fact);
- the world's rules on their own: the budget and the new deadline cut a recorded meeting, nearby
  answers keep to the peer's epoch, "no meeting" holds as long as the record was open, and a stop
  voids a meeting still to come.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import attrs
import pytest
from conftest import record, trace_of
from test_whatif_vs_sim import _chance, _disagreement

from natrelay.adapters.sim.scenario import EventSpec, OutageSpec, PeerSpec, RelaySpec, Scenario
from natrelay.adapters.whatif.counterfactual import run
from natrelay.adapters.whatif.figures import measure
from natrelay.adapters.whatif.trace import Trace
from natrelay.adapters.whatif.trace_world import TraceWorld
from natrelay.adapters.whatif.world_hard_nat import Punch
from natrelay.core.codec import to_payload
from natrelay.core.commands import StartHardNatAttempt, StopHardNatAttempt
from natrelay.core.events import (
    Event,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    HardNatPairMet,
    PathLost,
    PathUpgraded,
    PeerAdded,
    RelayPathSelected,
)
from natrelay.core.policy import Policy
from natrelay.core.presets import preset

#: A birthday punch's meeting is drawn afresh per attempt; 3 s cuts off some meetings of the default
#: budget (median 1.5 s, up to 8 s), so a log recorded with it has failed attempts and retries.
SHORT_MS = 3_000


#: "sym-leaves" joins at 2 s and its first attempt starts with it (natrelay's
#: `hard_nat_with_first_round`): it leaves under it, 0.2 s later, before a meeting.
LEAVES_UNDER_ITS_ATTEMPT = (
    EventSpec(at_ms=2_200, kind="leave", peer="sym-leaves"),
    EventSpec(at_ms=30_000, kind="join", peer="sym-leaves"),
)


def hard_nat(outage: bool = False) -> Scenario:
    """Symmetric peers against a port-restricted cone; `outage`: r1 goes down under attempts in
    flight (they go on: the punch is then the best chance) and a peer leaves under its first
    attempt (which stops it early)."""
    peers = (
        PeerSpec(name="sym", nat="symmetric", rtt_ms=60),
        PeerSpec(name="sym-far", nat="symmetric", rtt_ms=180, join_ms=3_000),
        PeerSpec(name="sym-lossy", nat="symmetric", rtt_ms=80, loss=0.4, join_ms=1_000),
        PeerSpec(name="sym-leaves", nat="symmetric", rtt_ms=40, join_ms=2_000),
        PeerSpec(name="sym-late", nat="symmetric", rtt_ms=50, join_ms=100_000),
        PeerSpec(name="cone", nat="full_cone", rtt_ms=30),
    )
    return Scenario(
        name="hard-nat",
        duration_ms=600_000,
        local_nats=("port_restricted_cone",),
        relays=(RelaySpec("r1", rtt_ms=25), RelaySpec("r2", region="far", rtt_ms=70)),
        outages=(OutageSpec("r1", at_ms=2_500, duration_ms=60_000),) if outage else (),
        peer_list=peers,
        events=(
            *(LEAVES_UNDER_ITS_ATTEMPT if outage else ()),
            EventSpec(at_ms=200_000, kind="rebind", peer="sym"),
            EventSpec(at_ms=300_000, kind="leave", peer="sym-leaves"),
            EventSpec(at_ms=320_000, kind="join", peer="sym-leaves"),
        ),
    )


@pytest.mark.parametrize("outage", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("timeout_ms", [10_000, SHORT_MS])
def test_the_recorded_hard_nat_policy_replays_its_log_seq_by_seq(
    tmp_path: Path, timeout_ms: int, seed: int, outage: bool
) -> None:
    """Meetings, attempts failed at the deadline (3 s) and attempts stopped early (r1 going down
    under them: the peer is not relayed any more) all come back as recorded."""
    policy = attrs.evolve(preset("natrelay"), hard_nat_timeout_ms=timeout_ms)
    assert policy.hard_nat_enabled  # natrelay's default
    trace = trace_of(record(hard_nat(outage), policy, seed, tmp_path / "run.db"))
    punches = [p for tries in trace.punches.values() for p in tries]
    assert any(p.met for p in punches)
    if outage:
        assert any(p.stopped_at is not None and p.stopped_at < p.deadline for p in punches)
    replay = run(trace)
    for index, (seq, recorded) in enumerate(trace.recorded):
        got = replay.events[index]
        assert got == recorded, f"seq {seq}: log {to_payload(recorded)}, replay {to_payload(got)}"
    assert len(replay.events) == len(trace.recorded)
    # every attempt was answered from the record; the meetings are the world's answers
    assert replay.world.answers[("hard_nat", "recorded")] == len(punches)
    assert not replay.world.extrapolated_by_peer
    assert len(_of(replay.events, HardNatPairMet)) == sum(p.met is not None for p in punches)


def test_short_attempts_fail_in_the_logs() -> None:
    """The 3 s cases above hold attempts that ended unmet at their deadline (not only meetings)."""
    policy = attrs.evolve(preset("natrelay"), hard_nat_timeout_ms=SHORT_MS)
    failed = 0
    for seed in (1, 2, 3):
        trace = _trace(hard_nat(), policy, seed)
        failed += sum(p.met is None and p.stopped_at == p.deadline for t in trace.punches.values() for p in t)
    assert failed >= 3


_TRACES: dict[tuple[bool, Policy, int], Trace] = {}


def _trace(scenario: Scenario, policy: Policy, seed: int) -> Trace:
    key = (bool(scenario.outages), policy, seed)
    if key not in _TRACES:
        with tempfile.TemporaryDirectory() as where:
            _TRACES[key] = trace_of(record(scenario, policy, seed, Path(where) / "run.db"))
    return _TRACES[key]


def _compare(
    recorded: Policy, alternative: Policy, seed: int, min_share: float = 0.6
) -> tuple[list[str], int, int]:
    """Run `alternative` in the world of a `recorded` log and on the simulator (same scenario and
    seed); the peers compared, how many of them the alternative changed, and how many got a
    nearby answer. Not compared, as chance: peers the alternative asked something extrapolated
    about, lossy ones (as in test_whatif_vs_sim), and peers with an attempt answered from a
    recorded attempt of another number — the simulator draws attempt k's packets from k
    (sim_hard_nat: seed/peer/attempt), so that answer is one possible outcome, not that draw."""
    scenario = hard_nat()
    trace = _trace(scenario, recorded, seed)
    direct = _trace(scenario, alternative, seed)
    simulated = {p.peer: p for p in measure([e for _, e in direct.recorded], trace).peers}
    before = {p.peer: p for p in measure([e for _, e in trace.recorded], trace).peers}
    replay = run(trace, alternative)
    world = {p.peer: p for p in measure(replay.events, trace).peers}
    evidence = replay.world._hard.evidence
    other = {peer for (peer, attempt), (_, punch) in evidence.items() if punch and punch.attempt != attempt}
    chance = _chance(scenario, seed, trace) | trace.lossy | other
    clean = [peer for peer in world if not replay.world.extrapolated_by_peer.get(peer) and peer not in chance]
    assert len(clean) >= min_share * len(world), "too few peers compared"
    problems = [d for peer in clean if (d := _disagreement(world[peer], simulated[peer], alternative))]
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    # the compared peers' paths and attempt outcomes are the simulator's, found endpoints included
    simulated_events = tuple(e for _, e in direct.recorded)
    for peer in clean:
        assert _paths(replay.events, peer) == _paths(simulated_events, peer), _names(trace)[peer]
    changed = sum(1 for peer in clean if world[peer] != before[peer])
    nearby = {peer for (peer, _), (source, _) in evidence.items() if source == "nearby"}
    return clean, changed, len(nearby & set(clean))


def test_later_retries_are_answered_by_the_recorded_retries_and_agree_with_the_simulator() -> None:
    """Recorded: attempts of 3 s, failed ones retried after 60 s. Alternative: retried after 100 s.
    A retry at another time is answered by the recorded retry (nearby: its meeting after the same
    delay from the new start); nothing is extrapolated."""
    recorded = attrs.evolve(preset("natrelay"), hard_nat_timeout_ms=SHORT_MS)
    alternative = attrs.evolve(recorded, hard_nat_retry_ms=100_000)
    changed = nearby = 0
    for seed in (1, 2, 3, 5):
        _clean, more, shifted = _compare(recorded, alternative, seed)
        changed, nearby = changed + more, nearby + shifted
    assert changed >= 3 and nearby >= 3


def test_a_shorter_deadline_fails_the_attempts_that_met_later_as_the_simulator_does() -> None:
    """Recorded: natrelay's default (10 s). Alternative: 2 s. The same attempt (same start) is
    answered from the record: met if it met within 2 s, else failed at the new deadline."""
    recorded = preset("natrelay")
    alternative = attrs.evolve(recorded, hard_nat_timeout_ms=2_000)
    cut = 0
    for seed in (1, 2, 3, 4):
        trace = _trace(hard_nat(), recorded, seed)
        replay = run(trace, alternative)
        simulated = tuple(e for _, e in _trace(hard_nat(), alternative, seed).recorded)
        for peer in _names(trace):
            # the first attempt starts as recorded: its outcome is the recorded meeting cut at 2 s
            first = [_outcome(events, peer) for events in (replay.events, simulated)]
            assert first[0] == first[1], _names(trace)[peer]
            cut += first[0] is not None and first[0][0] == HardNatAttemptFailed.TYPE
        # the cut peers stay relayed longer than the log shows a relay to them working: extrapolated
        _compare(recorded, alternative, seed, min_share=0.3)
    assert cut >= 2


def _outcome(events: tuple[Event, ...], peer: str) -> tuple[str, int] | None:
    ends = _of(events, HardNatAttemptSucceeded, HardNatAttemptFailed)
    return next(((e.TYPE, e.at) for e in ends if e.peer == peer and e.attempt == 1), None)  # type: ignore[attr-defined]


def test_an_anchor_log_answers_attempts_by_the_model_and_the_peers_stay_relayed() -> None:
    """netbird makes no attempts: natrelay's in its log's world meet nobody (MODEL_UNTRIED_HARD_NAT),
    each counted as extrapolated for its peer, and the symmetric peers stay relayed to the end."""
    for seed in (1, 2):
        trace = _trace(hard_nat(), preset("netbird"), seed)
        assert not trace.punches
        replay = run(trace, preset("natrelay"))
        started = _of(replay.events, HardNatAttemptStarted)
        assert len(started) >= 5
        assert replay.world.answers[("hard_nat", "extrapolated")] == len(started)
        assert not {k for k in replay.world.answers if k[0] == "hard_nat" and k[1] != "extrapolated"}
        assert not _of(replay.events, HardNatPairMet, HardNatAttemptSucceeded)
        names = _names(trace)
        for peer in {e.peer for e in started}:  # type: ignore[attr-defined]
            tries = sum(1 for e in started if e.peer == peer)  # type: ignore[attr-defined]
            assert replay.world.extrapolated_by_peer[peer] >= tries
            assert _paths(replay.events, peer)[-1][0] in ("relay", HardNatAttemptFailed.TYPE), names[peer]
            assert not [path for path in _paths(replay.events, peer) if path[0] == "direct"], names[peer]


def test_turning_attempts_off_shows_the_time_relayed_while_the_found_pair_worked() -> None:
    """A meeting is evidence that the pair worked from then on (its renewals keep it so): kept
    relayed, a peer is "relayed while direct known" from the recorded meeting, not from the
    first renewal two minutes later."""
    trace = _trace(hard_nat(), preset("natrelay"), 1)
    replay = run(trace, attrs.evolve(preset("natrelay"), hard_nat_enabled=False))
    assert not _of(replay.events, HardNatAttemptStarted)
    figures = {p.name: p for p in measure(replay.events, trace).peers}
    names = _names(trace)
    for peer in ("sym-far", "sym-late"):
        key = next(k for k, name in names.items() if name == peer)
        (punch,) = trace.punches[key]  # one meeting, and the peer never changes its network
        assert punch.met is not None
        assert figures[peer].relayed_while_direct_ms >= trace.end - punch.met.at - 1_000, peer


def _world_at(trace: Trace, at: int) -> TraceWorld:
    world = TraceWorld(trace)
    world.poll(at)
    return world


def _start_like(punch: Punch, at: int, **change: int) -> StartHardNatAttempt:
    budget = {
        k: getattr(punch, k)
        for k in ("peer", "attempt", "role", "endpoint", "sockets", "probes", "rate_per_s")
    }
    return StartHardNatAttempt(**{**budget, "deadline": at + punch.deadline - punch.at, **change})


def test_answers_keep_to_the_budget_and_the_peers_epoch() -> None:
    """A recorded meeting that took more probes than the new budget, or came after the new deadline,
    is no meeting (the world's answer, before any stop); an attempt of a
    peer that left and came back is answered only from its own epoch's attempts, and a shifted
    meeting that would fall after a change of the peer's network does not come."""
    trace = _trace(hard_nat(), preset("natrelay"), 1)
    key = next(k for k, name in _names(trace).items() if name == "sym-leaves")
    first, again = trace.punches[key]  # attempt 1 (joined at 2 s), attempt 2 after rejoining at 320 s
    assert first.met is not None and again.met is not None and again.at >= 320_000
    delay = first.met.at - first.at
    for change in ({"probes": first.met.probes_sent - 1}, {"deadline": first.at + delay - 1}):
        world = _world_at(trace, first.at)
        world.execute(_start_like(first, first.at, **change), first.at)
        assert not _of(tuple(world.poll(first.deadline)), HardNatPairMet), change
        assert world.answers[("hard_nat", "recorded")] == 1
    # away (300-320 s): the peer's attempts are of other epochs
    world = _world_at(trace, 310_000)
    world.execute(_start_like(first, 310_000, attempt=9), 310_000)
    world.execute(StopHardNatAttempt(peer=key, attempt=9), 310_000 + 10_000)
    assert not _of(tuple(world.poll(320_000)), HardNatPairMet)
    assert world.answers[("hard_nat", "extrapolated")] == 1 and world.extrapolated_by_peer[key] == 1
    # just before it leaves: attempt 1's delay would end after the leave
    start = 300_000 - (first.met.at - first.at) + 100
    world = _world_at(trace, start)
    world.execute(_start_like(first, start, attempt=9), start)
    assert not _of(tuple(world.poll(start + 10_000)), HardNatPairMet)
    assert world.answers[("hard_nat", "nearby")] == 1


def test_no_meeting_holds_only_as_long_as_the_recorded_attempt_was_open() -> None:
    """An attempt the record shows stopped unmet early (the relay went down under it) answers "no
    meeting" up to that stop; kept open longer, the rest is extrapolated."""
    trace = _trace(hard_nat(outage=True), preset("natrelay"), 1)
    punch = next(p for t in trace.punches.values() for p in t if p.stopped_at and p.stopped_at < p.deadline)
    assert punch.stopped_at is not None
    for stop_at, source in ((punch.stopped_at, "recorded"), (punch.stopped_at + 1_000, "extrapolated")):
        world = _world_at(trace, punch.at)
        world.execute(_start_like(punch, punch.at), punch.at)
        world.poll(stop_at)
        world.execute(StopHardNatAttempt(peer=punch.peer, attempt=punch.attempt), stop_at)
        assert dict(world.answers) == {("hard_nat", source): 1}


def test_a_stop_voids_a_meeting_still_to_come() -> None:
    """The sockets are closed: a meeting the record has after the stop never comes."""
    trace = _trace(hard_nat(), preset("natrelay"), 1)
    punch = next(p for tries in trace.punches.values() for p in tries if p.met and p.met.at > p.at + 10)
    assert punch.met is not None
    for stop_at in (None, punch.met.at - 1):
        world = _world_at(trace, punch.at)
        world.execute(_start_like(punch, punch.at), punch.at)
        if stop_at is not None:
            world.poll(stop_at)
            world.execute(StopHardNatAttempt(peer=punch.peer, attempt=punch.attempt), stop_at)
        met = _of(tuple(world.poll(punch.deadline)), HardNatPairMet)
        assert met == ([punch.met] if stop_at is None else [])
        assert dict(world.answers) == {("hard_nat", "recorded"): 1}


def _names(trace: Trace) -> dict[str, str]:
    return {e.peer: e.name for _, e in trace.recorded if isinstance(e, PeerAdded)}


def _of(events: tuple[Event, ...], *kinds: type) -> list[Event]:
    return [e for e in events if isinstance(e, kinds)]


def _paths(events: tuple[Event, ...], peer: str) -> list[tuple[str, str | None]]:
    """The peer's path decisions and attempt outcomes (with their times), in order (relay session
    ids aside): the simulator draws an attempt's meeting delay from its number, not its start."""
    out: list[tuple[str, str | None]] = []
    for e in events:
        if getattr(e, "peer", None) != peer:
            continue
        if isinstance(e, PathUpgraded):
            out.append(("direct", e.endpoint))
        elif isinstance(e, RelayPathSelected):
            out.append(("relay", e.relay))
        elif isinstance(e, PathLost):
            out.append(("lost", e.path))
        elif isinstance(e, HardNatAttemptSucceeded | HardNatAttemptFailed):
            out.append((e.TYPE, f"{e.attempt} at {e.at}"))
    return out
