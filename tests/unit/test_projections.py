"""The projections as pure folds: attempts, direct cache, relay cache, relay registry."""

from __future__ import annotations

from natrelay.core.attempts import AttemptCounts
from natrelay.core.direct_cache import DirectCache
from natrelay.core.events import (
    DirectAttemptStarted,
    DirectAttemptTimedOut,
    DirectPathSelected,
    DirectRoundFailed,
    HandshakeObserved,
    PathLost,
    PathUpgraded,
    RelayAbandoned,
    RelayAnnounced,
    RelayHealthMeasured,
    RelayPathSelected,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
)
from natrelay.core.policy import Policy
from natrelay.core.relay_cache import RelayCache
from natrelay.core.relay_registry import RelayRegistry
from tests.conftest import make_key

P = make_key(1)
A, B, C = "198.51.100.1:1", "198.51.100.2:2", "198.51.100.3:3"


def started(attempt: int, endpoint: str, at: int = 0, purpose: str = "connect") -> DirectAttemptStarted:
    return DirectAttemptStarted(
        at=at, peer=P, endpoint=endpoint, attempt=attempt, deadline=at + 1000, purpose=purpose
    )


def failed(attempt: int, at: int, purpose: str = "connect") -> DirectRoundFailed:
    return DirectRoundFailed(at=at, peer=P, attempt=attempt, endpoints=(A,), purpose=purpose)


def test_attempts_count_failed_connect_rounds_since_the_last_success() -> None:
    counts = AttemptCounts()
    for event in (started(1, A), started(1, B), failed(1, 1000), started(2, A, 1500), failed(2, 2500)):
        counts.apply(event)
    assert counts.attempts(P) == 2
    counts.apply(started(3, A, 3000, "upgrade_probe"))
    counts.apply(failed(3, 4000, "upgrade_probe"))
    assert counts.attempts(P) == 2, "probe rounds of a relayed peer are not failures"
    counts.apply(DirectPathSelected(at=5000, peer=P, endpoint=A))
    assert counts.attempts(P) == 0
    assert counts.next_attempt_number(P) == 1


def test_a_round_tracks_outstanding_endpoints_until_they_time_out() -> None:
    counts = AttemptCounts()
    counts.apply(started(1, A))
    counts.apply(started(1, B))
    counts.apply(DirectAttemptTimedOut(at=900, peer=P, endpoint=A, attempt=1))
    round_ = counts.open_round(P)
    assert round_ is not None
    assert round_.endpoints == (A, B)
    assert round_.outstanding == (B,)
    counts.apply(DirectAttemptTimedOut(at=900, peer=P, endpoint=A, attempt=7))
    assert round_.outstanding == (B,), "a timeout for another round changes nothing"


def test_direct_cache_keeps_the_top_five_by_successes_then_recency() -> None:
    cache = DirectCache(size=5, max_age_ms=10_000_000)
    endpoints = [f"198.51.100.{i}:51820" for i in range(1, 8)]
    at = 0
    for index, endpoint in enumerate(endpoints):
        for _ in range(index % 3 + 1):
            at += 10
            cache.apply(DirectPathSelected(at=at, peer=P, endpoint=endpoint))
    best = cache.best(P, at)
    assert len(best) == 5
    ranked = [(e.successes, e.last_success_at) for e in best]
    assert ranked == sorted(ranked, reverse=True)
    assert best[0].successes == 3


def test_direct_cache_forgets_endpoints_older_than_the_max_age() -> None:
    cache = DirectCache(size=5, max_age_ms=1000)
    cache.apply(DirectPathSelected(at=0, peer=P, endpoint=A))
    cache.apply(HandshakeObserved(at=500, peer=P, endpoint=A))
    assert [e.last_success_at for e in cache.best(P, 1400)] == [500]
    assert cache.best(P, 1600) == ()
    cache.apply(PathUpgraded(at=3000, peer=P, endpoint=B, relay="r1"))
    assert [e.endpoint for e in cache.entries[P]] == [B], "stale entries are dropped on the next success"


