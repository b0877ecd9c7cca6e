"""Deliberately broken engines: each a context manager that patches one defect in, and out again.

Never an edit of core/: every mutant monkeypatches a method or a projection for
the duration of a `with` block. The mutation check (test_mutants.py) asserts
that the fuzzing properties catch each one and shrink it to a short scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from natrelay.core import engine as engine_module
from natrelay.core import lifecycle as lc
from natrelay.core.engine import Engine
from natrelay.core.events import HandshakeObserved, RelayEligibilityReached, RelayScore
from natrelay.core.relay_cache import RelayCache
from natrelay.core.relay_registry import RelayRegistry


@contextmanager
def off_by_one_relay_threshold() -> Iterator[None]:
    """Direct-first peers become relay-eligible one failed round early."""
    original = Engine._step

    def _step(self: Engine, record: Any) -> bool:
        key = record.key
        failed = self.attempts.attempts(key)
        if (
            record.state == lc.DIRECT_TRYING
            and self.attempts.open_round(key) is None
            and self.relays_allowed(record)
            and failed == self.policy.min_direct_attempts - 1
        ):
            self._decide(
                RelayEligibilityReached(
                    at=self.now, peer=key, failed_attempts=failed, threshold=self.policy.min_direct_attempts
                )
            )
            return True
        return original(self, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "_step", _step)
        yield


@contextmanager
def live_only_direct_sighting() -> Iterator[None]:
    """The fold forgets direct handshakes; only the live reaction records them (lost on replay)."""
    folds = engine_module._FOLDS
    original_fold = folds[HandshakeObserved]
    original_react = Engine._react_handshake

    def fold(self: Engine, event: HandshakeObserved) -> None:
        record = self.peers[event.peer]
        seen = record.direct_seen, record.direct_seen_at
        original_fold(self, event)
        record.direct_seen, record.direct_seen_at = seen

    def react(self: Engine, event: HandshakeObserved) -> None:
        if event.endpoint is not None:
            record = self.peers[event.peer]
            record.direct_seen, record.direct_seen_at = event.endpoint, event.at
        original_react(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(folds, HandshakeObserved, fold)
        patch.setattr(Engine, "_react_handshake", react)
        patch.setitem(engine_module._REACTIONS, HandshakeObserved, react)
        yield


@contextmanager
def snapshot_drops_relay_track_record() -> Iterator[None]:
    """Restoring the relay cache from a snapshot forgets each relay's successes and failures."""
    original: Callable[..., RelayCache] = RelayCache.from_state.__func__  # type: ignore[attr-defined]

    def from_state(cls: type[RelayCache], state: dict[str, Any]) -> RelayCache:
        made = original(cls, state)
        for entry in made.peers.values():
            entry.stats = {}
        return made

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RelayCache, "from_state", classmethod(from_state))
        yield


@contextmanager
def tie_break_by_dict_order() -> Iterator[None]:
    """Relays with equal scores ranked in the registry dict's insertion order, not by id."""

    def rank(
        self: RelayRegistry,
        policy: Any,
        now: int,
        *,
        preferred_region: str | None = None,
        worked_before: Any = (),
        exclude: Any = (),
    ) -> tuple[RelayScore, ...]:
        scored = [
            RelayScore(relay=relay_id, score=self.score(info, policy, preferred_region))
            for relay_id, info in self.relays.items()
            if relay_id not in exclude and self.usable(info, policy, now)
        ]
        earlier = {relay: index for index, relay in enumerate(worked_before)}
        scored.sort(key=lambda s: (earlier.get(s.relay, len(earlier)), -s.score))
        return tuple(scored)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RelayRegistry, "rank", rank)
        yield


@contextmanager
def upgrade_never_fires() -> Iterator[None]:
    """A relayed peer keeps probing but never moves to the direct path that answered."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "_maybe_upgrade", lambda self, record: False)
        yield


MUTANTS: dict[str, Callable[[], Any]] = {
    "off_by_one_relay_threshold": off_by_one_relay_threshold,
    "live_only_direct_sighting": live_only_direct_sighting,
    "snapshot_drops_relay_track_record": snapshot_drops_relay_track_record,
    "tie_break_by_dict_order": tie_break_by_dict_order,
    "upgrade_never_fires": upgrade_never_fires,
}
