"""The replay shadow: the replay invariants kept step by step instead of from seq 0.

Owns `ReplayShadow`, two engines beside the live one fed each new row of the
node's view: one folds every event (a rebuild), one re-decides every
observation and must take exactly the recorded decisions (a verify).
"""

from __future__ import annotations

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
