"""`natrelay bench`: natrelay measured beside its floors, in one run, on this machine.

Owns the engine-side benchmarks (full replay throughput, in-memory decision
throughput, memory per peer at scale) and gathers the log-side ones from
tools/bench_log.py. Results are plain numbers for BENCHMARKS.md; nothing here
asserts a limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from natrelay.adapters.node import DEFAULT_SNAPSHOT_EVERY, Node
from natrelay.core.engine import Engine
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild

from .bench_mesh import drive, mesh_inputs

#: The old private name, kept for scripts written against it.
_mesh_inputs = mesh_inputs


def generate_log(path: str, peers: int, duration_ms: int, *, snapshots: bool = False) -> int:
    """Write a realistic log (the in-memory mesh run for `duration_ms`); return its event count.

    `snapshots`: the node's automatic snapshots (off: the rebuild benchmark places its own)."""
    network, setup = mesh_inputs(peers)
    with EventLog.open(path) as log:
        every = DEFAULT_SNAPSHOT_EVERY if snapshots else None
        node = Node(log, network, node="bench", flush_every=2000, snapshot_every=every)
        for event in setup:
            node.observe(event)
        node.run_until(duration_ms)
        return node.appended


def measure_replay(path: str) -> dict[str, float]:
    """Full replay: read, decode, fold into every projection and the lifecycle."""
    with EventLog.open(path, create=False) as log:
        events = log.last_seq()
        started = time.perf_counter()
        rebuild(log, "bench", use_snapshot=False)
        elapsed = time.perf_counter() - started
    return {"replay_sqlite_eps": events / elapsed, "replay_events": float(events)}


def measure_engine(peers: int, duration_ms: int) -> dict[str, float]:
    """Decisions per second in memory: the engine and the scripted network, no log."""
    network, setup = mesh_inputs(peers)
    started = time.perf_counter()
    handled = drive(Engine(), network, setup, duration_ms)
    elapsed = time.perf_counter() - started
    return {"engine_events_per_s_in_memory": handled / elapsed, "engine_events": float(handled)}


def measure_memory(peers: int) -> dict[str, float]:
    """Memory per peer, in a fresh interpreter so nothing else is counted."""
    completed = subprocess.run(
        [sys.executable, "-m", "natrelay.tools.bench_memory", str(peers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout)


def measure_rebuild(path: str, mode: str) -> dict[str, float]:
    """Rebuild the log's engine in a fresh interpreter; wall time and peak RSS."""
    completed = subprocess.run(
        [sys.executable, "-m", "natrelay.tools.bench_rebuild", path, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout)


def run_benchmarks(
    *,
    events: int = 200_000,
    peers: int = 100_000,
    rebuild_events: int = 1_000_000,
    postgres: str | None = None,
    with_postgres: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Every benchmark, side by side; keys are stable (BENCHMARKS.md and --json use them)."""
    from . import bench_log, bench_views

    results: dict[str, Any] = {}

    def say(text: str) -> None:
        if progress:
            print(f"… {text}", file=sys.stderr, flush=True)

    say("log append/read beside the raw floors and the eventsourcing library")
    results.update(bench_log.run(events, pg_url=postgres, postgres=with_postgres, repeats=3))
    mesh_peers = max(100, events // 47)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "replay.sqlite")
        say(f"a {mesh_peers}-peer mesh log for the replay benchmark")
        generate_log(path, mesh_peers, 600_000)
        say("full replay from SQLite")
        results.update(measure_replay(path))
        say("full replay beside the raw read floor, same file")
        results.update(bench_views.measure_replay_floor(path, "bench"))
        if rebuild_events:
            big = str(Path(tmp) / "big.sqlite")
            say(f"a log of about {rebuild_events:,} events for the rebuild benchmark")
            results["rebuild_log_events"] = float(generate_log(big, max(100, rebuild_events // 30), 600_000))
            say("rebuild from zero, then from a snapshot at 90 % of the log")
            measure_rebuild(big, "make-snapshot")
            for mode in ("zero", "snapshot"):
                for key, value in measure_rebuild(big, mode).items():
                    results[f"rebuild_{mode}_{key}"] = value
            viewed = str(Path(tmp) / "views.sqlite")
            say(f"a log of about {rebuild_events:,} events with the node's own snapshots, for the views")
            generate_log(viewed, max(100, rebuild_events // 30), 600_000, snapshots=True)
            say("status, timeline, explain against one snapshot and its tail")
            results.update(bench_views.measure_views(viewed, "bench"))
    for count, duration in ((max(10, peers // 10), 600_000), (peers, 60_000)):
        say(f"engine decisions in memory, {count:,} peers")
        measured = measure_engine(count, duration)
        label = f"{count // 1000}k" if count % 1000 == 0 else str(count)
        results[f"engine_eps_{label}_peers"] = measured["engine_events_per_s_in_memory"]
    from . import bench_serve

    serve_peers = max(10, events // 400)
    say(f"natrelay serve over its socket: 1 and 4 agents of {serve_peers} peers each, beside in-process")
    results.update(bench_serve.run(peers=serve_peers, pg_url=postgres, postgres=with_postgres))
    say(f"memory at {peers:,} peers")
    results.update(measure_memory(peers))
    return results
