"""Memory of the engine at scale, measured in a fresh interpreter (`python -m ...bench_memory N`).

Prints one JSON object:
- lifecycle_bytes_per_peer: bytes traced while N peers join (their lifecycle
  records and the index holding them), divided by N;
- process_bytes_per_peer: resident memory grown from start-up to after the mesh
  ran a minute (engine, projections, timers, and the scripted network), over N;
- rss_mb_100k_peers (named for the default N): the process's resident memory
  after that minute, interpreter included.
"""

from __future__ import annotations

import json
import resource
import sys
import tracemalloc

from natrelay.core.engine import Engine
from natrelay.tools.bench_mesh import drive, mesh_inputs


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def main(peers: int) -> dict[str, float]:
    baseline = _rss_mb()
    network, setup = mesh_inputs(peers)
    engine = Engine()
    relays, joins = setup[:2], setup[2:]
    for event in relays:
        engine.apply(event)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for event in joins:
        engine.apply(event)
    lifecycle = (tracemalloc.get_traced_memory()[0] - before) / peers
    tracemalloc.stop()
    engine.reschedule_all()
    drive(engine, network, [], 60_000)
    rss = _rss_mb()
    return {
        "lifecycle_bytes_per_peer": round(lifecycle, 1),
        "process_bytes_per_peer": round((rss - baseline) * 1024 * 1024 / peers, 1),
        "rss_mb_100k_peers": round(rss, 1),
        "memory_peers": float(peers),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)))
