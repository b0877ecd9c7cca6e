"""Projection: hard-NAT (birthday) attempts per peer (issue 16, docs/hard-nat.md).

Owns each peer's open attempt (its budget and deadline), how many attempts were
started and how many failed in a row since the last reset, and when the next may
start (the `retry_at` the engine decided with the last failure). A success resets
the counts; so does a change of this node's addresses (a new network: the
pairing may differ), for every peer. A removed peer is forgotten.

Pure fold of logged events: no policy, no clock.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .events import (
    Event,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    LocalAddressesChanged,
    PeerRemoved,
)


class HardTry:
    """One open attempt: what the engine asked the data plane for."""

    __slots__ = ("attempt", "deadline", "endpoint", "probes", "rate_per_s", "role", "sockets", "started_at")

    def __init__(self, event: HardNatAttemptStarted) -> None:
        self.attempt = event.attempt
        self.role: str = event.role
        self.endpoint = event.endpoint
        self.sockets = event.sockets
        self.probes = event.probes
        self.rate_per_s = event.rate_per_s
        self.started_at = event.at
        self.deadline = event.deadline

    def to_state(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_state(cls, state: list[Any]) -> HardTry:
        made = cls.__new__(cls)
        for name, value in zip(cls.__slots__, state, strict=True):
            setattr(made, name, value)
        return made


class HardNatBook:
    """Open attempts, counts and retry times of hard-NAT attempts, per peer."""

    __slots__ = ("failures", "next_at", "numbers", "open", "tries")
    HANDLES: ClassVar[frozenset[type]] = frozenset(
        {
            HardNatAttemptStarted,
            HardNatAttemptSucceeded,
            HardNatAttemptFailed,
            PeerRemoved,
            LocalAddressesChanged,
        }
    )

    def __init__(self) -> None:
        self.open: dict[str, HardTry] = {}
        #: Attempts started since the last reset, failed in a row, and the last attempt number.
        self.tries: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.numbers: dict[str, int] = {}
        #: The earliest time the next attempt may start (absent: now; None: never, until a reset).
        self.next_at: dict[str, int | None] = {}

    def apply(self, event: Event) -> None:
        kind = type(event)
        if kind is HardNatAttemptStarted:
            assert isinstance(event, HardNatAttemptStarted)
            self.open[event.peer] = HardTry(event)
            self.tries[event.peer] = self.tries.get(event.peer, 0) + 1
            self.numbers[event.peer] = event.attempt
            self.next_at.pop(event.peer, None)
        elif kind is HardNatAttemptSucceeded:
            assert isinstance(event, HardNatAttemptSucceeded)
            self.open.pop(event.peer, None)
            self.tries.pop(event.peer, None)
            self.failures.pop(event.peer, None)
        elif kind is HardNatAttemptFailed:
            assert isinstance(event, HardNatAttemptFailed)
            self.open.pop(event.peer, None)
            self.failures[event.peer] = self.failures.get(event.peer, 0) + 1
            self.next_at[event.peer] = event.retry_at
        elif kind is PeerRemoved:
            assert isinstance(event, PeerRemoved)
            for table in (self.open, self.tries, self.failures, self.next_at):
                table.pop(event.peer, None)
        elif kind is LocalAddressesChanged:
            self.tries.clear()
            self.failures.clear()
            self.next_at.clear()

    def next_attempt_number(self, peer: str) -> int:
        """Attempt numbers grow per peer and are never reused (a late report names an old one)."""
        return self.numbers.get(peer, 0) + 1

    def to_state(self) -> dict[str, Any]:
        return {
            "open": {peer: item.to_state() for peer, item in sorted(self.open.items())},
            "tries": dict(sorted(self.tries.items())),
            "failures": dict(sorted(self.failures.items())),
            "numbers": dict(sorted(self.numbers.items())),
            "next_at": dict(sorted(self.next_at.items())),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> HardNatBook:
        """The book of a snapshot; a snapshot written before issue 16 has none (empty)."""
        made = cls()
        if state:
            made.open = {peer: HardTry.from_state(item) for peer, item in state["open"].items()}
            made.tries = dict(state["tries"])
            made.failures = dict(state["failures"])
            made.numbers = dict(state["numbers"])
            made.next_at = dict(state["next_at"])
        return made
