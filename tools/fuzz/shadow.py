"""The replay shadow: the replay invariants kept step by step instead of from seq 0.

Owns `ReplayShadow`, two engines beside the live one fed each new row of the
node's view: one folds every event (a rebuild), one re-decides every
observation and must take exactly the recorded decisions (a verify); and
`DecisionFollower`, an engine restored at a snapshot or restart that must go
on deciding exactly as the live node does, with `engine_facts`, the
attribute-by-attribute comparison of a restored engine with the live one.
"""

from __future__ import annotations

from typing import Any

import attrs

from natrelay.core.engine import Engine
from natrelay.core.events import Event, PolicySet

from .steps import _fail


class ReplayShadow:
    """The replay invariants, kept step by step instead of from seq 0 after every step.

    Two engines run beside the live one, fed each new row of the node's view as it
    is appended: `folded` applies every event (what `rebuild` does from seq 0), and
    `redecider` handles only the observations and must take exactly the recorded
    decisions (what `verify` does). Fed the same rows in the same order, they reach
    the same verdicts as the full replays, at the cost of one step instead of the
    whole log; the harness still runs the full replays every `full_every` steps and
    at the end of a scenario.
    """

    def __init__(self) -> None:
        self.folded = Engine()
        self.redecider = Engine()
        self.produced: list[Event] = []
        self.position = 0
        self.observations = 0
        self.last_observation_seq: int | None = None

    def feed(self, seq: int, event: Event) -> None:
        self.folded.apply(event)
        if event.KIND == "observation":
            self.settle(seq)
            self.observations += 1
            self.last_observation_seq = seq
            if type(event) is PolicySet and self.observations == 1:
                self.redecider = Engine(event.policy)
            self.produced = list(self.redecider.handle(event).decisions)
            self.position = 0
            return
        got = self.produced[self.position] if self.position < len(self.produced) else None
        if got != event:
            _fail(
                "replay.verify_redecides_every_decision",
                f"seq {seq}: the log records {event.TYPE} but re-deciding gives "
                f"{got.TYPE if got is not None else 'nothing'}",
            )
        self.position += 1

    def settle(self, seq: int | None = None) -> None:
        """Every decision re-decided for the latest observation is in the log."""
        if self.position < len(self.produced):
            missing = self.produced[self.position]
            where = "the log ends" if seq is None else f"seq {seq} comes"
            _fail(
                "replay.verify_redecides_every_decision",
                f"after the observation at seq {self.last_observation_seq} the engine decides "
                f"{missing.TYPE}, but {where} before it",
            )


class DecisionFollower:
    """An engine restored at some seq, fed the log's later observations: it must decide the same.

    Restore equality (`state()` against `state()`) cannot see a field the snapshot
    omits, nor a restored setting that only matters later; taking the same FUTURE
    decisions as the live node, on the same observations, can.
    """

    def __init__(self, engine: Engine, after_seq: int, how: str) -> None:
        self.engine = engine
        self.after_seq = after_seq
        self.how = how
        self.produced: list[Event] = []
        self.position = 0
        self.observations = 0

    def feed(self, seq: int, event: Event) -> None:
        if seq <= self.after_seq:
            return
        if event.KIND == "observation":
            self.settle(seq)
            self.observations += 1
            self.produced = list(self.engine.handle(event).decisions)
            self.position = 0
            return
        got = self.produced[self.position] if self.position < len(self.produced) else None
        if got != event:
            _fail(
                "replay.restored_engine_decides_like_live",
                f"seq {seq}: the live node decided {event!r}; the engine restored by {self.how} "
                f"at seq {self.after_seq} decides {got!r}",
            )
        self.position += 1

    def settle(self, seq: int | None = None) -> None:
        if self.position < len(self.produced):
            missing = self.produced[self.position]
            _fail(
                "replay.restored_engine_decides_like_live",
                f"{'at the end' if seq is None else f'before seq {seq}'}: the engine restored by "
                f"{self.how} at seq {self.after_seq} decides {missing!r}, which the live node did not",
            )


#: Engine attributes that are caches or scratch space, not knowledge.
_SCRATCH = frozenset(
    {"_plans", "_endpoints_memo", "_timers", "_decisions", "_commands", "_releasing", "wake_at"}
)


def engine_facts(value: Any) -> Any:
    """Everything an object holds, walked attribute by attribute — not through its own `state()`.

    A restored engine compared this way shows a field that `state()` leaves out.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): engine_facts(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [engine_facts(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if attrs.has(type(value)):
        return {f.name: engine_facts(getattr(value, f.name)) for f in attrs.fields(type(value))}
    names: set[str] = set(getattr(value, "__dict__", {}))
    for klass in type(value).__mro__:
        slots = getattr(klass, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    held = {n: engine_facts(getattr(value, n)) for n in sorted(names - _SCRATCH) if hasattr(value, n)}
    return {"type": type(value).__name__, **held}
