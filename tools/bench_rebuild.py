"""Rebuild a log's engine in a fresh interpreter: `python -m ...bench_rebuild LOG zero|snapshot`.

`zero` folds every event; `snapshot` first stores a snapshot at 90 % of the log
(not timed), then times loading it and folding the tail. Prints wall seconds,
events folded per second and the process's peak RSS, as JSON.
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
        if mode == "snapshot":
            at = int(last * 0.9)
            engine, seq = rebuild(log, NODE, until_seq=at, use_snapshot=False)
            save_snapshot(log, NODE, engine, seq)
            del engine
            baseline = _peak_rss_mb()
            folded = last - seq
        elif mode == "zero":
            baseline = _peak_rss_mb()
            folded = last
        else:
            raise SystemExit(f"mode must be zero or snapshot, not {mode!r}")
        started = time.perf_counter()
        rebuild(log, NODE, use_snapshot=mode == "snapshot")
        elapsed = time.perf_counter() - started
    return {
        "s": round(elapsed, 3),
        "events_folded": float(folded),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_mb_before": round(baseline, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
