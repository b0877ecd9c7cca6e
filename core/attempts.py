"""Projection: direct attempts per peer.

Owns the current direct round of each peer (which endpoints were tried, which
are still outstanding, its deadline) and the count of failed connect rounds
since the peer's last direct success. Upgrade-probe rounds of a relayed peer
are tracked the same way but do not count as failures: the peer is already
past the relay threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from .events import (
    DirectAttemptStarted,
    DirectAttemptTimedOut,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    PathUpgraded,
    PeerRemoved,
    Purpose,
)


class Round:
    """One round of direct attempts of one peer."""

    __slots__ = ("attempt", "deadline", "endpoints", "is_open", "outstanding", "purpose")

    def __init__(
        self,
        attempt: int,
        purpose: Purpose,
        endpoints: tuple[str, ...],
        outstanding: tuple[str, ...],
        deadline: int,
        is_open: bool = True,
    ) -> None:
        self.attempt = attempt
        self.purpose = purpose
        self.endpoints = endpoints
        self.outstanding = outstanding
        self.deadline = deadline
        self.is_open = is_open

    def to_state(self) -> list[Any]:
        return [
            self.attempt,
            self.purpose,
            list(self.endpoints),
            list(self.outstanding),
            self.deadline,
            self.is_open,
        ]

    @classmethod
    def from_state(cls, state: list[Any]) -> Round:
        attempt, purpose, endpoints, outstanding, deadline, is_open = state
        return cls(attempt, purpose, tuple(endpoints), tuple(outstanding), deadline, is_open)


class AttemptCounts:
    """Failed direct rounds since the last success, and each peer's current round."""

    __slots__ = ("failed", "rounds")
    #: The event types this projection folds (the engine skips it for the others).
    HANDLES: ClassVar[frozenset[type]]

    def __init__(self) -> None:
        self.rounds: dict[str, Round] = {}
        self.failed: dict[str, int] = {}

    def attempts(self, peer: str) -> int:
        """Failed direct (connect) rounds since the peer's last direct success."""
        return self.failed.get(peer, 0)

    def current_round(self, peer: str) -> Round | None:
        return self.rounds.get(peer)

    def open_round(self, peer: str) -> Round | None:
        found = self.rounds.get(peer)
        return found if found is not None and found.is_open else None

    def next_attempt_number(self, peer: str) -> int:
        found = self.rounds.get(peer)
        return 1 if found is None else found.attempt + 1

    def apply(self, event: Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def handler(self, kind: type) -> Callable[[Any], None]:
        """`apply` for events of type `kind` only, bound to this projection (the fold's plan)."""
        handler = _HANDLERS.get(kind)
        return self.apply if handler is None else handler.__get__(self)

    def _started(self, event: DirectAttemptStarted) -> None:
        found = self.rounds.get(event.peer)
        if found is not None and found.is_open and found.attempt == event.attempt:
            found.endpoints += (event.endpoint,)
            found.outstanding += (event.endpoint,)
            found.deadline = max(found.deadline, event.deadline)
        else:
            self.rounds[event.peer] = Round(
                event.attempt, event.purpose, (event.endpoint,), (event.endpoint,), event.deadline
            )

    def _timed_out(self, event: DirectAttemptTimedOut) -> None:
        found = self.rounds.get(event.peer)
        if found is not None and found.is_open and found.attempt == event.attempt:
            found.outstanding = tuple(e for e in found.outstanding if e != event.endpoint)

    def _round_failed(self, event: DirectRoundFailed) -> None:
        found = self.rounds.get(event.peer)
        if found is not None:
            found.is_open = False
            found.outstanding = ()
        if event.purpose == "connect":
            self.failed[event.peer] = self.failed.get(event.peer, 0) + 1

    def _succeeded(self, event: DirectPathSelected | PathUpgraded) -> None:
        self.rounds.pop(event.peer, None)
        self.failed.pop(event.peer, None)

    def to_state(self) -> dict[str, Any]:
        return {
            "rounds": {peer: r.to_state() for peer, r in sorted(self.rounds.items())},
            "failed": dict(sorted(self.failed.items())),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AttemptCounts:
        made = cls()
        made.rounds = {peer: Round.from_state(r) for peer, r in state["rounds"].items()}
        made.failed = dict(state["failed"])
        return made


_HANDLERS: dict[type, Any] = {
    DirectAttemptStarted: AttemptCounts._started,
    DirectAttemptTimedOut: AttemptCounts._timed_out,
    DirectRoundFailed: AttemptCounts._round_failed,
    DirectPathSelected: AttemptCounts._succeeded,
    PathUpgraded: AttemptCounts._succeeded,
    PeerRemoved: AttemptCounts._succeeded,
}
AttemptCounts.HANDLES = frozenset(_HANDLERS)
