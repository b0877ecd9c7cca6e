"""iperf3 through the tunnel: the agent's data plane against plain wireguard-go, same namespaces, same run.

    python tests/e2e/bench_iperf.py direct [proxy|shared] [rounds]   # agent on a direct path, then plain
    python tests/e2e/bench_iperf.py relay [proxy|shared]             # through coturn (symmetric NATs)
    python tests/e2e/bench_iperf.py hardnat shared                   # a punched path, then the relay

Hard NAT: a behind --random-fully, b behind a port-preserving NAT; the agents punch (issue 16)
and the tunnel runs over the punched socket (a's WireGuard through the agent's loopback port);
then the same agents without hard-NAT attempts relay, and iperf3 runs again: both numbers of
the run share the machine's load.

Direct: each round starts the agents, waits for the direct path, runs iperf3 through it,
stops the agents, points WireGuard at the same endpoints by hand and runs iperf3 again
(plain wireguard-go), so both numbers of a round share the machine's load of the moment.

A benchmark, not a test (throughput is never asserted): numbers go to BENCHMARKS.md.
Root and the e2e prerequisites (plus iperf3) are needed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mesh import Mesh

from natrelay.tools.topology import Topology, run


def cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    f = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def iperf(t: Topology, secs: int = 5) -> float:
    """Mbit/s received by b from a through the tunnel."""
    out = run(
        ["iperf3", "-c", t.peers["b"].tunnel_ip, "-t", str(secs), "-J"], ns=t.peers["a"].ns, timeout=secs + 20
    ).stdout
    end = json.loads(out)["end"]
    print(f"  (retransmits: {end['sum_sent'].get('retransmits')})", flush=True)
    return end["sum_received"]["bits_per_second"] / 1e6


def plain_endpoints(t: Topology) -> None:
    for x, y in (("a", "b"), ("b", "a")):
        run(
            [
                "wg",
                "set",
                t.peers[x].wg_if,
                "peer",
                t.peers[y].public_key,
                "endpoint",
                f"{t.peers[y].wan_ip}:51820",
            ],
            ns=t.peers[x].ns,
        )


kind = sys.argv[1] if len(sys.argv) > 1 else "direct"
plane = sys.argv[2] if len(sys.argv) > 2 else "proxy"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
t = Topology()
t.start()
t.add_relay("r1")
t.add_relay("r2")
nat = "symmetric" if kind == "relay" else "preserving"
t.add_peer("a", "symmetric" if kind == "hardnat" else nat)
t.add_peer("b", nat)
m = Mesh(t)
# the agent's default (hard-NAT attempts on with the shared plane), but a relayed pair of two
# symmetric NATs measures the relay, not a birthday punch that sprays beside it
m.policy = {"hard_nat_enabled": False} if kind == "relay" else {}
m.settings["data_plane"] = plane
ratios: list[float] = []
try:
    t.spawn("iperf-s", ["iperf3", "-s"], ns=t.peers["b"].ns)
    for _ in range(rounds if kind == "direct" else 1):
        m.start_agent("a")
        m.start_agent("b")
        m.wait_path("direct" if kind == "hardnat" else kind, 60)
        time.sleep(1)
        print(
            f"WireGuard endpoints: a->b {m.peer_endpoint('a', 'b')}, b->a {m.peer_endpoint('b', 'a')}",
            flush=True,
        )
        pa, pb = t._processes["agent-a"].pid, t._processes["agent-b"].pid
        c0, t0 = cpu(pa) + cpu(pb), time.time()
        r1 = iperf(t)
        c1, t1 = cpu(pa) + cpu(pb), time.time()
        print(
            f"{kind} through the agent ({plane}): {r1:.0f} Mbit/s; "
            f"agents' CPU {100 * (c1 - c0) / (t1 - t0):.0f} % of one core (both)",
            flush=True,
        )
        m.stop_agent("a")
        m.stop_agent("b")
        if kind == "hardnat":
            m.policy = {"hard_nat_enabled": False}  # attempts are on by default: keep the relay
            m.start_agent("a")
            m.start_agent("b")
            m.wait_path("relay", 60)
            time.sleep(1)
            r2 = iperf(t)
            print(f"the same pair relayed: {r2:.0f} Mbit/s; punched / relayed {r1 / r2:.2f}", flush=True)
            m.stop_agent("a")
            m.stop_agent("b")
        if kind != "direct":
            break
        plain_endpoints(t)
        time.sleep(3)
        print("plain ping", m.ping("a", "b"))
        r2 = iperf(t)
        ratios.append(r1 / r2)
        print(f"plain wireguard-go: {r2:.0f} Mbit/s; ratio {r1 / r2:.2f}", flush=True)
    if ratios:
        median = sorted(ratios)[len(ratios) // 2]
        print(f"{plane}: ratios {', '.join(f'{r:.2f}' for r in ratios)}; median {median:.2f}")
finally:
    t.teardown()
