"""Ping loss at 5/s with the default policy, outside pytest: the relayed run and the blocked direct path.

    python tests/e2e/bench_pingloss.py relayed [SECONDS] [proxy|endpoint]
    python tests/e2e/bench_pingloss.py block [proxy|endpoint]

`endpoint` is the data plane before issue 12 (WireGuard owns the public port, a probe points
WireGuard at the candidate); `proxy` the current one. The "before" column of BENCHMARKS.md
was measured with this script against a copy of commit 71f40e4. A benchmark, not a test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mesh import Mesh
from pingloss import PingRecorder

from natrelay.tools.topology import NatKind, Topology


def build(nat_a: NatKind, nat_b: NatKind, data_plane: str) -> tuple[Topology, Mesh]:
    topo = Topology()
    topo.start()
    for relay in ("r1", "r2"):
        topo.add_relay(relay)
    topo.add_peer("a", nat_a)
    topo.add_peer("b", nat_b)
    mesh = Mesh(topo)
    mesh.policy = {}
    mesh.settings["data_plane"] = data_plane
    return topo, mesh


def relayed(seconds: float, data_plane: str) -> None:
    topo, mesh = build("symmetric", "symmetric", data_plane)
    try:
        mesh.start_agent("a")
        mesh.start_agent("b")
        mesh.wait_path("relay", 40)
        ping = PingRecorder(topo.peers["a"].ns, topo.peers["b"].tunnel_ip).start()
        time.sleep(seconds)
        print(f"relayed symmetric/symmetric ({data_plane}): {ping.stop().summary()}")
        print("direct attempts a, b:", [mesh.decisions(n).count("direct_attempt_started") for n in "ab"])
    finally:
        topo.teardown()


def block(data_plane: str) -> None:
    topo, mesh = build("preserving", "preserving", data_plane)
    try:
        mesh.start_agent("a")
        mesh.start_agent("b")
        mesh.wait_path("direct", 60)
        ping = PingRecorder(topo.peers["a"].ns, topo.peers["b"].tunnel_ip).start()
        time.sleep(5)
        topo.block_direct("a", "b")
        time.sleep(25)
        print(
            f"blocked ({data_plane}): paths {mesh.path_kind('a', 'b')}/{mesh.path_kind('b', 'a')}; ", end=""
        )
        print(ping.stop().summary())
        ping = PingRecorder(topo.peers["a"].ns, topo.peers["b"].tunnel_ip).start()
        topo.block_direct("a", "b", blocked=False)
        time.sleep(40)
        print(
            f"unblocked ({data_plane}): paths {mesh.path_kind('a', 'b')}/{mesh.path_kind('b', 'a')}; ", end=""
        )
        print(ping.stop().summary())
    finally:
        topo.teardown()


if __name__ == "__main__":
    args = sys.argv[1:] or ["relayed"]
    if args[0] == "relayed":
        relayed(float(args[1]) if len(args) > 1 else 180.0, args[2] if len(args) > 2 else "proxy")
    else:
        block(args[1] if len(args) > 1 else "proxy")
