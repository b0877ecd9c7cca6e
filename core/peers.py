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
        self.relay_retry_at = None
        self.probes_done = 0
        self.next_probe_at = None

    _STATE_FIELDS = tuple(name for name in __slots__ if name != "wake_at")

    def to_state(self) -> list[Any]:
        return [
            list(value) if isinstance(value, tuple) else value
            for value in (getattr(self, name) for name in self._STATE_FIELDS)
        ]

    @classmethod
    def from_state(cls, state: list[Any]) -> PeerRecord:
        made = cls.__new__(cls)
        for name, value in zip(cls._STATE_FIELDS, state, strict=True):
            setattr(made, name, tuple(value) if isinstance(value, list) else value)
        made.wake_at = None
        return made
