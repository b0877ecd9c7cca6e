"""Projection: the relay connection cache.

Owns, per peer, the relay session it is using (if any) and how every relay it
tried has fared (successes, failures). The registry ranks relays that worked
for a peer before first; a session closed while in use counts as a failure of
its relay, one we closed ourselves (after an upgrade) does not, because the
path left the relay before the close arrived.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .events import (
    Event,
    PathLost,
    PathUpgraded,
    PeerRemoved,
    RelayAbandoned,
    RelayPathSelected,
    RelaySessionClosed,
    RelaySessionFailed,
)


class PeerRelays:
    """One peer's relay session and per-relay record."""

    __slots__ = ("relay", "session", "since", "stats")

    def __init__(self) -> None:
        self.relay: str | None = None
        self.session: str | None = None
        self.since: int | None = None
        #: relay -> [successes, failures]
        self.stats: dict[str, list[int]] = {}

    def count(self, relay: str, index: int) -> None:
        self.stats.setdefault(relay, [0, 0])[index] += 1


class RelayCache:
    """peer -> relay session and relay track record."""

    __slots__ = ("peers",)
    #: The event types this projection folds (the engine skips it for the others).
    HANDLES: ClassVar[frozenset[type]] = frozenset(
        {
            RelayPathSelected,
            RelaySessionFailed,
            RelayAbandoned,
            RelaySessionClosed,
            PathUpgraded,
            PeerRemoved,
            PathLost,
        }
    )

    def __init__(self) -> None:
        self.peers: dict[str, PeerRelays] = {}

    def open_session(self, peer: str) -> tuple[str, str] | None:
        """(relay, session) the peer is using now, or None."""
        found = self.peers.get(peer)
        if found is None or found.session is None or found.relay is None:
            return None
        return found.relay, found.session

    def worked_before(self, peer: str) -> tuple[str, ...]:
        """Relays that carried this peer before, most successful first."""
        found = self.peers.get(peer)
        if found is None:
            return ()
        worked = [(-s, f, relay) for relay, (s, f) in found.stats.items() if s > 0]
        return tuple(relay for _, _, relay in sorted(worked))

    def stats(self, peer: str, relay: str) -> tuple[int, int]:
        found = self.peers.get(peer)
        if found is None:
            return (0, 0)
        successes, failures = found.stats.get(relay, (0, 0))
        return successes, failures

    def _peer(self, peer: str) -> PeerRelays:
        found = self.peers.get(peer)
        if found is None:
            found = self.peers[peer] = PeerRelays()
        return found

    def apply(self, event: Event) -> None:
        if type(event) is RelayPathSelected:
            entry = self._peer(event.peer)
            entry.relay, entry.session, entry.since = event.relay, event.session, event.at
            entry.count(event.relay, 0)
        elif type(event) is RelaySessionFailed or type(event) is RelayAbandoned:
            self._peer(event.peer).count(event.relay, 1)
        elif type(event) is RelaySessionClosed:
            held = self.peers.get(event.peer)
            if held is not None and held.session == event.session and held.relay == event.relay:
                held.count(event.relay, 1)
                held.relay = held.session = held.since = None
        elif (
            type(event) is PathUpgraded
            or type(event) is PeerRemoved
            or (type(event) is PathLost and event.path_kind == "relay")
        ):
            held = self.peers.get(event.peer)
            if held is not None:
                held.relay = held.session = held.since = None

    def to_state(self) -> dict[str, Any]:
        return {
            peer: [p.relay, p.session, p.since, {r: list(c) for r, c in sorted(p.stats.items())}]
            for peer, p in sorted(self.peers.items())
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RelayCache:
        made = cls()
        for peer, (relay, session, since, stats) in state.items():
            entry = made._peer(peer)
            entry.relay, entry.session, entry.since = relay, session, since
            entry.stats = {r: list(c) for r, c in stats.items()}
        return made
