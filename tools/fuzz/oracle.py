"""The decision oracle: what each decision should have been, recomputed from the log alone.

Owns `DecisionOracle`, fed by the log watcher with every applied observation
and every decision, in log order. It keeps its own model of what the README
and docs/ say the engine knows — the relay registry (announcements, health
with the loss EWMA 0.7 old / 0.3 new, reliability EWMA 0.8 old / 0.2 new over
session outcomes, stale after `relay_stale_after_ms`), each peer's relay track
record, the direct cache (successes then recency, `direct_cache_size`,
`direct_cache_max_age_ms`), each peer's rounds and the backoff of
`Policy.round_gap_ms` as docs/policies.md words it — and checks each decision
against it. It imports nothing from the engine's projections or its ranking:
the arithmetic is written here again, from the documents, so a bug in the
engine's numbers cannot pass by being compared with itself.

Named invariants (docs/fuzzing.md):
- `relay.ranking_recomputed`: a `relay_chosen` ranking is the oracle's ranking
  (relays that carried the peer first, most successful first; then score,
  ties by id; failed ones excluded), with the oracle's scores; the chosen
  relay is its head; `relay_unavailable` only when the oracle finds none.
- `relay.worked_before_first`: the relays that carried the peer lead, most
  successful first.
- `relay.at_max_load_stays_usable`: a relay at exactly `max_relay_load` is ranked.
- `policy.relay_threshold_not_late`: after a batch, no direct-first peer still
  tries direct with `min_direct_attempts` failed rounds behind it.
- `direct.round_endpoints_follow_cache`: each round tries the cached endpoints
  first (successes, then recency, within the max age), then the candidates,
  the window moving by `parallel_endpoints` per round.
- `timers.round_gap_follows_backoff`: a connect round never starts before the
  backoff gap after the previous failed round, and the engine asks to be woken
  no later than when the next round is due.
- `paths.upgrade_waits_out_hysteresis`: no upgrade back to a lost direct
  endpoint before `lost_at + switch_hysteresis_ms`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import attrs

from natrelay.core.events import Event
from natrelay.core.policy import Policy

from .steps import _fail

#: Lifecycle state names as the design (README) spells them.
PENDING, TRYING, ELIGIBLE = "pending", "direct_trying", "relay_eligible"
RELAYED, DIRECT, REMOVED = "relay_connected", "direct_connected", "removed"
#: How many ranked relays a relay_chosen decision records.
RANKING_KEPT = 8
#: Scores are rounded to 6 places; the same sum computed in another order may round 1e-6 apart.
SCORE_TOLERANCE = 2e-6


def unit_jitter(peer: str, attempt: int) -> float:
    """docs: jitter is a hash of (peer, round) in [0, 1): blake2b-64 of "peer\\x1fround"."""
    digest = hashlib.blake2b(f"{peer}\x1f{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def backoff_gap(policy: Policy, failed_before: int, jitter: float) -> int:
    """The gap after a failed round: step * factor**n, capped, +/- jitter (n = rounds failed before it)."""
    base = min(
        float(policy.backoff_cap_ms),
        policy.step_interval_ms * policy.backoff_factor ** min(failed_before, 64),
    )
    return max(1, int(base + base * policy.backoff_jitter * (2.0 * jitter - 1.0)))


@attrs.define
class Relay:
    """The oracle's registry entry."""

    region: str
    capabilities: int = 0
    expires_at: int | None = None
    last_seen: int = 0
    rtt: int | None = None
    load: int = 0
    loss: float = 0.0
    reliability: float = 1.0


