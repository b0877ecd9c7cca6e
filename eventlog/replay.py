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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import orjson

from natrelay.core.codec import Untrusted, to_payload
from natrelay.core.decide import decide
from natrelay.core.engine import Engine
from natrelay.core.events import EVENT_TYPES, Event, PolicySet
from natrelay.core.evolve import plan
from natrelay.core.payload_fold import payload_folds
from natrelay.core.policy import Policy

from .log import EventLog
from .records import FOLD_BUILDERS, decode_trusted

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
        last = _fold_all(log, node, engine, start, until_seq, last)
        engine.reschedule_all()
    return engine, last


def _fold_all(log: EventLog, node: str, engine: Engine, start: int, until_seq: int | None, last: int) -> int:
    """Fold every event of the node's view from `start`: `evolve` (never deciding), inlined.

    The hot loop of replay: narrow pages of (seq, type, schema_version, payload). The
    frequent types fold straight from the payload dict (`core.payload_fold`; a payload of
    another shape raises `Untrusted` before changing anything and takes the path below).
    The others are built by trusted builders leaving out what no fold reads
    (`records.FOLD_BUILDERS`; anything unusual takes `decode_trusted`, whose errors name
    the seq) and folded by their type's fold from `evolve.plan`, looked up once per type.
    Does exactly what `evolve(engine, event)` for each event does.
    """
    loads = orjson.loads
    plans = engine._plans
    #: type -> (schema version, fold builder, the type's fold on this engine), or None
    table = {type_name: _entry(engine, type_name) for type_name in FOLD_BUILDERS}
    #: the hot types: type -> (schema version, its fold straight from the payload dict)
    hot = payload_folds(engine)
    for page in log.fold_pages(start, until_seq, **node_view(node)):
        for seq, type_name, schema_version, payload in page:
            fast = hot.get(type_name)
            if fast is not None and fast[0] == schema_version:
                try:
                    fast[1](loads(payload))
                except (Untrusted, orjson.JSONDecodeError):
                    pass  # folded from its event below, whose decoding names the seq
                else:
                    last = seq
                    continue
            entry = table.get(type_name)  # None: not a type this code knows
            event = None
            if entry is not None and entry[0] == schema_version:
                try:
                    event = entry[1](loads(payload))
                except Exception:
                    event = None  # the validating path below says precisely what is wrong
            if event is None:
                event = decode_trusted(type_name, schema_version, payload, seq)
                kind = type(event)
                fold = plans.get(kind) or plan(engine, kind)
            else:
                assert entry is not None  # a trusted build happened only with an entry
                fold = entry[2]
            if event.at > engine.now:
                engine.now = event.at
            fold(event)
            last = seq
    return last


def _entry(
    engine: Engine, type_name: str
) -> tuple[int, Callable[[dict[str, Any]], Event], Callable[[Event], None]]:
    """(schema version, fold builder, fold) of one type on this engine."""
    version, build = FOLD_BUILDERS[type_name]
    kind = EVENT_TYPES[type_name]
    return version, build, engine._plans.get(kind) or plan(engine, kind)


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


def _mismatch(seq: int, recorded: Event, got: Event | None) -> str:
    """What differs between a recorded decision and the re-decided one, naming the fields."""
    if got is None or got.TYPE != recorded.TYPE:
        return (
            f"seq {seq}: the log records {recorded.TYPE} but re-deciding gives "
            f"{got.TYPE if got is not None else 'nothing'}"
        )
    left, right = to_payload(recorded), to_payload(got)
    fields = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    shown = ", ".join(f"{k}: recorded {left.get(k)!r}, re-decided {right.get(k)!r}" for k in fields)
    return f"seq {seq}: the log records {recorded.TYPE} with {shown}"


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
                        _mismatch(seq, event, got),
                    ),
                )
            position += 1
    # The tail: the last observation's decisions must all be there too (a batch that lost
    # its last decision is a divergence, not a short log). With `until_seq` the cut may
    # fall inside a batch, so only a cut at the log's own end is checked.
    if position < len(produced) and (until_seq is None or until_seq >= log.last_seq()):
        missing = produced[position]
        return VerifyResult(
            observations,
            decisions,
            Divergence(
                last_observation_seq,
                None,
                _describe(missing),
                f"seq {last_observation_seq}: after this observation the engine decides {missing.TYPE}, "
                f"which the log does not record (the log ends)",
            ),
        )
    return VerifyResult(observations, decisions, None)
