"""The retry after relay connects the peer never answered (issue 13, `wake`).

A peer asleep or offline takes no relay connect: each one reaches its timeout while the
relay works. Such a round is retried at once while the peer has gone unanswered for less
than `relay_unanswered_window_ms`, then after `relay_retry_ms` as before; a round a relay
refused still waits `relay_retry_ms`.
"""

from __future__ import annotations

from natrelay.core.commands import ConnectViaRelay
from natrelay.core.engine import Engine
from natrelay.core.events import (
    CandidatesUpdated,
    HardNatAttemptStarted,
    NatObserved,
    PeerAdded,
    RelayAnnounced,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayUnavailable,
    RelayWithdrawn,
)
from natrelay.core.peers import PeerRecord
from natrelay.core.policy import Policy
from tests.conftest import make_key, policy
from tests.unit.test_engine import Driver

P = make_key(1)
A, WOKE = "198.51.100.1:51820", "203.0.113.9:40000"
RETRY, WINDOW, TIMEOUT = 10_000, 40_000, 6_000


def _driver(window: int = WINDOW) -> Driver:
    """A relay-first peer with two relays and no direct candidate: only relays can carry it."""
    d = Driver(
        policy(
            min_direct_attempts=0,
            relay_connect_timeout_ms=TIMEOUT,
            relay_retry_ms=RETRY,
            relay_unanswered_window_ms=window,
        )
    )
    d.feed(RelayAnnounced(at=0, relay="eu", region="eu", capacity=10))
    d.feed(RelayAnnounced(at=0, relay="us", region="us", capacity=10))
    d.feed(PeerAdded(at=0, peer=P, candidates=()))
    return d


def _unavailable(d: Driver, end: int) -> list[RelayUnavailable]:
    return [e for r in d.until(end) for e in r.decisions if isinstance(e, RelayUnavailable)]


def _next_unavailable(d: Driver) -> RelayUnavailable:
    """Tick deadline by deadline until the peer is told no relay is usable."""
    for _ in range(100):
        found = _unavailable(d, d.engine.next_deadline() or d.engine.now)
        if found:
            return found[0]
    raise AssertionError("no relay_unavailable")


def test_unanswered_rounds_are_retried_at_once_within_the_window_then_after_relay_retry_ms() -> None:
    """Kills waiting relay_retry_ms after connects the peer never answered (mutation:
    `unanswered_round` always False -> retry_at = now + 10 s) and retrying at once forever
    (mutation: the window check dropped -> the fourth round is retried at once too)."""
    d = _driver()
    gaps = []
    for rounds in range(1, 6):
        event = _next_unavailable(d)
        assert d.engine.peers[P].relays_unanswered == 2 * rounds
        gaps.append(event.retry_at - event.at)
        if rounds == 1:
            assert event.at == 2 * TIMEOUT  # eu then us, each abandoned at its deadline
    # 2 connects x 6 s per round: 12, 24, 36 s unanswered are within 40 s; 48, 60 s are not
    assert gaps == [0, 0, 0, RETRY, RETRY]


def test_the_retry_at_once_connects_again_at_that_instant() -> None:
    """The retry leads to a connect at once (not only a decision): the peer is asked again."""
    d = _driver()
    reactions = d.until(2 * TIMEOUT)
    last = reactions[-1]
    assert [e.TYPE for e in last.decisions][-2:] == ["relay_unavailable", "relay_chosen"]
    assert "unanswered for 12 s" in last.decisions[-2].reason
    connects = [c for c in last.commands if isinstance(c, ConnectViaRelay)]
    assert connects and connects[-1].deadline == 3 * TIMEOUT


def test_a_round_a_relay_refused_still_waits_relay_retry_ms() -> None:
    """Kills taking a refusal for an unanswered connect (mutation: `fold_session_failed`
    keeps counting -> the short retry; a full relay would be asked every half second)."""
    d = _driver()
    first = d.engine.peers[P].relay_pending
    assert first is not None
    d.until(TIMEOUT)  # the first relay timed out unanswered; the second is being tried
    second = d.engine.peers[P].relay_pending
    assert second is not None and second != first
    reaction = d.feed(RelaySessionFailed(at=TIMEOUT + 60, peer=P, relay=second, reason="at capacity"))
    unavailable = [e for e in reaction.decisions if isinstance(e, RelayUnavailable)]
    assert unavailable and unavailable[0].retry_at == TIMEOUT + 60 + RETRY
    assert d.engine.peers[P].relays_unanswered == 0


def test_a_withdrawn_relay_is_no_unanswered_connect() -> None:
    """Kills counting every abandon (mutation: `fold_relay_abandoned` without the deadline
    check -> the withdrawal counts as an unanswered connect)."""
    d = _driver()
    d.until(TIMEOUT)  # eu unanswered
    assert d.engine.peers[P].relays_unanswered == 1
    pending = d.engine.peers[P].relay_pending
    assert pending is not None
    d.feed(RelayWithdrawn(at=TIMEOUT + 1, relay=pending))
    assert d.engine.peers[P].relays_unanswered == 0


def test_off_by_default_so_recorded_logs_re_decide_as_they_were_written() -> None:
    """Policy() and a relay_unanswered_window_ms of 0 wait relay_retry_ms after any round."""
    assert Policy().relay_unanswered_window_ms == 0
    d = _driver(window=0)
    event = _unavailable(d, 2 * TIMEOUT)[0]
    assert event.retry_at == event.at + RETRY
    assert d.engine.peers[P].relays_unanswered == 2  # counted, not used


