"""Issue 13 in the engine: acting on change at once, and relay capacity as the engine counts it."""

from __future__ import annotations

from natrelay.core import lifecycle as lc
from natrelay.core.commands import CloseRelaySession, ConnectViaRelay, TryDirectEndpoint
from natrelay.core.engine import Engine
from natrelay.core.events import (
    CandidatesUpdated,
    HandshakeObserved,
    LocalAddressesChanged,
    PathSilent,
    PeerAdded,
    PeerRemoved,
    RelayAnnounced,
    RelaySessionEstablished,
)
from tests.conftest import make_key, policy
from tests.unit.test_engine import Driver

P = make_key(1)
A, NEW = "198.51.100.1:51820", "198.51.100.9:40000"


def _direct(d: Driver) -> None:
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.feed(HandshakeObserved(at=50, peer=P, endpoint=A))
    assert d.state() == lc.DIRECT_CONNECTED


def test_a_new_candidate_of_a_directly_connected_peer_is_probed_at_once_and_taken() -> None:
    d = Driver(policy(min_direct_attempts=3))
    _direct(d)
    reaction = d.feed(CandidatesUpdated(at=10_000, peer=P, candidates=(NEW,)))
    probes = [c for c in reaction.commands if isinstance(c, TryDirectEndpoint)]
    assert [c.endpoint for c in probes] == [NEW] or NEW in [c.endpoint for c in probes]
    assert all(c.purpose == "upgrade_probe" for c in probes)
    assert d.state() == lc.DIRECT_CONNECTED  # the live path stays while the probe is out
    d.feed(HandshakeObserved(at=10_060, peer=P, endpoint=NEW))
    assert d.engine.peers[P].path == NEW


def test_a_change_of_our_own_addresses_reprobes_a_connected_peer() -> None:
    d = Driver(policy(min_direct_attempts=3))
    _direct(d)
    reaction = d.feed(LocalAddressesChanged(at=20_000, addresses=("203.0.113.5:51820",)))
    assert any(isinstance(c, TryDirectEndpoint) for c in reaction.commands)
    # a failed probe leaves the live path alone and does not keep probing
    d.until(30_000)
    assert d.state() == lc.DIRECT_CONNECTED and d.engine.peers[P].next_probe_at is None


def test_no_more_peers_are_sent_to_a_relay_than_its_capacity() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.feed(RelayAnnounced(at=0, relay="small", region="eu", capacity=2))
    keys = [make_key(10 + i) for i in range(4)]
    sent = []
    for key in keys:
        reaction = d.feed(PeerAdded(at=0, peer=key, candidates=(A,)))
        sent += [c.peer for c in reaction.commands if isinstance(c, ConnectViaRelay)]
    assert len(sent) == 2, "connects in flight count against the capacity"
    d.feed(RelaySessionEstablished(at=100, peer=sent[0], relay="small", session="s1"))
    assert d.engine.relay_held == {"small": 2}
    rebuilt = Engine.from_state(d.engine.state())
    assert rebuilt.relay_held == {"small": 2}


def test_a_peer_waiting_for_a_full_relay_takes_the_slot_the_moment_it_frees() -> None:
    d = Driver(policy(min_direct_attempts=0))
    d.feed(RelayAnnounced(at=0, relay="one", region="eu", capacity=1))
    first, second = make_key(20), make_key(21)
    d.feed(PeerAdded(at=0, peer=first, candidates=(A,)))
    reaction = d.feed(PeerAdded(at=0, peer=second, candidates=(A,)))
    assert "relay_unavailable" in [e.TYPE for e in reaction.decisions]
    d.feed(RelaySessionEstablished(at=100, peer=first, relay="one", session="s1"))
    reaction = d.feed(PeerRemoved(at=1_000, peer=first))
    assert ConnectViaRelay(peer=second, relay="one", deadline=6_000) in reaction.commands


def test_a_probe_round_outlived_by_its_lost_direct_path_fails_in_pending_and_the_peer_reconnects() -> None:
    """Found by the fuzz: the path's silence arrives after the probe round's deadline (no
    Tick in between); the round then failed in pending and the lifecycle raised
    InvalidTransition. Kills a lifecycle without that row, and a fix that forgets the
    round (the next connect round must count on from it: endpoints rotate by round)."""
    d = Driver(policy(min_direct_attempts=3))
    _direct(d)
    d.feed(CandidatesUpdated(at=10_000, peer=P, candidates=(NEW,)))
    probe_round = d.engine.attempts.open_round(P)
    assert probe_round is not None and probe_round.deadline < 20_000
    reaction = d.feed(PathSilent(at=20_000, peer=P, silent_ms=5_000))
    kinds = [e.TYPE for e in reaction.decisions]
    assert kinds[:2] == ["path_lost", "direct_round_failed"], kinds
    assert d.state() == lc.DIRECT_TRYING  # reconnecting: a connect round started at once
    connect = d.engine.attempts.open_round(P)
    assert connect is not None and connect.purpose == "connect"
    assert connect.attempt == probe_round.attempt + 1
    assert d.engine.attempts.attempts(P) == 0  # a failed probe round is no failed connect


def test_a_peer_that_reports_new_candidates_retries_its_relays_at_once() -> None:
    """Kills waiting out relay_retry_ms after a peer's unanswered relay connects when the peer
    reports from a new network (mutation: `_try_again_now` without the relay retry -> no
    ConnectViaRelay, the peer waits 10 s more; mesh seed 7: a recovery of 14.6 s)."""
    d = Driver(policy(min_direct_attempts=0, relay_connect_timeout_ms=6_000, relay_retry_ms=10_000))
    d.feed(RelayAnnounced(at=0, relay="eu", region="eu", capacity=10))
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,)))
    d.until(6_000)  # the connect went unanswered (the peer is away): abandoned, retry at 16 s
    record = d.engine.peers[P]
    assert record.relay_pending is None and record.relay_retry_at == 16_000
    reaction = d.feed(CandidatesUpdated(at=7_000, peer=P, candidates=(NEW,)))
    assert ConnectViaRelay(peer=P, relay="eu", deadline=13_000) in reaction.commands


def test_a_relay_connect_in_flight_starts_again_when_the_peer_reports_new_candidates() -> None:
    """Kills waiting out a connect set up while the peer was elsewhere (mutation: no abandon in
    `react_candidates` -> no ConnectViaRelay until the deadline, then relay_retry_ms; wake with a
    75 s sleep, seed 7: 18 recoveries of 15.6 s). A repeated report moves nothing."""
    d = Driver(policy(min_direct_attempts=0, relay_connect_timeout_ms=6_000))
    d.feed(RelayAnnounced(at=0, relay="eu", region="eu", capacity=10))
    d.feed(RelayAnnounced(at=0, relay="us", region="us", capacity=10))
    first = [
        c for c in d.feed(PeerAdded(at=0, peer=P, candidates=(A,))).commands if isinstance(c, ConnectViaRelay)
    ]
    assert len(first) == 1
    same = d.feed(CandidatesUpdated(at=1_000, peer=P, candidates=(A,)))
    assert not [c for c in same.commands if isinstance(c, (ConnectViaRelay, CloseRelaySession))]
    moved = d.feed(CandidatesUpdated(at=2_000, peer=P, candidates=(NEW,)))
    assert "relay_abandoned" in [e.TYPE for e in moved.decisions]
    assert CloseRelaySession(peer=P, relay=first[0].relay) in moved.commands
    again = [c for c in moved.commands if isinstance(c, ConnectViaRelay)]
    assert len(again) == 1 and again[0].relay != first[0].relay and again[0].deadline == 8_000
