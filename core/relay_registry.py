"""Projection: the relay registry, and the ranking of relays for a peer.

Owns what the mesh knows of each relay: its announcement (region, capability
bits, capacity, expiry), its measured health (RTT, load, loss as an EWMA
0.7 old / 0.3 new) and its reliability (EWMA 0.8 old / 0.2 new over session
outcomes). Entries that have not been announced or measured for
`relay_stale_after_ms` are not ranked. The score is formnet's weighted sum
times (1 - loss); ties go to the smaller relay id, never to dict order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from .events import (
    Event,
    RelayAbandoned,
    RelayAnnounced,
    RelayHealthMeasured,
    RelayScore,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
)
from .policy import Policy

LOSS_KEEP = 0.7
RELIABILITY_KEEP = 0.8
#: A relay not yet measured scores as if its RTT were half the ceiling.
UNMEASURED_LATENCY_SCORE = 0.5


class RelayInfo:
    """What the registry knows of one relay."""

    __slots__ = (
        "address",
        "capabilities",
        "capacity",
        "expires_at",
        "last_seen",
        "load",
        "loss",
        "region",
        "relay",
        "reliability",
        "rtt_ms",
    )

    def __init__(self, relay: str, region: str) -> None:
        self.relay = relay
        self.region = region
        self.capabilities = 0
        self.capacity = 100
        self.address: str | None = None
        self.expires_at: int | None = None
        self.last_seen = 0
        self.rtt_ms: int | None = None
        self.load = 0
        self.loss = 0.0
        self.reliability = 1.0

    def to_state(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_state(cls, state: list[Any]) -> RelayInfo:
        made = cls.__new__(cls)
        for name, value in zip(cls.__slots__, state, strict=True):
            setattr(made, name, value)
        return made


class RelayRegistry:
    """relay id -> RelayInfo, with the ranking for a peer."""

    __slots__ = ("relays",)
    #: The event types this projection folds (the engine skips it for the others).
    HANDLES: ClassVar[frozenset[type]] = frozenset(
        {
            RelayAnnounced,
            RelayWithdrawn,
            RelayHealthMeasured,
            RelaySessionEstablished,
            RelaySessionFailed,
            RelayAbandoned,
        }
    )

    def __init__(self) -> None:
        self.relays: dict[str, RelayInfo] = {}

    def knows(self, relay: str) -> bool:
        return relay in self.relays

    def apply(self, event: Event) -> None:
        if type(event) is RelayAnnounced:
            info = self.relays.get(event.relay)
            if info is None:
                info = self.relays[event.relay] = RelayInfo(event.relay, event.region)
            info.region = event.region
            info.capabilities = event.capabilities
            info.capacity = event.capacity
            info.address = event.address
            info.expires_at = event.expires_at
            info.last_seen = max(info.last_seen, event.at)
        elif type(event) is RelayWithdrawn:
            self.relays.pop(event.relay, None)
        elif type(event) is RelayHealthMeasured:
            info = self.relays.get(event.relay)
            if info is not None:
                info.rtt_ms = event.rtt_ms
                info.load = event.load
                info.loss = LOSS_KEEP * info.loss + (1 - LOSS_KEEP) * event.loss
                info.last_seen = max(info.last_seen, event.at)
        elif type(event) is RelaySessionEstablished:
            self._outcome(event.relay, 1.0)
        elif type(event) is RelaySessionFailed or type(event) is RelayAbandoned:
            self._outcome(event.relay, 0.0)

    def _outcome(self, relay: str, value: float) -> None:
        info = self.relays.get(relay)
        if info is not None:
            info.reliability = RELIABILITY_KEEP * info.reliability + (1 - RELIABILITY_KEEP) * value

    def usable(self, info: RelayInfo, policy: Policy, now: int) -> bool:
        """Fresh, unexpired, and not over the policy's maximum load."""
        if info.expires_at is not None and info.expires_at <= now:
            return False
        if now - info.last_seen > policy.relay_stale_after_ms:
            return False
        return info.load <= policy.max_relay_load

    def score(self, info: RelayInfo, policy: Policy, preferred_region: str | None) -> float:
        """formnet's weighted score of one relay, times (1 - loss)."""
        w = policy.weights
        if info.rtt_ms is None:
            latency = UNMEASURED_LATENCY_SCORE
        else:
            latency = 1.0 - min(info.rtt_ms, w.latency_ceiling_ms) / w.latency_ceiling_ms
        load = 1.0 - min(info.load, 100) / 100.0
        required = policy.required_capabilities
        capability = 1.0 if info.capabilities & required == required else 0.0
        region = 1.0 if preferred_region is not None and info.region == preferred_region else 0.0
        total = (
            w.latency * latency
            + w.load * load
            + w.capability * capability
            + w.region * region
            + w.reliability * info.reliability
        )
        return round(total * (1.0 - info.loss), 6)

    def rank(
        self,
        policy: Policy,
        now: int,
        *,
        preferred_region: str | None = None,
        worked_before: Sequence[str] = (),
        exclude: Collection[str] = (),
    ) -> tuple[RelayScore, ...]:
        """Usable relays for a peer, best first: those that worked for it before lead."""
        scored = []
        for relay_id, info in self.relays.items():
            if relay_id in exclude or not self.usable(info, policy, now):
                continue
            scored.append(RelayScore(relay=relay_id, score=self.score(info, policy, preferred_region)))
        earlier = {relay: index for index, relay in enumerate(worked_before)}
        never = len(earlier)
        scored.sort(key=lambda s: (earlier.get(s.relay, never), -s.score, s.relay))
        return tuple(scored)

    def to_state(self) -> dict[str, Any]:
        return {relay: info.to_state() for relay, info in sorted(self.relays.items())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RelayRegistry:
        made = cls()
        made.relays = {relay: RelayInfo.from_state(item) for relay, item in state.items()}
        return made
