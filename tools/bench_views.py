"""Benchmarks of the views on a big log, and of full replay beside the raw read floor, in one run.

Owns two measurements for `natrelay bench` (nothing here asserts a time):

- views: `status` (the node, the engine from the newest snapshot plus the tail,
  a row per peer, JSON), `timeline` and `explain` of one peer, in process,
  against the time to read that snapshot and fold its tail alone — the goal is
  status within 3x of it;
- replay at the floor: the raw floor (sqlite3 keyset pages + `orjson.loads`),
  natrelay's rows, its decoded events, and a full replay (read, decode, fold)
  of the same file, interleaved best of three — the goal is a full replay at
  0.67x of the floor or better.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import time
from collections.abc import Callable

import orjson

from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view, rebuild
from natrelay.tools.inspect_log import choose_node, explain_lines, status_rows, timeline_rows
from natrelay.tools.views import find_peer, view_engine


def _seconds(work: Callable[[], object]) -> float:
    gc.collect()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _best(repeats: int, measures: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best of `repeats` timings of each, interleaved so they share the machine's load."""
    best = dict.fromkeys(measures, float("inf"))
    for _ in range(repeats):
        for key, work in measures.items():
            best[key] = min(best[key], _seconds(work))
    return best


def measure_views(path: str, node: str, *, repeats: int = 3) -> dict[str, float]:
    """status / timeline / explain against reading the newest snapshot and folding its tail."""
    with EventLog.open(path, create=False) as log:
        last = log.last_seq()
        snapshot = log.load_snapshot(f"engine:{node}")
        tail = last - (snapshot.seq if snapshot is not None else 0)
        engine, _ = rebuild(log, node)
        keys = sorted(engine.peers)
        peer = keys[len(keys) // 2]
        name = engine.peers[peer].name or peer

    def snapshot_and_tail() -> None:
        with EventLog.open(path, create=False) as log:
            rebuild(log, node)

    def status() -> None:
        with EventLog.open(path, create=False) as log:
            chosen = choose_node(log, None)
            found, seq = view_engine(log, chosen)
            rows = status_rows(found)
            json.dumps({"node": chosen, "seq": seq, "peers": [row.as_json() for row in rows]})

    def timeline() -> None:
        with EventLog.open(path, create=False) as log:
            chosen = choose_node(log, None)
            timeline_rows(log, chosen, find_peer(log, chosen, name))

    def explain() -> None:
        with EventLog.open(path, create=False) as log:
            chosen = choose_node(log, None)
            key = find_peer(log, chosen, name)
            found, _ = view_engine(log, chosen)
            explain_lines(log, chosen, key, found)

    times = _best(
        repeats,
        {"snapshot_tail": snapshot_and_tail, "status": status, "timeline": timeline, "explain": explain},
    )
    return {
        "views_log_events": float(last),
        "views_tail_events": float(tail),
        "view_snapshot_tail_s": times["snapshot_tail"],
        "view_status_s": times["status"],
        "view_status_over_snapshot_tail": times["status"] / times["snapshot_tail"],
        "view_timeline_s": times["timeline"],
        "view_explain_s": times["explain"],
    }


def measure_replay_floor(path: str, node: str, *, repeats: int = 3) -> dict[str, float]:
    """Events/s of the raw read floor, natrelay's rows, decoded events and full replay, same file."""
    with EventLog.open(path, create=False) as log:
        events = log.last_seq()

    def floor() -> None:
        conn = sqlite3.connect(path)
        try:
            loads, after = orjson.loads, 0
            query = (
                "SELECT seq, stream, stream_version, type, schema_version, event_time, recorded_time,"
                " payload FROM events WHERE seq > ? ORDER BY seq LIMIT 4096"
            )
            while page := conn.execute(query, (after,)).fetchall():
                for row in page:
                    loads(row[7])
                after = page[-1][0]
        finally:
            conn.close()

    def rows() -> None:
        with EventLog.open(path, create=False) as log:
            for _ in log.rows(**node_view(node)):
                pass

    def decoded() -> None:
        with EventLog.open(path, create=False) as log:
            for _ in log.read_events(**node_view(node)):
                pass

    def replay() -> None:
        with EventLog.open(path, create=False) as log:
            rebuild(log, node, use_snapshot=False)

    times = _best(repeats, {"floor": floor, "rows": rows, "decoded": decoded, "replay": replay})
    eps = {key: events / seconds for key, seconds in times.items()}
    return {
        "replay_floor_events": float(events),
        "replay_floor_read_eps": eps["floor"],
        "replay_floor_rows_eps": eps["rows"],
        "replay_floor_decoded_eps": eps["decoded"],
        "replay_floor_full_eps": eps["replay"],
        "replay_over_floor": eps["replay"] / eps["floor"],
        "decoded_over_floor": eps["decoded"] / eps["floor"],
    }
