"""Full replay beside the raw read floor, commit against commit, in one run (BENCHMARKS.md).

    python tools/replay_ab.py LOG main=f23d61f branch=HEAD [--rounds 3] [--repeats 5]

Each NAME=COMMIT is unpacked (`git archive`) into a temporary tree importable as
`natrelay`; the rounds alternate the commits, each in a fresh interpreter measuring the
raw floor (`bench_views.measure_replay_floor`'s: sqlite3 keyset pages + `orjson.loads`)
and `rebuild(use_snapshot=False)` interleaved, best of `--repeats`, in CPU time and wall
clock, and the rebuilt state's hash (equal across commits when replay is unchanged).
A missing LOG is written first: `natrelay bench`'s replay log (129,988 events).
Nothing here asserts a time: the machine is shared, only ratios of one run compare.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("core", "eventlog", "adapters", "tools")


def measure(path: str, repeats: int) -> dict[str, float | str]:
    """Floor and replay of `path`, interleaved; best CPU and wall seconds of each."""
    import orjson

    from natrelay.eventlog import EventLog
    from natrelay.eventlog.replay import rebuild

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

    def replay() -> None:
        with EventLog.open(path, create=False) as log:
            rebuild(log, "bench", use_snapshot=False)

    best: dict[str, float | str] = {}
    works: dict[str, Callable[[], None]] = {"floor": floor, "replay": replay}
    for _ in range(repeats):
        for name, work in works.items():
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            work()
            for kind, spent in (("cpu", time.process_time() - cpu), ("wall", time.perf_counter() - wall)):
                key = f"{name}_{kind}"
                best[key] = min(float(best.get(key, float("inf"))), spent)
    with EventLog.open(path, create=False) as log:
        engine, _ = rebuild(log, "bench", use_snapshot=False)
    state = orjson.dumps(
        [engine.state(), engine.next_deadline(), engine._timers], option=orjson.OPT_SORT_KEYS
    )
    best["state"] = hashlib.sha256(state).hexdigest()[:16]
    return best


def unpack(commit: str, into: Path) -> Path:
    """`commit`'s tree under `into`, and beside it a directory importing it as `natrelay`."""
    source, tree = into / "src", into / "tree" / "natrelay"
    source.mkdir(parents=True)
    tree.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    for package in PACKAGES:
        (tree / package).symlink_to(source / package)
    return tree.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log")
    parser.add_argument("commits", nargs="*", metavar="NAME=COMMIT")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure here
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.log, args.repeats)))
        return 0
    if not Path(args.log).exists():
        from natrelay.tools.bench import generate_log

        print(f"{generate_log(args.log, 4255, 600_000)} events written to {args.log}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for item in args.commits:
            name, _, commit = item.partition("=")
            trees[name] = unpack(commit, Path(scratch) / name)
        for number in range(1, args.rounds + 1):
            for name, tree in trees.items():
                child = [sys.executable, __file__, args.log, "--one", "--repeats", str(args.repeats)]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                got = json.loads(
                    subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
                )
                cpu, wall = got["floor_cpu"] / got["replay_cpu"], got["floor_wall"] / got["replay_wall"]
                print(
                    f"round {number} {name}: floor {got['floor_cpu']:.3f} s CPU,"
                    f" replay {got['replay_cpu']:.3f} s CPU ({got['replay_wall']:.3f} s wall):"
                    f" x{cpu:.2f} of the floor CPU, x{wall:.2f} wall; state {got['state']}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
