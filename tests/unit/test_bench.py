"""`natrelay bench` runs end to end on tiny sizes and reports every key BENCHMARKS.md uses.

No speed is asserted (that is what BENCHMARKS.md records); only that each measure
ran and produced a positive number.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_reports_every_measure_on_sqlite_and_postgresql() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "natrelay.tools.cli",
            "bench",
            "--json",
            "--events",
            "600",
            "--peers",
            "300",
            "--rebuild-events",
            "3000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    keys = {
        "append_sqlite_eps",
        "replay_sqlite_eps",
        "floor_append_sqlite_eps",
        "floor_read_sqlite_eps",
        "lifecycle_bytes_per_peer",
        "rss_mb_100k_peers",
        "append_pg_eps",
        "floor_append_pg_eps",
        "replay_pg_eps",
        "eventsourcing_append_sqlite_eps",
        "eventsourcing_append_pg_eps",
        "rebuild_zero_s",
        "rebuild_snapshot_s",
        "engine_eps_30_peers",
        "engine_eps_300_peers",
        "serve_decisions_per_s_sqlite",
        "serve_rtt_p50_ms_sqlite",
        "serve_rtt_p99_ms_sqlite",
        "serve_4_agents_decisions_per_s_sqlite",
        "serve_in_process_decisions_per_s_sqlite",
        "serve_decisions_per_s_pg",
        "serve_rtt_p99_ms_pg",
    }
    assert keys <= set(data), sorted(keys - set(data))
    assert all(data[key] > 0 for key in keys), {key: data[key] for key in keys}
    assert data["rebuild_snapshot_events_folded"] < data["rebuild_zero_events_folded"]
