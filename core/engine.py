"""The engine: observations in, decisions and commands out. Sans-I/O.

`Engine` is the public class, a thin shell over the Decider's parts:

- `state`    (`State`): peer records, projections, `now`, policy; read-only questions;
- `evolve`   (`evolve(state, event)`): the fold, the only writer of state;
- `checks`   (`rejection(state, observation)`): why an observation does not apply;
- `decide`   (`decide(engine, observation) -> Reaction`): the reactions;
- `stepping` (`advance(engine, record)`): the decisions due per lifecycle state;
- `schedule` (`wake_time`, `next_deadline`): timers, from the folded state;
- `seed_api`: the seed's questions and `step_with_relay`;
- `reaction` (`Reaction`, `emit`): a decision taken = folded + recorded.

Rules of the engine:
- `handle(observation)` is the only way the engine learns anything new: it is
  `decide`, which folds the observation, decides, folds each decision it takes,
  and returns them with the commands to execute.
- `apply(event)` is `evolve`, the pure fold used both live and by replay:
  applying a log's events in order rebuilds exactly the state the live engine had.
- The engine never reads a clock: `now` is the largest event time seen, so a
  clock that jumps backwards cannot move timers back. `next_deadline()` says
  when to feed the next `Tick`.
- Every choice is deterministic: peers are visited in key order, relays are
  ranked with ties broken by id, jitter is a hash of (peer, round).
- An observation that does not apply (unknown peer, late or contradictory) is
  answered with an `ObservationRejected` decision, never silently dropped.

This module wires and never decides or folds by itself. The names below that
start with `_` are the engine's patch points and old method names, kept so
that code and tests written against the single-class engine keep working
(tests/property/mutants.py patches `Engine._step`, `Engine._maybe_upgrade`,
`Engine._react_handshake` and the `_FOLDS`/`_REACTIONS` tables of this module).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import checks, decide, evolve, schedule, seed_api, stepping
from .attempts import AttemptCounts
from .checks import MAX_ANNOUNCEMENT_LIFETIME_MS
from .commands import Command
from .direct_cache import DirectCache
from .events import Event
from .hard_nat_book import HardNatBook
from .peers import PeerRecord
from .policy import Policy
from .reaction import Reaction, emit
from .relay_cache import RelayCache
from .relay_registry import RelayRegistry
from .state import EngineError, State

__all__ = ["MAX_ANNOUNCEMENT_LIFETIME_MS", "SNAPSHOT_FORMAT", "Engine", "EngineError", "Reaction"]

SNAPSHOT_FORMAT = 1

#: The tables themselves (not copies): patching an entry here patches the engine.
_FOLDS = evolve.FOLDS
_CHECKS = checks.CHECKS
_REACTIONS = decide.REACTIONS


class Engine(State):
    """The NAT-traversal decision engine for one node."""

    def __init__(self, policy: Policy | None = None) -> None:
        super().__init__(policy)
        #: The reaction being built while one observation is decided (see `reaction.emit`).
        self._decisions: list[Event] = []
        self._commands: list[Command] = []
        #: Peers whose relay retry a just-announced relay makes due (see decide.py).
        self._retry_relays_now: set[str] = set()
        #: The observation being decided reports new candidates of its peer (see decide.py).
        self._moved = False

    # the Decider: fold, decide
    apply = evolve.evolve
    handle = decide.decide

    # timers
    wake_time = schedule.wake_time
    reschedule_all = schedule.reschedule_all
    next_deadline = schedule.next_deadline

    # the seed's API
    should_attempt_relay = seed_api.should_attempt_relay
    get_relay_candidates = seed_api.get_relay_candidates
    remaining_peers = seed_api.remaining_peers
    remaining = seed_api.remaining
    is_finished = seed_api.is_finished
    step_with_relay = seed_api.step_with_relay

    # patch points called through the engine (stepping.advance -> _step -> _maybe_upgrade)
    _step = stepping.step
    _maybe_upgrade = stepping.maybe_upgrade

    # the single-class engine's internal names, kept for code written against it
    _decide = emit
    _advance = stepping.advance
    _rejection = checks.rejection
    _schedule = schedule.schedule
    _upgrade_ready_at = schedule.upgrade_ready_at
    _react_handshake = decide.react_handshake

    # ------------------------------------------------- snapshots and state

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, as plain data (snapshots, equality in tests)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "now": self.now,
            "local_nat": self.local_nat,
            "policy": self.policy.to_dict(),
            "peers": {key: record.to_state() for key, record in sorted(self.peers.items())},
            "attempts": self.attempts.to_state(),
            "direct_cache": self.direct_cache.to_state(),
            "relay_cache": self.relay_cache.to_state(),
            "registry": self.registry.to_state(),
            "hard_nat": self.hard_nat.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Engine:
        if state.get("format") != SNAPSHOT_FORMAT:
            raise EngineError(f"unsupported snapshot format {state.get('format')!r}")
        engine = cls(Policy.from_dict(state["policy"]))
        engine.now = state["now"]
        engine.local_nat = state["local_nat"]
        engine.peers = {key: PeerRecord.from_state(item) for key, item in state["peers"].items()}
        engine.attempts = AttemptCounts.from_state(state["attempts"])
        engine.direct_cache = DirectCache.from_state(state["direct_cache"])
        engine.relay_cache = RelayCache.from_state(state["relay_cache"])
        engine.registry = RelayRegistry.from_state(state["registry"])
        engine.hard_nat = HardNatBook.from_state(state.get("hard_nat"))
        for record in engine.peers.values():
            for relay in evolve.holds(record):
                engine.relay_held[relay] = engine.relay_held.get(relay, 0) + 1
        engine._plans = {}
        engine.reschedule_all()
        return engine

    @classmethod
    def rebuilt(cls, events: Iterable[Event], policy: Policy | None = None) -> Engine:
        """An engine folded from logged events (replay without re-deciding)."""
        engine = cls(policy)
        fold = evolve.evolve
        for event in events:
            fold(engine, event)
        engine.reschedule_all()
        return engine