def test_relay_cache_counts_outcomes_and_tracks_the_open_session() -> None:
    cache = RelayCache()
    cache.apply(RelaySessionFailed(at=1, peer=P, relay="r1"))
    cache.apply(RelayAbandoned(at=2, peer=P, relay="r2"))
    cache.apply(RelayPathSelected(at=3, peer=P, relay="r3", session="s1"))
    assert cache.open_session(P) == ("r3", "s1")
    assert cache.stats(P, "r1") == (0, 1)
    cache.apply(RelaySessionClosed(at=4, peer=P, relay="r3", session="s1", reason="relay died"))
    assert cache.open_session(P) is None
    assert cache.stats(P, "r3") == (1, 1), "a session closed under us is a failure"
    cache.apply(RelayPathSelected(at=5, peer=P, relay="r3", session="s2"))
    cache.apply(PathUpgraded(at=6, peer=P, endpoint=A, relay="r3"))
    cache.apply(RelaySessionClosed(at=7, peer=P, relay="r3", session="s2"))
    assert cache.stats(P, "r3") == (2, 1), "closing after an upgrade is not a failure"
    assert cache.worked_before(P) == ("r3",)
    cache.apply(RelayPathSelected(at=8, peer=P, relay="r4", session="s3"))
    cache.apply(PathLost(at=9, peer=P, path_kind="relay", path="r4"))
    assert cache.open_session(P) is None


def announce(relay: str, region: str = "eu", at: int = 0, **extra: object) -> RelayAnnounced:
    return RelayAnnounced(at=at, relay=relay, region=region, **extra)  # type: ignore[arg-type]


def test_registry_scores_with_formnets_weights_times_one_minus_loss() -> None:
    registry = RelayRegistry()
    registry.apply(announce("r1", capabilities=1))
    registry.apply(RelayHealthMeasured(at=0, relay="r1", rtt_ms=100, load=50, loss=0.0))
    policy = Policy(required_capabilities=1)
    score = registry.score(registry.relays["r1"], policy, "eu")
    assert score == round(0.3 * 0.5 + 0.2 * 0.5 + 0.1 + 0.1 + 0.3 * 1.0, 6)
    registry.apply(RelayHealthMeasured(at=1, relay="r1", rtt_ms=100, load=50, loss=1.0))
    assert abs(registry.relays["r1"].loss - 0.3) < 1e-12, "loss is an EWMA 0.7 old / 0.3 new"


def test_registry_reliability_is_an_ewma_of_session_outcomes() -> None:
    registry = RelayRegistry()
    registry.apply(announce("r1"))
    registry.apply(RelaySessionFailed(at=1, peer=P, relay="r1"))
    assert registry.relays["r1"].reliability == 0.8
    registry.apply(RelaySessionEstablished(at=2, peer=P, relay="r1", session="s"))
    assert abs(registry.relays["r1"].reliability - 0.84) < 1e-12


def test_ranking_excludes_overloaded_stale_expired_and_withdrawn_relays() -> None:
    registry = RelayRegistry()
    policy = Policy(max_relay_load=80, relay_stale_after_ms=3_600_000)
    registry.apply(announce("ok"))
    registry.apply(announce("busy"))
    registry.apply(RelayHealthMeasured(at=0, relay="busy", rtt_ms=1, load=81))
    registry.apply(announce("expiring", expires_at=500))
    registry.apply(announce("gone"))
    registry.apply(RelayWithdrawn(at=0, relay="gone"))
    assert [s.relay for s in registry.rank(policy, 600)] == ["ok"]
    assert registry.rank(policy, 3_600_001) == ()


def test_ranking_puts_relays_that_worked_before_first_then_score_then_id() -> None:
    registry = RelayRegistry()
    policy = Policy()
    for relay in ("b", "a", "c"):
        registry.apply(announce(relay))
    registry.apply(RelayHealthMeasured(at=0, relay="c", rtt_ms=0, load=0))
    ranked = [s.relay for s in registry.rank(policy, 0)]
    assert ranked == ["c", "a", "b"], "best score first; equal scores by relay id"
    ranked = [s.relay for s in registry.rank(policy, 0, worked_before=("b",))]
    assert ranked == ["b", "c", "a"]
    ranked = [s.relay for s in registry.rank(policy, 0, preferred_region="eu", exclude=("c",))]
    assert ranked == ["a", "b"]
