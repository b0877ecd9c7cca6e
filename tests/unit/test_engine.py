"""The engine, driven by hand with explicit times (as aioquic's tests drive time)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from natrelay.core import lifecycle as lc
from natrelay.core.commands import (
    CloseRelaySession,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.engine import Engine, EngineError, Reaction
from natrelay.core.events import (
    CandidatesUpdated,
    DirectAttemptTimedOut,
    DirectPathSelected,
    Event,
    HandshakeObserved,
    PathLost,
    PathSilent,
    PeerAdded,
    PeerRemoved,
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
from tests.conftest import make_key, policy

P, Q = make_key(1), make_key(2)
A, B, C = "198.51.100.1:51820", "192.168.1.2:51820", "203.0.113.7:4000"


def types(reaction: Reaction) -> list[str]:
    return [d.TYPE for d in reaction.decisions]


class Driver:
    """An engine plus the bookkeeping a test needs: every reaction, in order."""

    def __init__(self, chosen: Policy | None = None) -> None:
        self.engine = Engine()
        self.log: list[Event] = []
        self.feed(PolicySet(at=0, policy=chosen or policy()))

    def feed(self, event: Event) -> Reaction:
        reaction = self.engine.handle(event)
        self.log.append(event)
        self.log.extend(reaction.decisions)
        return reaction

    def until(self, end: int) -> list[Reaction]:
        """Tick at every deadline up to `end`."""
        reactions = []
        while (deadline := self.engine.next_deadline()) is not None and deadline <= end:
            reactions.append(self.feed(Tick(at=deadline)))
        return reactions

    def state(self, peer: str = P) -> str:
        return self.engine.peers[peer].state

    def relays(self, *names: str) -> None:
        for name in names:
            self.feed(RelayAnnounced(at=self.engine.now, relay=name, region="eu"))


def decisions(reactions: Iterable[Reaction]) -> list[str]:
    return [t for r in reactions for t in types(r)]


def test_a_new_peer_is_tried_at_once_and_connects_on_a_handshake() -> None:
    d = Driver(policy(parallel_endpoints=2))
    reaction = d.feed(PeerAdded(at=0, peer=P, candidates=(A, B, C)))
    assert types(reaction) == ["direct_attempt_started"] * 2
    assert [c.endpoint for c in reaction.commands if isinstance(c, TryDirectEndpoint)] == [A, B]
    assert d.state() == lc.DIRECT_TRYING
    reaction = d.feed(HandshakeObserved(at=30, peer=P, endpoint=B))
    assert types(reaction) == ["direct_path_selected"]
    assert SwitchPath(peer=P, endpoint=B) in reaction.commands
    assert d.state() == lc.DIRECT_CONNECTED
    assert d.engine.is_finished()


def test_rounds_cycle_through_the_candidates() -> None:
    d = Driver(policy(parallel_endpoints=1))
    d.feed(PeerAdded(at=0, peer=P, candidates=(A, B, C)))
    tried = [c.endpoint for r in d.until(20_000) for c in r.commands if isinstance(c, TryDirectEndpoint)]
    assert tried[:3] == [B, C, A]


def test_relay_fires_exactly_after_min_direct_attempts_failed_rounds() -> None:
    d = Driver(policy(min_direct_attempts=3))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    seen = decisions(d.until(100_000))
    failures_before_relay = seen[: seen.index("relay_eligibility_reached")].count("direct_round_failed")
    assert failures_before_relay == 3
    assert seen[seen.index("relay_eligibility_reached") + 1] == "relay_chosen"
    assert d.engine.attempts.attempts(P) >= 3


def test_relay_failover_moves_to_the_next_ranked_relay() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.relays("r1", "r2")
    d.feed(RelayHealthMeasured(at=0, relay="r1", rtt_ms=10, load=0))
    reaction = d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    assert ConnectViaRelay(peer=P, relay="r1", deadline=5000) in reaction.commands
    reaction = d.feed(RelaySessionFailed(at=100, peer=P, relay="r1", reason="allocation refused"))
    assert types(reaction) == ["relay_chosen"]
    assert reaction.decisions[0].relay == "r2"  # type: ignore[attr-defined]
    assert "failover after r1" in reaction.decisions[0].reason  # type: ignore[attr-defined]
    d.feed(RelaySessionEstablished(at=200, peer=P, relay="r2", session="s9"))
    assert d.state() == lc.RELAY_CONNECTED
    assert d.engine.relay_cache.open_session(P) == ("r2", "s9")


def test_a_relay_that_never_answers_is_abandoned_at_its_deadline() -> None:
    d = Driver(policy(min_direct_attempts=0, relay_connect_timeout_ms=2000))
    d.relays("r1", "r2")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    seen = decisions(d.until(2000))
    assert "relay_abandoned" in seen
    assert d.engine.peers[P].relay_pending == "r2"


def test_with_no_relay_the_peer_waits_and_takes_one_as_soon_as_it_is_announced() -> None:
    d = Driver(policy(min_direct_attempts=0, relay_retry_ms=60_000))
    reaction = d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    assert "relay_unavailable" in types(reaction)
    reaction = d.feed(RelayAnnounced(at=500, relay="late", region="us"))
    assert types(reaction) == ["relay_chosen"]


def test_a_relayed_peer_keeps_probing_and_upgrades_when_direct_answers() -> None:
    d = Driver(policy(min_direct_attempts=0, upgrade_probe_interval_ms=1000))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(RelaySessionEstablished(at=50, peer=P, relay="r1", session="s1"))
    assert d.engine.peers[P].next_probe_at == 1050
    probes = decisions(d.until(1050))
    assert "direct_attempt_started" in probes
    reaction = d.feed(HandshakeObserved(at=1080, peer=P, endpoint=A))
    assert types(reaction) == ["path_upgraded"]
    assert CloseRelaySession(peer=P, relay="r1", session="s1") in reaction.commands
    assert d.state() == lc.DIRECT_CONNECTED
    assert d.engine.relay_cache.open_session(P) is None


def test_hysteresis_holds_an_upgrade_back_to_a_path_just_lost() -> None:
    d = Driver(policy(min_direct_attempts=0, switch_hysteresis_ms=10_000, handshake_freshness_ms=60_000))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(HandshakeObserved(at=10, peer=P, endpoint=A))
    assert d.state() == lc.DIRECT_CONNECTED
    assert "path_lost" in decisions(d.until(60_010))
    d.feed(RelaySessionEstablished(at=60_100, peer=P, relay="r1", session="s1"))
    assert d.state() == lc.RELAY_CONNECTED
    reaction = d.feed(HandshakeObserved(at=61_000, peer=P, endpoint=A))
    assert "path_upgraded" not in types(reaction), "A was lost 1 s ago: hold"
    held = d.until(70_010)
    upgrades = [x for r in held for x in r.decisions if x.TYPE == "path_upgraded"]
    assert [u.at for u in upgrades] == [70_010]
    assert "held 10000 ms" in upgrades[0].reason  # type: ignore[attr-defined]


def test_losing_a_direct_path_retries_the_cached_endpoint_first() -> None:
    d = Driver(policy(parallel_endpoints=1, handshake_freshness_ms=180_000))
    d.feed(PeerAdded(at=0, peer=P, candidates=(A, B)))
    d.feed(HandshakeObserved(at=10, peer=P, endpoint=B))
    reactions = d.until(180_010)
    lost = next(x for r in reactions for x in r.decisions if isinstance(x, PathLost))
    assert lost.path == B and lost.at == 180_010
    retry = next(c for r in reactions for c in r.commands if isinstance(c, TryDirectEndpoint))
    assert retry.endpoint == B, "the cached working endpoint goes first"
    assert d.state() == lc.DIRECT_TRYING


def test_losing_a_relay_fails_over_and_keeps_trying_direct() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.relays("r1", "r2")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(RelaySessionEstablished(at=50, peer=P, relay="r1", session="s1"))
    reaction = d.feed(RelaySessionClosed(at=60, peer=P, relay="r1", session="s1", reason="relay died"))
    assert types(reaction)[0] == "path_lost"
    assert "relay_chosen" in types(reaction)
    chosen = next(x for x in reaction.decisions if x.TYPE == "relay_chosen")
    assert chosen.relay == "r2"  # type: ignore[attr-defined]
    assert d.state() == lc.RELAY_ELIGIBLE
    # ...and keeps trying direct: connect rounds on A go on while the failover runs
    rounds = [
        c
        for r in [reaction, *d.until(30_000)]
        for c in r.commands
        if isinstance(c, TryDirectEndpoint) and c.purpose == "connect"
    ]
    assert rounds, "no direct round after the relay was lost"
    assert {c.endpoint for c in rounds} == {A}
    assert len({c.attempt for c in rounds}) >= 2, "a single round is not keeping on trying"


def test_withdrawing_the_relay_in_use_loses_the_path_and_fails_over() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.relays("r1", "r2")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(RelaySessionEstablished(at=50, peer=P, relay="r1", session="s1"))
    reaction = d.feed(RelayWithdrawn(at=70, relay="r1"))
    assert types(reaction)[:2] == ["path_lost", "relay_chosen"]


@pytest.mark.parametrize(
    ("policy", "access", "first"),
    [
        (policy(mode="relay_first"), "auto", "relay_eligibility_reached"),
        (policy(), "relay_only", "relay_eligibility_reached"),
        (policy(), "direct_only", "direct_attempt_started"),
        (policy(relays_enabled=False), "auto", "direct_attempt_started"),
    ],
)
def test_modes_and_per_peer_overrides(policy: Policy, access: str, first: str) -> None:
    d = Driver(policy)
    d.relays("r1")
    reaction = d.feed(PeerAdded(at=0, peer=P, candidates=(A,), access=access))  # type: ignore[arg-type]
    assert types(reaction)[0] == first
    seen = decisions(d.until(120_000))
    if access == "relay_only":
        assert "direct_attempt_started" not in types(reaction) + seen
    if access == "direct_only" or not policy.relays_enabled:
        assert "relay_chosen" not in seen


def test_relay_first_connects_through_a_relay_and_probes_direct_at_once() -> None:
    d = Driver(policy(mode="relay_first"))
    d.relays("r1")
    reaction = d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    assert types(reaction) == ["relay_eligibility_reached", "direct_attempt_started", "relay_chosen"]


def test_removing_a_peer_closes_its_relay_session_and_forgets_it() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(RelaySessionEstablished(at=50, peer=P, relay="r1", session="s1"))
    reaction = d.feed(PeerRemoved(at=60, peer=P))
    assert CloseRelaySession(peer=P, relay="r1", session="s1") in reaction.commands
    assert ForgetPeer(peer=P) in reaction.commands
    assert d.state() == lc.REMOVED
    assert d.engine.next_deadline() is None
    reaction = d.feed(PeerAdded(at=70, peer=P, candidates=(A,)))
    assert d.state() != lc.REMOVED


@pytest.mark.parametrize(
    "observation",
    [
        PeerRemoved(at=5, peer=Q),
        HandshakeObserved(at=5, peer=Q, endpoint=A),
        DirectAttemptTimedOut(at=5, peer=P, endpoint=C, attempt=9),
        RelayHealthMeasured(at=5, relay="unknown", rtt_ms=1, load=1),
        RelaySessionFailed(at=5, peer=P, relay="r1"),
        RelaySessionClosed(at=5, peer=P, relay="r1", session="s"),
        RelayAnnounced(at=5, relay="r9", region="eu", expires_at=4),
        RelayAnnounced(at=5, relay="r9", region="eu", expires_at=5 + 86_400_001),
    ],
    ids=lambda e: e.TYPE,
)
def test_observations_that_do_not_apply_are_rejected_with_a_reason(observation: Event) -> None:
    d = Driver()
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    before = d.engine.state()
    reaction = d.feed(observation)
    assert types(reaction) == ["observation_rejected"]
    assert reaction.decisions[0].reason  # type: ignore[attr-defined]
    after = d.engine.state()
    before["now"] = after["now"]
    assert after == before, "a rejected observation changes nothing"


def test_an_unsolicited_relay_session_is_rejected_and_closed() -> None:
    d = Driver()
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    reaction = d.feed(RelaySessionEstablished(at=5, peer=P, relay="r1", session="s1"))
    assert types(reaction) == ["observation_rejected"]
    assert reaction.commands == (CloseRelaySession(peer=P, relay="r1", session="s1"),)


def test_a_duplicate_observation_is_idempotent() -> None:
    d = Driver()
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(HandshakeObserved(at=10, peer=P, endpoint=A))
    state = d.engine.state()
    assert types(d.feed(HandshakeObserved(at=10, peer=P, endpoint=A))) == []
    assert d.engine.state() == state
    d.feed(PeerAdded(at=10, peer=P, candidates=(A,)))
    assert d.engine.state() == state


def test_a_clock_going_backwards_moves_no_timer_back() -> None:
    d = Driver()
    d.feed(PeerAdded(at=10_000, peer=P, candidates=(A,)))
    deadline = d.engine.next_deadline()
    d.feed(CandidatesUpdated(at=2_000, peer=P, candidates=(A, B)))
    assert d.engine.now == 10_000
    assert d.engine.next_deadline() == deadline
    reaction = d.feed(HandshakeObserved(at=1, peer=P, endpoint=A))
    assert reaction.decisions[0].at == 10_000


def test_the_seed_api_tracks_remaining_peers_and_fires_the_relay() -> None:
    """The seed's get_remaining_peers returned nothing, so its relay never fired."""
    d = Driver(policy(min_direct_attempts=2))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(PeerAdded(at=0, peer=Q, candidates=(B,)))
    engine = d.engine
    assert engine.remaining_peers() == sorted([P, Q])
    assert not engine.should_attempt_relay(P)
    assert engine.should_attempt_relay(P, 2)
    d.feed(HandshakeObserved(at=5, peer=Q, endpoint=B))
    assert engine.remaining() == 1
    now = 1000
    while not engine.should_attempt_relay(P):
        now += 1000
        d.feed(Tick(at=now))
        engine.step_with_relay(now + 1)
    assert [s.relay for s in engine.get_relay_candidates(P)] == ["r1"]
    assert engine.peers[P].relay_pending == "r1"
    d.feed(RelaySessionEstablished(at=engine.now, peer=P, relay="r1", session="s"))
    assert engine.is_finished()


