"""Deliberately broken engines: each a context manager that patches one defect in, and out again.

Never an edit of core/: every mutant monkeypatches a method or a projection for
the duration of a `with` block. The mutation check (test_mutants.py) asserts
that the fuzzing properties catch each one and shrink it to a short scenario.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st

from natrelay.core import engine as engine_module
from natrelay.core import lifecycle as lc
from natrelay.core.engine import Engine
from natrelay.core.events import HandshakeObserved, RelayEligibilityReached, RelayScore
from natrelay.core.policy import Policy
from natrelay.core.relay_cache import RelayCache
from natrelay.core.relay_registry import RelayRegistry
from natrelay.tools.fuzz.machine import NatrelayMachine


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
def tie_break_by_object_identity() -> Iterator[None]:
    """Relays with equal scores ranked by the memory address of their registry entries."""
    original = RelayRegistry.rank

    def rank(self: RelayRegistry, policy: Any, now: int, **options: Any) -> tuple[RelayScore, ...]:
        ranked = original(self, policy, now, **options)
        address = {relay: id(info) for relay, info in self.relays.items()}
        score = {s.relay: s.score for s in ranked}
        worked = options.get("worked_before", ())
        lead = [s for s in ranked if s.relay in worked]
        rest = sorted(
            (s for s in ranked if s.relay not in worked), key=lambda s: (-score[s.relay], address[s.relay])
        )
        return (*lead, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RelayRegistry, "rank", rank)
        yield


@contextmanager
def upgrade_never_fires() -> Iterator[None]:
    """A relayed peer keeps probing but never moves to the direct path that answered."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "_maybe_upgrade", lambda self, record: False)
        yield


# ------------------------------------------------------------ source mutants
#
# The mutants below are one-line edits of the real source, made at run time: the
# function's source is read, one snippet replaced, and the result compiled in the
# function's own module and patched in for the `with` block (and into the
# dispatch tables that hold the original function). `core/` is never edited on disk.


def _resolve(target: str) -> tuple[Any, str, Any]:
    """ "module:Qual.name" -> (owner, attribute name, the attribute as stored on its owner)."""
    module_name, _, qualname = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, inspect.getattr_static(owner, name)


def _recompiled(target: str, old: str, new: str) -> tuple[Any, str, Any, Any]:
    owner, name, stored = _resolve(target)
    function = stored.__func__ if isinstance(stored, classmethod | staticmethod) else stored
    source = textwrap.dedent(inspect.getsource(function))
    if source.count(old) != 1:
        raise AssertionError(f"mutant of {target}: {old!r} found {source.count(old)} times, not once")
    namespace: dict[str, Any] = {}
    exec(compile(source.replace(old, new), f"<mutant of {target}>", "exec"), function.__globals__, namespace)
    made = namespace[name]
    if isinstance(stored, classmethod | staticmethod) and not isinstance(made, classmethod | staticmethod):
        made = type(stored)(made)
    return owner, name, function, made


@contextmanager
def source_mutant(*edits: tuple[str, str, str]) -> Iterator[None]:
    """Patch in each (target, old snippet, new snippet) edit for the duration of the block.

    The recompiled function replaces the original wherever natrelay holds it: on its
    owner, under other names in other modules (`from .schedule import upgrade_ready_at`),
    as a class attribute alias (`Engine._upgrade_ready_at = schedule.upgrade_ready_at`)
    and in dispatch tables (the fold and reaction dicts).
    """
    with pytest.MonkeyPatch.context() as patch:
        for target, old, new in edits:
            owner, name, function, made = _recompiled(target, old, new)
            patch.setattr(owner, name, made)
            plain = made.__func__ if isinstance(made, classmethod | staticmethod) else made
            for holder, key, is_dict in _holders(function):
                if is_dict:
                    patch.setitem(holder, key, plain)
                elif holder is not owner or key != name:
                    patch.setattr(holder, key, plain)
        yield


def _holders(function: Any) -> list[tuple[Any, Any, bool]]:
    """Every natrelay module, class and module-level dict that holds `function`."""
    found: list[tuple[Any, Any, bool]] = []
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("natrelay."):
            continue
        for attribute, value in list(vars(module).items()):
            if value is function:
                found.append((module, attribute, False))
            elif type(value) is dict:
                found.extend((value, k, True) for k, v in list(value.items()) if v is function)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                found.extend((value, a, False) for a, v in list(vars(value).items()) if v is function)
    return found


def _mutant(*edits: tuple[str, str, str]) -> Callable[[], Any]:
    return lambda: source_mutant(*edits)


_ENGINE = "natrelay.core.engine:Engine"

