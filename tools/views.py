"""Fast views of big logs: the engine from the newest snapshot plus the tail, peers found by index.

Owns how `status`, `explain` and `timeline` get at a log without reading it
through: the node list by a skip scan of the stream index (`nodes_in`), a peer
by its stream (a key or a unique prefix: index seeks) or by name (the
`peer_added` events, by the type index), its events by the stream index, and
the engine from the newest snapshot plus the events after it. A view that had
to fold a long tail (a log written without snapshots, or before they were
automatic) saves a snapshot where it stopped, so the next view starts there;
a log it may not write to is left as it was.
"""

from __future__ import annotations

import contextlib

import orjson

from natrelay.core.engine import Engine
from natrelay.eventlog import EventLog, EventLogError, SnapshotError
from natrelay.eventlog.records import decode_trusted
from natrelay.eventlog.replay import rebuild, save_snapshot, snapshot_name

from .inspect_log import LookupError_

#: A view that folded more events than this past the newest snapshot saves one.
SNAPSHOT_AFTER_TAIL = 50_000


def view_engine(log: EventLog, node: str) -> tuple[Engine, int]:
    """The node's engine at the end of the log: newest snapshot plus tail (saving one if long)."""
    snapshot = log.load_snapshot(snapshot_name(node))
    start = 0 if snapshot is None else snapshot.seq
    engine, last = rebuild(log, node)
    if last - start > SNAPSHOT_AFTER_TAIL:
        # a read-only log, or a writer's snapshot got there first: nothing lost
        with contextlib.suppress(EventLogError, SnapshotError, OSError):
            save_snapshot(log, node, engine, last)
    return engine, last


def find_peer(log: EventLog, node: str, text: str) -> str:
    """A peer of `node` by full key, unique key prefix, or name, without reading the log through."""
    prefix = f"node/{node}/peer/"
    first = log.next_stream(prefix + text, inclusive=True)
    if first is not None and first == prefix + text:
        return text
    if text and first is not None and first.startswith(prefix + text):
        second = log.next_stream(first)
        if second is None or not second.startswith(prefix + text):
            return first[len(prefix) :]
        by_name = _by_name(log, node, text)
        if len(by_name) == 1:
            return by_name[0]
        raise LookupError_(f"{text!r} matches several peers; give more of the key")
    by_name = _by_name(log, node, text)
    if len(by_name) == 1:
        return by_name[0]
    if not by_name:
        raise LookupError_(f"no peer {text!r} in this log")
    raise LookupError_(f"{text!r} names {len(by_name)} peers; give the key")


def _by_name(log: EventLog, node: str, name: str) -> list[str]:
    """Peers whose latest `peer_added` carries `name` (the type index: no scan of other events)."""
    names: dict[str, str] = {}
    prefix = f"node/{node}/peer/"
    needle = orjson.dumps(name)[1:-1]  # the name as the payload spells it
    for seq, _stream, _v, type_name, version, _at, _rec, payload in log.rows(
        stream_prefixes=[prefix], types=["peer_added"]
    ):
        if needle not in payload:
            continue
        event = decode_trusted(type_name, version, payload, seq)
        names[event.peer] = event.name  # type: ignore[attr-defined]
    return sorted(key for key, value in names.items() if value == name)