def test_snapshots_restore_an_equal_engine_that_decides_the_same() -> None:
    d = Driver(policy(min_direct_attempts=1))
    d.relays("r1", "r2")
    for peer in (P, Q):
        d.feed(PeerAdded(at=0, peer=peer, candidates=(A, B)))
    d.until(4000)
    restored = Engine.from_state(d.engine.state())
    assert restored.state() == d.engine.state()
    assert restored.next_deadline() == d.engine.next_deadline()
    tick = Tick(at=d.engine.next_deadline() or 0)
    assert restored.handle(tick) == d.engine.handle(tick)


def test_folding_the_decisions_rebuilds_the_live_state() -> None:
    d = Driver(policy(min_direct_attempts=1))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A, B)))
    d.until(3000)
    d.feed(RelaySessionEstablished(at=d.engine.now, peer=P, relay="r1", session="s1"))
    d.until(60_000)
    assert Engine.rebuilt(d.log).state() == d.engine.state()


def test_two_engines_fed_the_same_observations_decide_identically() -> None:
    def run() -> list[Event]:
        d = Driver()
        d.relays("b", "a")
        for peer in (Q, P):
            d.feed(PeerAdded(at=0, peer=peer, candidates=(C, A, B)))
        d.until(200_000)
        return d.log

    assert run() == run()


