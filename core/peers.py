"""Projection: the lifecycle of every peer (the mesh status), with its timers.

A `PeerRecord` is the per-peer state the engine keeps: lifecycle state, path,
and the deadlines it must act on. It is a __slots__ object, not a Machine:
the lifecycle's transitions run through `lifecycle.TABLE`, compiled from the
one `transitions` Machine definition, so 100k peers cost a few hundred bytes
each instead of a Machine or a decorated model each.
"""

from __future__ import annotations

from typing import Any

from .lifecycle import PENDING

#: Peer-record fields added after the snapshot format began: (name, the value a record
#: from a snapshot written before it restores to), in the order they were added.
_ADDED_FIELDS: tuple[tuple[str, Any], ...] = (("relays_unanswered", 0),)
#: Not in a snapshot's peer list where the slots' order would put them.
_NOT_IN_SNAPSHOT = frozenset({"wake_at"} | {name for name, _default in _ADDED_FIELDS})


class PeerRecord:
    """One peer as the engine sees it."""

    __slots__ = (
        "access",
        "candidates",
        "direct_seen",
        "direct_seen_at",
        "key",
        "last_handshake_at",
        "lost_at",
        "lost_endpoint",
        "name",
        "nat_type",
        "next_probe_at",
        "next_round_at",
        "path",
        "preferred_region",
        "probes_done",
        "relay_deadline",
        "relay_pending",
        "relay_retry_at",
        "relays_failed",
        "relays_unanswered",
        "session",
        "since",
        "state",
        "wake_at",
    )

    def __init__(self, key: str, since: int) -> None:
        self.key = key
        self.name = ""
        self.access = "auto"
        self.preferred_region: str | None = None
        self.nat_type = "unknown"
        self.candidates: tuple[str, ...] = ()
        self.state: str = PENDING
        self.since = since
        #: The direct endpoint, or the relay id, traffic uses now.
        self.path: str | None = None
        self.session: str | None = None
        #: Latest handshake on the current path.
        self.last_handshake_at: int | None = None
        #: Latest direct handshake on any endpoint (what an upgrade needs).
        self.direct_seen: str | None = None
        self.direct_seen_at: int | None = None
        self.next_round_at: int | None = None
        self.relay_pending: str | None = None
        self.relay_deadline: int | None = None
        self.relays_failed: tuple[str, ...] = ()
        #: Relay connects in a row that reached their timeout with no relay refusing them
        #: (the peer did not answer), since the peer last lost a path, changed candidates,
        #: or was refused by a relay (issue 13: the retry after them, `stepping.step_relay`);
        #: kept once a relay carries the peer again, until it reports (`hard_nat.reporting_until`).
        self.relays_unanswered = 0
        self.relay_retry_at: int | None = None
        self.probes_done = 0
        self.next_probe_at: int | None = None
        self.lost_endpoint: str | None = None
        self.lost_at: int | None = None
        #: Not state: the engine's index into its timer heap.
        self.wake_at: int | None = None

    def reset_paths(self) -> None:
        """Forget everything about paths and timers (a peer removed or re-added)."""
        self.path = self.session = None
        self.last_handshake_at = None
        self.next_round_at = None
        self.relay_pending = self.relay_deadline = None
        self.relays_failed = ()
        self.relays_unanswered = 0
        self.relay_retry_at = None
        self.probes_done = 0
        self.next_probe_at = None

    #: Fields added since the snapshot format began go last (`_ADDED_FIELDS`, `from_state`).
    _STATE_FIELDS = tuple(name for name in __slots__ if name not in _NOT_IN_SNAPSHOT) + tuple(
        name for name, _default in _ADDED_FIELDS
    )

    def to_state(self) -> list[Any]:
        return [
            list(value) if isinstance(value, tuple) else value
            for value in (getattr(self, name) for name in self._STATE_FIELDS)
        ]

    @classmethod
    def from_state(cls, state: list[Any]) -> PeerRecord:
        """A record from `to_state`'s list; one written before a field was added lacks it."""
        missing = len(cls._STATE_FIELDS) - len(state)
        if 0 < missing <= len(_ADDED_FIELDS):
            state = [*state, *(default for _name, default in _ADDED_FIELDS[-missing:])]
        made = cls.__new__(cls)
        for name, value in zip(cls._STATE_FIELDS, state, strict=True):
            setattr(made, name, tuple(value) if isinstance(value, list) else value)
        made.wake_at = None
        return made
