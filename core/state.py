"""The engine's state: peer records and projections, and the read-only questions asked of them.

Owns the data every other part of the engine reads: the policy in force,
`now`, the local NAT, the peer records and the four projections (attempts,
direct cache, relay cache, relay registry), plus two indexes derived from them
that are not state (the timer heap, which `schedule` keeps, and memos).

The free functions of the Decider take a `State` as their first argument:
`evolve(state, event)` folds, `checks.rejection(state, event)` judges,
`schedule.*` times, `decide`/`stepping` decide (on an `Engine`, the `State`
subclass that also carries the reaction being built). One object, mutated in
place: a fold never copies the state (100k peers).

This module must never change state: its methods only answer questions
(is a relay allowed, which endpoints to try, how relays rank). Only `evolve`
writes peer records and projections.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from . import lifecycle as lc
from .attempts import AttemptCounts
from .direct_cache import DirectCache
from .events import RelayScore
from .hard_nat_book import HardNatBook
from .peers import PeerRecord
from .policy import Policy
from .relay_cache import RelayCache
from .relay_registry import RelayRegistry

_FOREVER = 2**63


class EngineError(Exception):
    """The engine was asked something impossible (e.g. an event it cannot handle)."""


class State:
    """Everything one node's engine knows, folded from the log."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.now = 0
        #: This node's NAT as its agent last measured it (statistics, never a decision input).
        self.local_nat = "unknown"
        self.peers: dict[str, PeerRecord] = {}
        self.attempts = AttemptCounts()
        self.direct_cache = DirectCache(self.policy.direct_cache_size, self.policy.direct_cache_max_age_ms)
        self.relay_cache = RelayCache()
        self.registry = RelayRegistry()
        #: Hard-NAT attempts per peer (issue 16).
        self.hard_nat = HardNatBook()
        #: Not state: the timer heap of (wake time, peer), kept by `schedule`.
        self._timers: list[tuple[int, str]] = []
        #: Not state: which folds handle each event type, computed once per type by `evolve`.
        self._plans: dict[type, Any] = {}
        #: Derived from the peer records (rebuilt by `Engine.from_state`): relay -> sessions
        #: this node holds or is connecting through it; `evolve` keeps it in step (issue 13).
        self.relay_held: dict[str, int] = {}
        #: Not state: relays full by that count that had a slot freed while deciding.
        self._freed: set[str] = set()
        #: Not state: peer -> (candidates, cache entries, policy, valid until, endpoints).
        self._endpoints_memo: dict[str, tuple[Any, Any, Any, int, tuple[str, ...]]] = {}

    # ------------------------------------------------------------ questions

    def _live(self, peer: str) -> PeerRecord | None:
        """The peer's record if it is in the mesh (known and not removed)."""
        record = self.peers.get(peer)
        return record if record is not None and record.state != lc.REMOVED else None

    def relays_allowed(self, record: PeerRecord) -> bool:
        return self.policy.relays_enabled and record.access != "direct_only"

    def direct_allowed(self, record: PeerRecord) -> bool:
        return record.access != "relay_only"

    def upgrades_allowed(self, record: PeerRecord) -> bool:
        return self.policy.upgrade_enabled and self.direct_allowed(record)

    def endpoints_to_try(self, peer: str) -> tuple[str, ...]:
        """Cached working endpoints first (best first), then the candidates in order.

        With `private_candidates_first`, private addresses go before public ones (stable).
        Memoised per peer (the engine asks several times per decision) until the
        candidates, the cache entries or the policy change, or a cached entry ages out.
        """
        record = self.peers[peer]
        entries = self.direct_cache.entries.get(peer, ())
        memo = self._endpoints_memo.get(peer)
        if (
            memo is not None
            and memo[0] is record.candidates
            and memo[1] is entries
            and memo[2] is self.policy
            and self.now <= memo[3]
        ):
            return memo[4]
        best = self.direct_cache.best(peer, self.now)
        ordered = tuple(dict.fromkeys(tuple(entry.endpoint for entry in best) + record.candidates))
        if self.policy.private_candidates_first:
            ordered = tuple(sorted(ordered, key=_is_public))
        max_age = self.direct_cache.max_age_ms
        valid_until = min((entry.last_success_at + max_age for entry in best), default=_FOREVER)
        self._endpoints_memo[peer] = (record.candidates, entries, self.policy, valid_until, ordered)
        return ordered

    def relay_ranking(self, record: PeerRecord) -> tuple[RelayScore, ...]:
        """The relays this peer may use now, best first, excluding those that just failed it.

        A relay is left out while it has no room by what this node knows: its announced
        capacity minus the larger of the sessions this node holds or is connecting through
        it and the load its last health report gave (issue 13).
        """
        return tuple(score for score in self._ranked(record) if self.relay_headroom(score.relay) > 0)

    def relays_full(self, record: PeerRecord) -> bool:
        """Some relay this peer could use is left out only because it has no room."""
        return any(self.relay_headroom(score.relay) <= 0 for score in self._ranked(record))

    def _ranked(self, record: PeerRecord) -> tuple[RelayScore, ...]:
        return self.registry.rank(
            self.policy,
            self.now,
            preferred_region=record.preferred_region,
            worked_before=self.relay_cache.worked_before(record.key),
            exclude=record.relays_failed,
        )

    def relay_headroom(self, relay: str) -> int:
        """Sessions the relay can still take by what this node knows (see relay_ranking)."""
        info = self.registry.relays[relay]
        reported = info.load * info.capacity // 100
        return info.capacity - max(self.relay_held.get(relay, 0), reported)


@functools.lru_cache(maxsize=1 << 16)
def _is_public(endpoint: str) -> bool:
    """False for private, loopback and link-local endpoints (sorts them first)."""
    host = endpoint[1:].partition("]")[0] if endpoint.startswith("[") else endpoint.rpartition(":")[0]
    return not ipaddress.ip_address(host).is_private


is_public = _is_public