def relay_score(relay: Relay, policy: Policy, region: str | None) -> float:
    """formnet's weighted sum times (1 - loss), rounded to 6 places (README, core/policy docstring)."""
    w = policy.weights
    latency = 0.5 if relay.rtt is None else 1.0 - min(relay.rtt, w.latency_ceiling_ms) / w.latency_ceiling_ms
    load = 1.0 - min(relay.load, 100) / 100.0
    need = policy.required_capabilities
    capability = 1.0 if relay.capabilities & need == need else 0.0
    in_region = 1.0 if region is not None and relay.region == region else 0.0
    total = (
        w.latency * latency
        + w.load * load
        + w.capability * capability
        + w.region * in_region
        + w.reliability * relay.reliability
    )
    return round(total * (1.0 - relay.loss), 6)


@attrs.define
class PeerModel:
    """What the oracle knows of one peer."""

    state: str = PENDING
    candidates: tuple[str, ...] = ()
    access: str = "auto"
    region: str | None = None
    failed: int = 0
    #: relay -> [successes, failures]
    relay_stats: dict[str, list[int]] = attrs.field(factory=dict)
    relays_failed: tuple[str, ...] = ()
    #: endpoint -> [last success at, successes], in cache order
    cache: list[list[Any]] = attrs.field(factory=list)
    last_attempt: int = 0
    round_open: bool = False
    round_purpose: str = "connect"
    round_expected: list[str] = attrs.field(factory=list)
    round_seen: int = 0
    next_round_at: int | None = None
    lost_direct: tuple[str, int] | None = None


