"""The trace-driven world's answers to questions the log did not ask in exactly that way.

Each test records a few observations (the engine decides the commands, as in a
real log), builds the world from them, and asks it something the recorded run
did not: at another time, with another wait, while a relay was down.
"""

from __future__ import annotations

from natrelay.adapters.whatif.trace import Trace, build_trace
from natrelay.adapters.whatif.trace_world import RELAY_FAIL_MS, TraceWorld
from natrelay.core.commands import ConnectViaRelay, TryDirectEndpoint
from natrelay.core.events import (
    DirectAttemptTimedOut,
    Event,
    HandshakeObserved,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
    Tick,
)
from natrelay.core.policy import Policy

PEER = "A" * 43 + "="
ENDPOINT = "37.0.0.1:51820"


def trace(*observations: Event) -> Trace:
    events = [PolicySet(at=0, policy=Policy()), RelayAnnounced(at=0, relay="r1", region="eu"), *observations]
    return build_trace("local", ((seq, "s", event) for seq, event in enumerate(events, 1)))


def answers(world: TraceWorld, until: int) -> list[Event]:
    """What the world answers up to `until` (the recorded exogenous events left out)."""
    kinds = (HandshakeObserved, RelaySessionEstablished, RelaySessionFailed)
    return [event for event in world.poll(until) if isinstance(event, kinds)]


def test_a_relay_the_log_shows_down_fails_and_answers_again_once_announced() -> None:
    recorded = trace(
        PeerAdded(at=0, peer=PEER, candidates=(ENDPOINT,)),
        RelaySessionEstablished(at=120, peer=PEER, relay="r1", session="s1"),
        RelaySessionClosed(at=100_000, peer=PEER, relay="r1", session="s1", reason="relay down"),
        RelayWithdrawn(at=115_000, relay="r1"),
        RelayAnnounced(at=200_000, relay="r1", region="eu"),
    )
    assert recorded.down["r1"] == [(100_000, 200_000)]
    world = TraceWorld(recorded)
    answers(world, 200_000)
    world.execute(ConnectViaRelay(peer=PEER, relay="r1", deadline=160_000), 150_000)
    (failed,) = answers(world, 160_000)
    assert isinstance(failed, RelaySessionFailed) and failed.at == 150_000 + RELAY_FAIL_MS
    world.execute(ConnectViaRelay(peer=PEER, relay="r1", deadline=260_000), 250_000)
    (established,) = answers(world, 260_000)
    assert isinstance(established, RelaySessionEstablished) and established.at == 250_120
    assert world.answers[("relay", "nearby")] == 1
    assert world.answers[("relay", "extrapolated")] == 1  # no failure of r1 recorded: the stated model


def test_an_answer_moved_in_time_needs_its_endpoint_still_working() -> None:
    recorded = trace(
        PeerAdded(at=0, peer=PEER, candidates=(ENDPOINT,)),
        HandshakeObserved(at=50, peer=PEER, endpoint=ENDPOINT),
        HandshakeObserved(at=120_050, peer=PEER, endpoint=ENDPOINT),  # renewal; the next never comes
        RelayHealthMeasured(at=245_000, relay="r1", rtt_ms=40, load=0),
    )
    works = [(fact.at, fact.works) for fact in recorded.facts[(PEER, ENDPOINT)]]
    assert works == [(50, True), (120_050, True), (240_050, False)]
    world = TraceWorld(recorded)
    world.execute(TryDirectEndpoint(peer=PEER, endpoint=ENDPOINT, attempt=2, deadline=101_000), 100_000)
    assert answers(world, 101_000) == [HandshakeObserved(at=100_050, peer=PEER, endpoint=ENDPOINT)]
    world.execute(TryDirectEndpoint(peer=PEER, endpoint=ENDPOINT, attempt=3, deadline=245_000), 244_000)
    assert answers(world, 246_000) == []  # dead since the renewal that did not come


def test_a_lost_probe_over_a_session_says_nothing_of_a_handshake_without_one() -> None:
    recorded = trace(
        PeerAdded(at=0, peer=PEER, candidates=(ENDPOINT,)),
        RelaySessionEstablished(at=40, peer=PEER, relay="r1", session="s1"),
        HandshakeObserved(at=60, peer=PEER, endpoint=ENDPOINT),
        Tick(at=2_000),
    )
    attempts = recorded.attempts[(PEER, ENDPOINT)]
    assert [(a.at, a.warm, a.answered_at) for a in attempts] == [(0, False, 60), (40, True, None)]
    world = TraceWorld(recorded)
    world.execute(TryDirectEndpoint(peer=PEER, endpoint=ENDPOINT, attempt=5, deadline=10_000), 5_000)
    assert answers(world, 10_000) == [HandshakeObserved(at=5_060, peer=PEER, endpoint=ENDPOINT)]


def test_a_log_that_reports_timeouts_gets_them_from_the_world_too() -> None:
    recorded = trace(
        PeerAdded(at=0, peer=PEER, candidates=(ENDPOINT,)),
        DirectAttemptTimedOut(at=1_000, peer=PEER, endpoint=ENDPOINT, attempt=1),
        Tick(at=2_000),
    )
    assert recorded.reports_timeouts
    world = TraceWorld(recorded)
    world.poll(2_000)
    world.execute(TryDirectEndpoint(peer=PEER, endpoint=ENDPOINT, attempt=4, deadline=6_000), 5_000)
    assert list(world.poll(6_000)) == [
        DirectAttemptTimedOut(at=6_000, peer=PEER, endpoint=ENDPOINT, attempt=4)
    ]
    silent = TraceWorld(trace(PeerAdded(at=0, peer=PEER, candidates=(ENDPOINT,)), Tick(at=2_000)))
    silent.poll(2_000)
    silent.execute(TryDirectEndpoint(peer=PEER, endpoint=ENDPOINT, attempt=4, deadline=6_000), 5_000)
    assert list(silent.poll(6_000)) == []  # a log without them (the simulator's, the agent's): none
