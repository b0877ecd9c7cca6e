"""Rebuild a log's engine in a fresh interpreter: `python -m ...bench_rebuild LOG MODE`.

MODE `make-snapshot` stores a snapshot at 90 % of the log (run it first, not
timed); `zero` folds every event; `snapshot` loads that snapshot and folds the
tail. Each timed mode runs in its own interpreter, so the peak RSS it prints is
its own. Prints wall seconds, events folded and peak RSS, as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild, save_snapshot

NODE = "bench"


def _peak_rss_mb() -> float:
    """VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork+exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(path: str, mode: str) -> dict[str, float]:
    with EventLog.open(path, create=False) as log:
        last = log.last_seq()
        if mode == "make-snapshot":
            engine, seq = rebuild(log, NODE, until_seq=int(last * 0.9), use_snapshot=False)
            save_snapshot(log, NODE, engine, seq)
            return {"snapshot_seq": float(seq)}
        if mode not in ("zero", "snapshot"):
            raise SystemExit(f"mode must be make-snapshot, zero or snapshot, not {mode!r}")
        snapshot = log.load_snapshot(f"engine:{NODE}") if mode == "snapshot" else None
        if mode == "snapshot" and snapshot is None:
            raise SystemExit("no snapshot: run make-snapshot first")
        baseline = _peak_rss_mb()
        started = time.perf_counter()
        rebuild(log, NODE, use_snapshot=mode == "snapshot")
        elapsed = time.perf_counter() - started
        folded = last - (snapshot.seq if snapshot is not None else 0)
    return {
        "s": round(elapsed, 3),
        "events_folded": float(folded),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_mb_before": round(baseline, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