class DecisionOracle:
    """Recomputes each decision from the log's observations and earlier decisions."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.relays: dict[str, Relay] = {}
        self.peers: dict[str, PeerModel] = {}
        self.now = 0
        self.observation: str | None = None

    # ---------------------------------------------------------- the cache

    def cached(self, peer: PeerModel, now: int) -> list[str]:
        limit = now - self.policy.direct_cache_max_age_ms
        return [endpoint for endpoint, at, _ in peer.cache if at >= limit]

    def _cache_success(self, peer: PeerModel, endpoint: str, at: int) -> None:
        successes = 1
        kept = []
        for entry in peer.cache:
            if entry[0] == endpoint:
                successes = entry[2] + 1
            elif entry[1] >= at - self.policy.direct_cache_max_age_ms:
                kept.append(entry)
        kept.append([endpoint, at, successes])
        kept.sort(key=lambda e: (-e[2], -e[1], e[0]))
        peer.cache = kept[: self.policy.direct_cache_size]

    def _cache_refresh(self, peer: PeerModel, endpoint: str, at: int) -> None:
        for entry in peer.cache:
            if entry[0] == endpoint and at > entry[1]:
                entry[1] = at
                peer.cache.sort(key=lambda e: (-e[2], -e[1], e[0]))
                return

    def endpoints(self, peer: PeerModel, now: int) -> list[str]:
        ordered = list(dict.fromkeys([*self.cached(peer, now), *peer.candidates]))
        if self.policy.private_candidates_first:
            ordered.sort(key=lambda e: not _private(e))
        return ordered

    # -------------------------------------------------------- the ranking

    def ranking(self, peer: PeerModel, now: int) -> list[tuple[str, float]]:
        policy = self.policy
        worked = sorted((-s, f, relay) for relay, (s, f) in peer.relay_stats.items() if s > 0)
        order = {relay: index for index, (_, _, relay) in enumerate(worked)}
        scored = []
        for relay_id, relay in self.relays.items():
            if relay_id in peer.relays_failed:
                continue
            if relay.expires_at is not None and relay.expires_at <= now:
                continue
            if now - relay.last_seen > policy.relay_stale_after_ms or relay.load > policy.max_relay_load:
                continue
            scored.append((relay_id, relay_score(relay, policy, peer.region)))
        scored.sort(key=lambda s: (order.get(s[0], len(order)), -s[1], s[0]))
        return scored

    # ------------------------------------------------------- observations

    def observed(self, seq: int, event: Event) -> None:
        """An observation the engine accepted (rejected ones change nothing)."""
        e: Any = event
        kind = event.TYPE
        self.observation = kind
        if kind == "policy_set":
            self.policy = e.policy
        elif kind == "peer_added":
            peer = self.peers.get(e.peer)
            if peer is None:
                peer = self.peers[e.peer] = PeerModel()
            elif peer.state == REMOVED:
                peer.state = PENDING
                self._reset_paths(peer)
            peer.candidates, peer.access, peer.region = e.candidates, e.access, e.preferred_region
        elif kind == "peer_removed":
            peer = self.peers[e.peer]
            peer.state = REMOVED
            peer.failed, peer.last_attempt, peer.round_open = 0, 0, False
            self._reset_paths(peer)
        elif kind == "candidates_updated":
            peer = self.peers[e.peer]
            if e.candidates != peer.candidates:
                peer.candidates = e.candidates
                if peer.state in (TRYING, ELIGIBLE):
                    # the peer moved: the relays that failed it are tried again (issue 13)
                    peer.relays_failed = ()
                    if peer.next_round_at is None or peer.next_round_at > e.at:
                        peer.next_round_at = e.at
        elif kind == "handshake_observed" and e.endpoint is not None:
            self._cache_refresh(self.peers[e.peer], e.endpoint, e.at)
        elif kind == "relay_announced":
            relay = self.relays.get(e.relay) or Relay(region=e.region)
            relay.region, relay.capabilities, relay.expires_at = e.region, e.capabilities, e.expires_at
            relay.last_seen = max(relay.last_seen, e.at)
            self.relays[e.relay] = relay
        elif kind == "relay_withdrawn":
            self.relays.pop(e.relay, None)
        elif kind == "relay_health_measured" and e.relay in self.relays:
            relay = self.relays[e.relay]
            relay.rtt, relay.load = e.rtt_ms, e.load
            relay.loss = 0.7 * relay.loss + 0.3 * e.loss
            relay.last_seen = max(relay.last_seen, e.at)
        elif kind == "relay_session_established":
            self._reliability(e.relay, 1.0)
        elif kind == "relay_session_failed":
            self._reliability(e.relay, 0.0)
            peer = self.peers[e.peer]
            peer.relay_stats.setdefault(e.relay, [0, 0])[1] += 1
            peer.relays_failed += (e.relay,)
        elif kind == "relay_session_closed":
            self.peers[e.peer].relay_stats.setdefault(e.relay, [0, 0])[1] += 1

    def _reliability(self, relay_id: str, outcome: float) -> None:
        relay = self.relays.get(relay_id)
        if relay is not None:
            relay.reliability = 0.8 * relay.reliability + 0.2 * outcome

    @staticmethod
    def _reset_paths(peer: PeerModel) -> None:
        peer.relays_failed = ()
        peer.next_round_at = None

    # ---------------------------------------------------------- decisions

    def decided(self, seq: int, event: Event, state_before: str, state_after: str) -> None:
        """Check one decision against the oracle, then fold it."""
        e: Any = event
        kind = event.TYPE
        peer = self.peers[e.peer]
        self.now = max(self.now, event.at)
        if kind == "relay_chosen":
            self._check_ranking(seq, e, peer)
        elif kind == "relay_unavailable":
            found = self.ranking(peer, e.at)
            at_max = [r for r, _ in found if self.relays[r].load == self.policy.max_relay_load]
            if at_max:
                _fail(
                    "relay.at_max_load_stays_usable",
                    f"seq {seq}: no usable relay, says the engine; {at_max[0]} is at exactly "
                    f"max_relay_load={self.policy.max_relay_load}",
                )
            if found:
                _fail(
                    "relay.ranking_recomputed",
                    f"seq {seq}: no usable relay, says the engine; the log shows {found[0][0]} usable",
                )
        elif kind == "direct_attempt_started":
            self._check_round(seq, e, peer, state_before)
        elif kind == "path_upgraded" and peer.lost_direct is not None:
            endpoint, lost_at = peer.lost_direct
            held = lost_at + self.policy.switch_hysteresis_ms
            if endpoint == e.endpoint and e.at < held:
                _fail(
                    "paths.upgrade_waits_out_hysteresis",
                    f"seq {seq}: upgraded to {endpoint} at {e.at}, lost there at {lost_at}; "
                    f"switch_hysteresis_ms={self.policy.switch_hysteresis_ms} holds it until {held}",
                )
        self._fold(e, peer, state_after)

    def _fold(self, e: Any, peer: PeerModel, state_after: str) -> None:
        kind = e.TYPE
        peer.state = state_after
        if kind == "direct_attempt_started":
            if e.purpose == "connect":
                peer.next_round_at = None
        elif kind == "direct_round_failed":
            peer.round_open = False
            if e.purpose == "connect":
                peer.failed += 1
                gap = backoff_gap(self.policy, peer.failed - 1, unit_jitter(e.peer, e.attempt))
                peer.next_round_at = e.at + gap
        elif kind in ("direct_path_selected", "path_upgraded"):
            self._cache_success(peer, e.endpoint, e.at)
            peer.failed, peer.last_attempt, peer.round_open = 0, 0, False
            peer.relays_failed, peer.next_round_at = (), None
        elif kind == "relay_eligibility_reached":
            peer.relays_failed = ()
            if peer.next_round_at is None:
                peer.next_round_at = e.at
        elif kind == "relay_abandoned":
            peer.relay_stats.setdefault(e.relay, [0, 0])[1] += 1
            peer.relays_failed += (e.relay,)
            self._reliability(e.relay, 0.0)
        elif kind == "relay_unavailable":
            peer.relays_failed = ()
        elif kind == "relay_path_selected":
            peer.relay_stats.setdefault(e.relay, [0, 0])[0] += 1
            peer.next_round_at = None
        elif kind == "path_lost":
            if e.path_kind == "direct":
                peer.lost_direct = (e.path, e.at)
                peer.relays_failed = ()
            else:
                peer.relays_failed = (e.path,)
            peer.next_round_at = e.at

    def _check_ranking(self, seq: int, e: Any, peer: PeerModel) -> None:
        expected = self.ranking(peer, e.at)
        got = [(s.relay, s.score) for s in e.ranking]
        want = expected[:RANKING_KEPT]
        if [r for r, _ in got] == [r for r, _ in want] and all(
            abs(a - b) <= SCORE_TOLERANCE for (_, a), (_, b) in zip(got, want, strict=True)
        ):
            if e.relay != want[0][0]:
                _fail("relay.ranking_recomputed", f"seq {seq}: chose {e.relay}, ranked best is {want[0][0]}")
            return
        limit = self.policy.max_relay_load
        at_max = [r for r, _ in want if self.relays[r].load == limit and r not in {g for g, _ in got}]
        if at_max:
            _fail(
                "relay.at_max_load_stays_usable",
                f"seq {seq}: {at_max[0]} is at exactly max_relay_load={limit} and was not ranked",
            )
        worked = [r for r, _ in want if peer.relay_stats.get(r, [0, 0])[0] > 0]
        got_worked = [r for r, _ in got if peer.relay_stats.get(r, [0, 0])[0] > 0]
        if worked != got_worked[: len(worked)]:
            _fail(
                "relay.worked_before_first",
                f"seq {seq}: relays that carried the peer ranked {got_worked}, expected {worked} "
                f"(track record {peer.relay_stats})",
            )
        _fail(
            "relay.ranking_recomputed",
            f"seq {seq}: the engine ranked {got}, the log gives {want}",
        )

    def _check_round(self, seq: int, e: Any, peer: PeerModel, state_before: str) -> None:
        if peer.round_open and e.attempt == peer.last_attempt:
            index = peer.round_seen
            peer.round_seen += 1
        else:
            if e.purpose == "connect" and state_before != PENDING and self.observation != "step_requested":
                due = peer.next_round_at
                if due is None or e.at < due:
                    _fail(
                        "timers.round_gap_follows_backoff",
                        f"seq {seq}: round {e.attempt} started at {e.at}; the backoff holds it until {due}",
                    )
            if e.attempt != peer.last_attempt + 1:
                _fail(
                    "direct.round_endpoints_follow_cache",
                    f"seq {seq}: round {e.attempt} follows round {peer.last_attempt}",
                )
            ordered = self.endpoints(peer, e.at)
            width = min(self.policy.parallel_endpoints, len(ordered))
            start = ((e.attempt - 1) * width) % max(len(ordered), 1)
            peer.round_expected = [ordered[(start + i) % len(ordered)] for i in range(width)]
            peer.last_attempt, peer.round_open, peer.round_seen = e.attempt, True, 1
            peer.round_purpose = e.purpose
            index = 0
        expected = peer.round_expected
        if index >= len(expected) or expected[index] != e.endpoint:
            _fail(
                "direct.round_endpoints_follow_cache",
                f"seq {seq}: round {e.attempt} tries {e.endpoint} as endpoint {index + 1}; "
                f"the cache and candidates give {expected} (cache {peer.cache})",
            )

    # ---------------------------------------------------------- batches

    def batch_done(self, seq: int) -> None:
        """The decisions of one observation are all in: check what must have happened by now."""
        policy = self.policy
        for key, peer in self.peers.items():
            if peer.round_open and peer.round_seen and peer.round_seen < len(peer.round_expected):
                _fail(
                    "direct.round_endpoints_follow_cache",
                    f"before seq {seq}: round {peer.last_attempt} of {key[:8]} tried {peer.round_seen} "
                    f"endpoints, expected {peer.round_expected}",
                )
            peer.round_seen = 0 if not peer.round_open else len(peer.round_expected)
            relays_allowed = policy.relays_enabled and peer.access != "direct_only"
            if peer.state == TRYING and relays_allowed and peer.failed >= policy.min_direct_attempts:
                _fail(
                    "policy.relay_threshold_not_late",
                    f"before seq {seq}: peer {key[:8]} has {peer.failed} failed rounds "
                    f"(threshold {policy.min_direct_attempts}) and still only tries direct",
                )

    def cache_aged_out_by(self, now: int) -> bool:
        """Some peer's only endpoints were cached ones that aged out before `now`.

        The engine's wake-up for such a peer was computed while the entry was still
        young and is not moved when it ages out, so it wakes once for nothing (a known
        gap, docs/fuzzing.md "Found by the oracle fuzz"); `timers.no_idle_wakeups`
        forgives exactly that case.
        """
        limit = now - self.policy.direct_cache_max_age_ms
        for peer in self.peers.values():
            waiting = peer.state in (TRYING, ELIGIBLE, RELAYED) and not peer.candidates
            if waiting and any(at < limit for _, at, _ in peer.cache) and not self.cached(peer, now):
                return True
        return False

    def round_due(self, key: str, now: int) -> int | None:
        """When the peer's next connect round is due, or None if none should be scheduled."""
        peer = self.peers[key]
        if peer.state not in (TRYING, ELIGIBLE) or peer.round_open or peer.access == "relay_only":
            return None
        if peer.next_round_at is None or not self.endpoints(peer, max(now, peer.next_round_at)):
            return None
        return peer.next_round_at

    def check_wakeup(self, wakeup: int | None, now: int) -> None:
        """The engine asks to be woken no later than the oracle's next due round."""
        for key in sorted(self.peers):
            due = self.round_due(key, now)
            if due is None:
                continue
            latest = max(due, now + 1)
            if wakeup is None or wakeup > latest:
                _fail(
                    "timers.round_gap_follows_backoff",
                    f"peer {key[:8]}: the next direct round is due at {due} (backoff after "
                    f"{self.peers[key].failed} failed rounds), the engine sleeps until {wakeup}",
                )


def _private(endpoint: str) -> bool:
    host = endpoint[1:].partition("]")[0] if endpoint.startswith("[") else endpoint.rpartition(":")[0]
    return ipaddress.ip_address(host).is_private
