"""Duplicate observations and a clock that goes backwards, under Hypothesis.

Scenarios are drawn step by step from what the engine asked for (the commands
it returned): answers to direct attempts, timeouts, relay sessions, plus peers,
candidates, relays and ticks. Times jitter backwards as well as forwards.

- Clock: `now` is the largest time seen, every decision is stamped with it,
  no timer is ever set at or before it, and the projections a replay folds
  from the log equal the live ones; a second engine re-deciding the logged
  observations takes exactly the same decisions.
- Duplicates: an observation delivered twice in a row changes no state the
  second time, and is answered at most with `observation_rejected`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.core.commands import ConnectViaRelay, TryDirectEndpoint
from natrelay.core.engine import Engine
from natrelay.core.events import (
    CandidatesUpdated,
    DirectAttemptTimedOut,
    Event,
    HandshakeObserved,
    ObservationRejected,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    Tick,
)
from natrelay.core.policy import Policy
from tests.conftest import make_key

PEERS = [make_key(200 + i) for i in range(3)]
ENDPOINTS = ["198.51.100.1:51820", "10.0.0.2:51820", "203.0.113.9:4000"]
RELAYS = ["r1", "r2"]
POLICY = Policy(
    mode="direct_first", min_direct_attempts=1, attempt_timeout_ms=300, relay_connect_timeout_ms=500
)


def draw_observation(data: Any, engine: Engine, pending: list[Any], at: int) -> Event:
    kind = data.draw(st.sampled_from(["peer", "candidates", "remove", "relay", "health", "answer", "tick"]))
    peer = data.draw(st.sampled_from(PEERS))
    if kind == "answer" and pending:
        command = data.draw(st.sampled_from(pending))
        outcome = data.draw(st.sampled_from(["ok", "fail"]))
        if isinstance(command, TryDirectEndpoint):
            if outcome == "ok":
                return HandshakeObserved(at=at, peer=command.peer, endpoint=command.endpoint)
            return DirectAttemptTimedOut(
                at=at, peer=command.peer, endpoint=command.endpoint, attempt=command.attempt
            )
        if outcome == "ok":
            session = f"s{at}"
            if data.draw(st.booleans()):
                return RelaySessionEstablished(at=at, peer=command.peer, relay=command.relay, session=session)
            return RelaySessionClosed(at=at, peer=command.peer, relay=command.relay, session=session)
        return RelaySessionFailed(at=at, peer=command.peer, relay=command.relay, reason="refused")
    if kind == "peer":
        chosen = data.draw(st.lists(st.sampled_from(ENDPOINTS), min_size=1, max_size=3, unique=True))
        return PeerAdded(at=at, peer=peer, candidates=tuple(chosen), name="p")
    if kind == "candidates":
        chosen = data.draw(st.lists(st.sampled_from(ENDPOINTS), max_size=3, unique=True))
        return CandidatesUpdated(at=at, peer=peer, candidates=tuple(chosen))
    if kind == "remove":
        return PeerRemoved(at=at, peer=peer)
    if kind == "relay":
        return RelayAnnounced(at=at, relay=data.draw(st.sampled_from(RELAYS)), region="eu")
    if kind == "health":
        relay = data.draw(st.sampled_from(RELAYS))
        return RelayHealthMeasured(at=at, relay=relay, rtt_ms=data.draw(st.integers(1, 300)), load=10)
    return Tick(at=at)


def scenario(data: Any, *, backwards: bool, duplicates: bool) -> None:
    engine = Engine(POLICY)
    logged: list[Event] = [PolicySet(at=0, policy=POLICY)]
    engine.handle(logged[0])
    pending: list[Any] = []
    clock = 0
    highest = 0
    for _ in range(data.draw(st.integers(5, 40))):
        step = data.draw(st.integers(-2_000 if backwards else 0, 1_500))
        clock = max(0, clock + step)
        observation = draw_observation(data, engine, pending, clock)
        deadline_before = engine.next_deadline()
        reaction = engine.handle(observation)
        late = observation.at < highest
        highest = max(highest, observation.at)
        logged.append(observation)
        logged.extend(reaction.decisions)
        assert engine.now == highest
        assert all(decision.at == engine.now for decision in reaction.decisions)
        deadline = engine.next_deadline()
        if late:  # a late observation moves no timer back (new ones start after now)
            floor = engine.now + 1 if deadline_before is None else min(deadline_before, engine.now + 1)
            assert deadline is None or deadline >= floor
        pending = [c for c in pending if c.deadline > engine.now]
        pending += [c for c in reaction.commands if isinstance(c, TryDirectEndpoint | ConnectViaRelay)]
        pending = pending[-12:]
        if duplicates and data.draw(st.booleans()):
            before = engine.state()
            again = engine.handle(observation)
            assert all(isinstance(d, ObservationRejected) for d in again.decisions), again.decisions
            after = engine.state()
            assert after == before, (observation, [k for k in before if before[k] != after[k]])
            logged.append(observation)
            logged.extend(again.decisions)
    # Projections: the fold of the log equals the live engine.
    assert Engine.rebuilt(logged).state() == engine.state()
    # Decisions: a second engine re-deciding the logged observations agrees exactly.
    again_engine = Engine(POLICY)
    redecided: list[Event] = []
    for event in logged:
        if event.KIND == "observation":
            redecided.append(event)
            redecided.extend(again_engine.handle(event).decisions)
    assert redecided == logged


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_clock_going_backwards_corrupts_neither_timers_nor_projections(data: Any) -> None:
    scenario(data, backwards=True, duplicates=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_duplicate_observations_are_idempotent(data: Any) -> None:
    scenario(data, backwards=True, duplicates=True)