#: The decision bugs the named-invariant fuzz used to miss, and the six classes that survived
#: everything (issue 17): each a one-line edit of the real code.
SOURCE_MUTANTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "relay_threshold_one_round_late": (
        (
            "natrelay.core.stepping:step",
            "if failed >= policy.min_direct_attempts and",
            "if failed > policy.min_direct_attempts and",
        ),
    ),
    "loss_ewma_weights_swapped": (
        (
            "natrelay.core.relay_registry:RelayRegistry.apply",
            "info.loss = LOSS_KEEP * info.loss + (1 - LOSS_KEEP) * event.loss",
            "info.loss = (1 - LOSS_KEEP) * info.loss + LOSS_KEEP * event.loss",
        ),
    ),
    "direct_cache_ranked_worst_first": (
        (
            "natrelay.core.direct_cache:_rank_key",
            "return (-entry.successes, -entry.last_success_at, entry.endpoint)",
            "return (entry.successes, entry.last_success_at, entry.endpoint)",
        ),
    ),
    "upgrade_ignores_hysteresis": (
        (
            "natrelay.core.schedule:upgrade_ready_at",
            "return max(seen_at, record.lost_at + state.policy.switch_hysteresis_ms)",
            "return seen_at",
        ),
    ),
    "hysteresis_read_in_seconds": (
        (
            "natrelay.core.schedule:upgrade_ready_at",
            "record.lost_at + state.policy.switch_hysteresis_ms)",
            "record.lost_at + state.policy.switch_hysteresis_ms // 1000)",
        ),
    ),
    # (a) the snapshot leaves out one engine field: a restored engine reports the NAT unknown
    "snapshot_omits_local_nat": (
        (f"{_ENGINE}.state", '"local_nat": self.local_nat,', ""),
        (f"{_ENGINE}.from_state", 'state["local_nat"]', 'state.get("local_nat", "unknown")'),
    ),
    # (b) a restored direct cache ignores a non-default direct_cache_max_age_ms
    "restored_cache_ignores_max_age": (
        (
            "natrelay.core.direct_cache:DirectCache.from_state",
            'made = cls(state["size"], state["max_age_ms"])',
            'made = cls(state["size"])',
        ),
    ),
    # (c) a relay at exactly max_relay_load is never ranked
    "relay_at_max_load_unusable": (
        (
            "natrelay.core.relay_registry:RelayRegistry.usable",
            "return info.load <= policy.max_relay_load",
            "return info.load < policy.max_relay_load",
        ),
    ),
    # (d) every direct-round backoff gap doubled: off by one in the call of the gap function
    "backoff_gap_doubled": (
        (
            "natrelay.core.evolve:fold_round_failed",
            "round_gap_ms(failed - 1, jitter)",
            "round_gap_ms(failed, jitter)",
        ),
    ),
    # (e) relays that carried the peer before ranked least successful first
    "worked_before_least_successful_first": (
        (
            "natrelay.core.relay_cache:RelayCache.worked_before",
            "worked = [(-s, f, relay)",
            "worked = [(s, f, relay)",
        ),
    ),
    # (f) verify with its tail check disabled
    "verify_tail_unchecked": (
        (
            "natrelay.eventlog.replay:verify",
            "if position < len(produced) and (until_seq is None or until_seq >= log.last_seq()):",
            "if False:",
        ),
    ),
}


#: Short timers, so that a few steps reach relays, probes and upgrades.
_QUICK = {
    "step_interval_ms": 100,
    "attempt_timeout_ms": 300,
    "relay_connect_timeout_ms": 1_000,
    "relay_retry_ms": 2_000,
    "upgrade_probe_interval_ms": 500,
    "switch_hysteresis_ms": 0,
}
#: The two policies of the mutation check: relay-first (relays, sessions, upgrades at once)
#: and direct-first with a threshold of 2 (the threshold has a "one early" to get wrong).
MUTATION_POLICIES = (
    Policy(mode="relay_first", **_QUICK),
    Policy(mode="direct_first", min_direct_attempts=2, **_QUICK),
)


class MutationMachine(NatrelayMachine):
    """NatrelayMachine with every rule and every invariant, its policy drawn from two.

    Drawing the policy from the whole space (17 fields) is right for finding
    unknown bugs, but shrinking then spends hundreds of runs simplifying fields that
    no mutant depends on; two fixed policies keep each mutant's hunt in seconds.
    """

    policy_strategy = st.sampled_from(MUTATION_POLICIES)


@attrs.frozen
class Mutant:
    """A broken engine, the invariant that must catch it, and the budget to find it in."""

    patch: Callable[[], Any]
    #: The invariant(s) that must trip: any one of them counts as caught.
    caught_by: str | tuple[str, ...]
    max_examples: int = 100
    step_count: int = 10


MUTANTS: dict[str, Mutant] = {
    "off_by_one_relay_threshold": Mutant(
        off_by_one_relay_threshold, "policy.no_relay_before_threshold", max_examples=400
    ),
    "live_only_direct_sighting": Mutant(live_only_direct_sighting, "replay.rebuild_equals_live"),
    "snapshot_drops_relay_track_record": Mutant(
        snapshot_drops_relay_track_record,
        ("replay.snapshot_plus_tail_equals_full", "replay.restored_engine_equals_live"),
    ),
    "tie_break_by_dict_order": Mutant(tie_break_by_dict_order, "relay.ranked_by_score_then_id"),
    # Object identity differs from run to run, so besides the ranking invariant the same
    # defect can surface first as a log that re-decides differently: both are catches.
    "tie_break_by_object_identity": Mutant(
        tie_break_by_object_identity,
        ("relay.ranked_by_score_then_id", "replay.verify_redecides_every_decision"),
    ),
    "upgrade_never_fires": Mutant(upgrade_never_fires, "paths.relayed_peer_upgrades", max_examples=200),
}


#: The policies of the source-mutant hunts: off every default the six surviving classes hide
#: behind (hysteresis, cache age and size, backoff growth, a load ceiling the draws hit exactly).
HUNT_POLICIES = (
    Policy(
        mode="relay_first",
        switch_hysteresis_ms=10_000,
        direct_cache_max_age_ms=5_000,
        direct_cache_size=2,
        max_relay_load=50,
        parallel_endpoints=1,
        **{k: v for k, v in _QUICK.items() if k != "switch_hysteresis_ms"},
    ),
    Policy(
        mode="direct_first",
        min_direct_attempts=2,
        switch_hysteresis_ms=3_000,
        direct_cache_max_age_ms=60_000,
        parallel_endpoints=2,
        backoff_factor=3.0,
        **{k: v for k, v in _QUICK.items() if k != "switch_hysteresis_ms"},
    ),
)


class HuntMachine(NatrelayMachine):
    """NatrelayMachine with every rule and invariant, its policy drawn from `HUNT_POLICIES`."""

    policy_strategy = st.sampled_from(HUNT_POLICIES)
