"""Replay: rebuild an engine from the log, verify recorded decisions, travel in time.

Owns reading one node's view of a log back into an `Engine`:
- `node_view(node)`: the streams a node's engine reads (its own, and the
  fleet-wide relay streams);
- `rebuild`: fold every event with `evolve` (never deciding) from seq 0, or
  from the newest snapshot at or before the target seq plus the tail; both
  give equal state;
- `verify`: feed only the recorded observations to `decide` on a fresh engine
  and compare every decision it takes with the recorded one, reporting the
  first divergence by seq.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import orjson

from natrelay.core.codec import to_payload
from natrelay.core.decide import decide
from natrelay.core.engine import Engine
from natrelay.core.events import Event, PolicySet
from natrelay.core.evolve import evolve
from natrelay.core.policy import Policy

from .log import EventLog

SNAPSHOT_PREFIX = "engine:"


def node_view(node: str) -> dict[str, list[str]]:
    """read() filters selecting what node `node`'s engine reads."""
    return {"streams": [f"node/{node}"], "stream_prefixes": [f"node/{node}/", "relay/"]}


def snapshot_name(node: str) -> str:
    return SNAPSHOT_PREFIX + node


def node_events(
    log: EventLog, node: str, from_seq: int = 1, to_seq: int | None = None
) -> Iterator[tuple[int, str, Event]]:
    return log.read_events(from_seq, to_seq, **node_view(node))


#: Above every code point: `prefix + _TOP` sorts after every stream starting with `prefix`.
_TOP = "\U0010ffff"


def nodes_in(log: EventLog) -> list[str]:
    """The nodes that have written to the log (streams `node/<node>` and `node/<node>/...`).

    A skip scan on the stream index, a few seeks per node: after a node's own streams,
    jump past `node/<node>/` and everything under it, never reading the log through.
    """
    nodes: set[str] = set()
    current = log.next_stream("node/", inclusive=True)
    while current is not None and current.startswith("node/"):
        name, _, rest = current[5:].partition("/")
        if name:
            nodes.add(name)
        after = f"node/{name}/{_TOP}" if rest or current.endswith("/") else current
        current = log.next_stream(after)
    return sorted(nodes)


def save_snapshot(log: EventLog, node: str, engine: Engine, seq: int) -> None:
    """Store the engine's state as of `seq` (the caller guarantees it is that state)."""
    log.save_snapshot(snapshot_name(node), seq, orjson.dumps(engine.state()))


def rebuild(
    log: EventLog,
    node: str,
    *,
    until_seq: int | None = None,
    use_snapshot: bool = True,
    policy: Policy | None = None,
) -> tuple[Engine, int]:
    """The engine as of `until_seq` (default: the end), and the last seq folded."""
    engine: Engine | None = None
    start = 1
    last = 0
    if use_snapshot:
        snapshot = log.load_snapshot(snapshot_name(node), until_seq)
        if snapshot is not None:
            engine = Engine.from_state(orjson.loads(snapshot.state))
            start = snapshot.seq + 1
            last = snapshot.seq
    if engine is None:
        engine = Engine(policy)
    with _collector_paused():
        for seq, _stream, event in node_events(log, node, start, until_seq):
            evolve(engine, event)  # the fold only: a rebuild never decides
            last = seq
    engine.reschedule_all()
    return engine, last


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while folding: replay builds millions of small,
    acyclic objects, and generation scans over them cost a quarter of the replay time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@attrs.frozen
class Divergence:
    """Where a re-decided log first disagrees with the recorded one."""

    seq: int | None
    expected: dict[str, Any] | None
    got: dict[str, Any] | None
    message: str


@attrs.frozen
class VerifyResult:
    observations: int
    decisions: int
    divergence: Divergence | None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def _describe(event: Event | None) -> dict[str, Any] | None:
    return None if event is None else {"type": event.TYPE, **to_payload(event)}


def verify(log: EventLog, node: str, *, until_seq: int | None = None) -> VerifyResult:
    """Re-decide from the recorded observations; compare with the recorded decisions."""
    engine = Engine()
    produced: list[Event] = []
    position = 0
    observations = decisions = 0
    last_observation_seq: int | None = None
    for seq, _stream, event in node_events(log, node, 1, until_seq):
        if event.KIND == "observation":
            if position < len(produced):
                missing = produced[position]
                return VerifyResult(
                    observations,
                    decisions,
                    Divergence(
                        seq,
                        None,
                        _describe(missing),
                        f"after the observation at seq {last_observation_seq} the engine decides "
                        f"{missing.TYPE}, which the log does not record (next recorded: seq {seq})",
                    ),
                )
            observations += 1
            last_observation_seq = seq
            if type(event) is PolicySet and observations == 1:
                engine = Engine(event.policy)
            produced = list(decide(engine, event).decisions)  # re-decide; compare below
            position = 0
        else:
            decisions += 1
            got = produced[position] if position < len(produced) else None
            if got != event:
                return VerifyResult(
                    observations,
                    decisions,
                    Divergence(
                        seq,
                        _describe(event),
                        _describe(got),
                        f"seq {seq}: the log records {event.TYPE} but re-deciding gives "
                        f"{got.TYPE if got is not None else 'nothing'}",
                    ),
                )
            position += 1
    if position < len(produced) and until_seq is None:
        missing = produced[position]
        return VerifyResult(
            observations,
            decisions,
            Divergence(None, None, _describe(missing), f"the log ends before the decision {missing.TYPE}"),
        )
    return VerifyResult(observations, decisions, None)