def test_handle_refuses_decisions_and_apply_refuses_impossible_ones() -> None:
    d = Driver()
    with pytest.raises(EngineError, match="takes observations"):
        d.engine.handle(DirectPathSelected(at=0, peer=P, endpoint=A))
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(HandshakeObserved(at=1, peer=P, endpoint=A))
    d.engine.apply(PathLost(at=2, peer=P, path_kind="direct", path=A))  # direct_connected -> pending
    assert d.state() == lc.PENDING
    with pytest.raises(lc.InvalidTransition):
        d.engine.apply(PathLost(at=3, peer=P, path_kind="direct", path=A))  # pending has no path


def test_a_silent_path_is_lost_at_once_and_a_relay_session_released() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.relays("r1", "r2")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(RelaySessionEstablished(at=50, peer=P, relay="r1", session="s1"))
    reaction = d.feed(PathSilent(at=1000, peer=P, silent_ms=8000))
    assert types(reaction)[0] == "path_lost"
    assert "relay_chosen" in types(reaction)
    assert "nothing received on r1 for 8 s" in reaction.decisions[0].reason  # type: ignore[attr-defined]
    assert CloseRelaySession(peer=P, relay="r1", session="s1") in reaction.commands
    assert types(d.feed(PathSilent(at=1100, peer=P, silent_ms=8000))) == ["observation_rejected"]


def test_a_peer_probes_at_once_when_its_relay_comes_up_and_drops_the_stale_round() -> None:
    d = Driver(policy(mode="relay_first", upgrade_probe_on_relay=True))
    d.relays("r1")
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    reaction = d.feed(RelaySessionEstablished(at=80, peer=P, relay="r1", session="s1"))
    assert types(reaction) == ["relay_path_selected", "direct_round_failed", "direct_attempt_started"]
    probe = reaction.decisions[-1]
    assert probe.purpose == "upgrade_probe" and probe.at == 80  # type: ignore[attr-defined]
    assert "replaces this round" in reaction.decisions[1].reason  # type: ignore[attr-defined]
    assert types(d.feed(HandshakeObserved(at=110, peer=P, endpoint=A))) == ["path_upgraded"]
