"""Projection: the direct connection cache.

Owns, per peer, the endpoints that worked: when they last worked and how
often. At most `size` entries per peer, ranked by successes then recency, and
entries older than `max_age_ms` are dropped. The engine tries the best cached
endpoint first when it (re)connects a peer — the seed's cached endpoint.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from .events import DirectPathSelected, Event, HandshakeObserved, PathUpgraded


@attrs.frozen
class CachedEndpoint:
    """An endpoint that worked for a peer."""

    endpoint: str
    last_success_at: int
    successes: int


def _rank_key(entry: CachedEndpoint) -> tuple[int, int, str]:
    return (-entry.successes, -entry.last_success_at, entry.endpoint)


class DirectCache:
    """peer -> its best working endpoints."""

    __slots__ = ("entries", "max_age_ms", "size")
    #: The event types this projection folds (the engine skips it for the others).
    HANDLES: ClassVar[frozenset[type]] = frozenset({DirectPathSelected, PathUpgraded, HandshakeObserved})

    def __init__(self, size: int = 5, max_age_ms: int = 7 * 86_400_000) -> None:
        self.size = size
        self.max_age_ms = max_age_ms
        self.entries: dict[str, tuple[CachedEndpoint, ...]] = {}

    def configure(self, size: int, max_age_ms: int) -> None:
        """Follow a policy change (applied from the next success on)."""
        self.size = size
        self.max_age_ms = max_age_ms

    def best(self, peer: str, now: int) -> tuple[CachedEndpoint, ...]:
        """The peer's cached endpoints still young enough, best first."""
        limit = now - self.max_age_ms
        return tuple(e for e in self.entries.get(peer, ()) if e.last_success_at >= limit)

    def apply(self, event: Event) -> None:
        if type(event) is DirectPathSelected or type(event) is PathUpgraded:
            self._record_success(event.peer, event.endpoint, event.at)
        elif type(event) is HandshakeObserved and event.endpoint is not None:
            self._refresh(event.peer, event.endpoint, event.at)

    def _record_success(self, peer: str, endpoint: str, at: int) -> None:
        kept: list[CachedEndpoint] = []
        successes = 1
        for entry in self.entries.get(peer, ()):
            if entry.endpoint == endpoint:
                successes = entry.successes + 1
            elif entry.last_success_at >= at - self.max_age_ms:
                kept.append(entry)
        kept.append(CachedEndpoint(endpoint, at, successes))
        kept.sort(key=_rank_key)
        self.entries[peer] = tuple(kept[: self.size])

    def _refresh(self, peer: str, endpoint: str, at: int) -> None:
        entries = self.entries.get(peer)
        if not entries:
            return
        for index, entry in enumerate(entries):
            if entry.endpoint == endpoint:
                if at > entry.last_success_at:
                    updated = list(entries)
                    updated[index] = CachedEndpoint(entry.endpoint, at, entry.successes)
                    updated.sort(key=_rank_key)
                    self.entries[peer] = tuple(updated)
                return

    def to_state(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "max_age_ms": self.max_age_ms,
            "entries": {
                peer: [[e.endpoint, e.last_success_at, e.successes] for e in entries]
                for peer, entries in sorted(self.entries.items())
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DirectCache:
        made = cls(state["size"], state["max_age_ms"])
        made.entries = {
            peer: tuple(CachedEndpoint(*item) for item in items) for peer, items in state["entries"].items()
        }
        return made