def test_the_count_is_replayed_and_survives_a_snapshot_and_an_old_snapshot_restores() -> None:
    """Replay folds the same count the live engine had; a snapshot written before the field
    existed (one value fewer per peer) restores with none counted."""
    d = _driver()
    d.until(2 * TIMEOUT + 100)
    live = d.engine
    assert live.peers[P].relays_unanswered == 2
    rebuilt = Engine.rebuilt(d.log)
    assert rebuilt.state() == live.state()
    restored = Engine.from_state(live.state())
    assert restored.peers[P].relays_unanswered == 2
    old = live.state()
    old["peers"] = {key: values[:-1] for key, values in old["peers"].items()}
    assert Engine.from_state(old).peers[P].relays_unanswered == 0
    assert PeerRecord._STATE_FIELDS[-1] == "relays_unanswered"


def test_a_path_or_new_candidates_start_the_count_again() -> None:
    """Kills a count that outlives the absence it measured (mutations: no reset in
    `fold_path_lost` -> the peer's next absence waits relay_retry_ms from its first round; no
    reset in `_try_again_now` -> new candidates keep the old count)."""
    d = _driver()
    for _ in range(4):
        _next_unavailable(d)  # 48 s unanswered: past the window
    record = d.engine.peers[P]
    assert record.relays_unanswered == 8
    d.feed(CandidatesUpdated(at=d.engine.now, peer=P, candidates=(A,)))
    assert record.relays_unanswered == 0
    for _ in range(4):
        _next_unavailable(d)
    assert record.relays_unanswered == 8
    while record.relay_pending is None:
        d.until(d.engine.next_deadline() or d.engine.now)
    relay = record.relay_pending
    d.feed(RelaySessionEstablished(at=d.engine.now + 50, peer=P, relay=relay, session="s1"))
    d.feed(RelaySessionClosed(at=d.engine.now + 1_000, peer=P, relay=relay, session="s1"))
    assert record.relays_unanswered == 0
    # the round with the relay whose session closed is no unanswered round; the next one is
    lost_round = _next_unavailable(d)
    assert lost_round.retry_at == lost_round.at + RETRY
    event = _next_unavailable(d)
    assert record.relays_unanswered == 3
    assert event.retry_at == event.at  # a fresh absence: retried at once again


def _back_from_absence(window: int = 90_000, back: int = 13_000) -> Driver:
    """A symmetric node; a port-restricted peer whose first round of relay connects went
    unanswered, back through a relay at `back` before reporting where it woke."""
    chosen = Policy(
        hard_nat_enabled=True, relay_connect_timeout_ms=TIMEOUT, relay_unanswered_window_ms=window
    )
    d = Driver(chosen)
    d.feed(NatObserved(at=0, nat_type="symmetric"))
    d.feed(RelayAnnounced(at=0, relay="eu", region="eu", capacity=10))
    d.feed(RelayAnnounced(at=0, relay="us", region="us", capacity=10))
    d.feed(PeerAdded(at=0, peer=P, candidates=(A,), nat_type="port_restricted_cone"))
    d.until(back - 1_000)
    relay = d.engine.peers[P].relay_pending
    assert relay is not None and d.engine.peers[P].relays_unanswered == 2
    d.feed(RelaySessionEstablished(at=back, peer=P, relay=relay, session="s1"))
    return d


def test_no_birthday_punch_at_where_a_peer_slept_before_it_reports_where_it_woke() -> None:
    """Kills aiming a hard-NAT attempt at the candidates from before an absence at once
    (mutation: `reporting_until` returns None -> the attempt starts at 14 s, when the probe
    over the session fails) and forgetting to wake the peer when the wait is over (mutation:
    no `reporting_until` in `hard_nat.wake_times` -> the attempt waits for the next probe)."""
    d = _back_from_absence()
    d.until(22_999)
    assert not [e for e in d.log if isinstance(e, HardNatAttemptStarted)]
    d.until(23_000)  # 13 s + hard_nat_timeout_ms: its old candidates are all there is
    [attempt] = [e for e in d.log if isinstance(e, HardNatAttemptStarted)]
    assert attempt.at == 23_000 and attempt.endpoint == A


def test_a_report_of_where_the_peer_woke_ends_the_wait() -> None:
    """New candidates: the attempt aims at them once a probe of them failed (mutation: the
    count's reset in `_try_again_now` only for unconnected peers -> no attempt before 23 s)."""
    d = _back_from_absence()
    d.until(14_500)  # the probe over the session failed: no attempt yet
    d.feed(CandidatesUpdated(at=15_000, peer=P, candidates=(WOKE,), nat_type="port_restricted_cone"))
    d.until(16_000)
    [attempt] = [e for e in d.log if isinstance(e, HardNatAttemptStarted)]
    assert attempt.at == 16_000 and attempt.endpoint == WOKE


def test_without_the_window_a_peer_back_from_an_absence_is_punched_as_before() -> None:
    """Recorded logs re-decide as written (mutation: `reporting_until` without the window check
    -> the attempt waits 10 s after the session)."""
    d = _back_from_absence(window=0, back=23_000)  # retried after relay_retry_ms (10 s)
    d.until(24_000)
    [attempt] = [e for e in d.log if isinstance(e, HardNatAttemptStarted)]
    assert attempt.at == 24_000
