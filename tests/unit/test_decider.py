"""The Decider split of the engine (issue 11): evolve never decides, decide changes state only by evolving.

Driven by the recorded observations of tests/fixtures/pre_split.sqlite (three
nodes: direct and relayed paths, failover, an upgrade, lost paths, a rejection).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.core.decide import decide
from natrelay.core.engine import Engine
from natrelay.core.events import Event, HandshakeObserved, PolicySet
from natrelay.core.evolve import evolve
from natrelay.core.state import State
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_events
from tests.conftest import make_key

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_split.sqlite"
NODES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Event]]]:
    copy = tmp_path_factory.mktemp("decider") / "pre_split.sqlite"
    shutil.copyfile(FIXTURE, copy)
    with EventLog.open(str(copy)) as log:
        yield {node: [event for _seq, _stream, event in node_events(log, node)] for node in NODES}


def _fresh(first: Event) -> Engine:
    """As verify does: a node's first observation may set its policy."""
    return Engine(first.policy) if type(first) is PolicySet else Engine()


def _copy(engine: Engine) -> Engine:
    return Engine.from_state(engine.state())


@pytest.mark.parametrize("node", NODES)
def test_evolve_never_decides(logged: dict[str, list[Event]], node: str) -> None:
    engine = Engine()
    plain = State()  # no reaction buffers, no decide: the fold needs none
    for event in logged[node]:
        assert evolve(engine, event) is None
        assert engine._decisions == [] and engine._commands == [], f"evolve({event.TYPE}) decided"
        evolve(plain, event)
    assert Engine.state(plain) == engine.state()  # type: ignore[arg-type]
    assert engine.state() == Engine.rebuilt(logged[node]).state()


@pytest.mark.parametrize("node", NODES)
def test_decide_changes_state_only_by_evolving_the_observation_and_its_decisions(
    logged: dict[str, list[Event]], node: str
) -> None:
    observations = [event for event in logged[node] if event.KIND == "observation"]
    live = _fresh(observations[0])
    decided = 0
    for observation in observations:
        before = _copy(live)
        untouched = before.state()
        reaction = decide(live, observation)
        decided += len(reaction.decisions)
        # evolving what decide returned into the state it started from gives its state
        shadow = _copy(before)
        for event in (observation, *reaction.decisions):
            evolve(shadow, event)
        assert shadow.state() == live.state(), f"{node}: decide({observation.TYPE}) changed more"
        assert before.state() == untouched, "a copy of the state is independent of the live one"
        assert all(decision.KIND == "decision" for decision in reaction.decisions)
    assert decided > 0
    assert live.state() == Engine.rebuilt(logged[node]).state()


@pytest.mark.parametrize("node", NODES)
def test_decide_reads_nothing_but_the_state(logged: dict[str, list[Event]], node: str) -> None:
    """A copy restored from state() decides what the live engine decides (ticks aside: a
    restored timer index may clamp a wake-up to now + 1, so only non-tick reactions count)."""
    observations = [event for event in logged[node] if event.KIND == "observation"]
    live = _fresh(observations[0])
    for observation in observations:
        if observation.TYPE != "tick":
            copy = _copy(live)
            assert decide(copy, observation) == decide(live, observation)
            assert copy.state() == live.state()
        else:
            decide(live, observation)


def test_a_rejected_observation_changes_nothing_but_now() -> None:
    engine = Engine()
    before = engine.state()
    reaction = decide(engine, HandshakeObserved(at=5, peer=make_key(99), endpoint="198.51.100.1:51820"))
    assert [d.TYPE for d in reaction.decisions] == ["observation_rejected"]
    assert reaction.commands == ()
    assert engine.state() == {**before, "now": 5}


def test_a_repeated_relay_announcement_for_a_peer_with_no_usable_relay_settles() -> None:
    """Found by the fuzz after the split: the announcement's one-off "retry now" was read on
    every step, so a peer whose only relay was over max load decided relay_unavailable forever."""
    import base64

    from natrelay.core import events as E
    from natrelay.core.engine import Engine
    from natrelay.core.policy import Policy

    policy = Policy(
        mode="direct_first", min_direct_attempts=0, max_relay_load=50, relay_connect_timeout_ms=1000
    )
    engine = Engine(policy)
    peer = base64.b64encode(bytes([1] * 32)).decode()
    announced = E.RelayAnnounced(at=0, relay="relay-a", region="eu", capacity=100)
    for event in (E.PolicySet(at=0, policy=policy), E.PeerAdded(at=0, peer=peer, candidates=()), announced):
        engine.handle(event)
    deadline = engine.next_deadline()
    assert deadline is not None
    engine.handle(E.Tick(at=deadline))
    engine.handle(E.RelayHealthMeasured(at=deadline, relay="relay-a", rtt_ms=5, load=79))
    again = engine.handle(announced)
    assert [d.TYPE for d in again.decisions] == ["relay_unavailable"]
