"""What an idle agent costs: CPU, wake-ups, memory, forks and observation latency, measured for real.

This module owns the agent benchmark of issue 18. It builds a namespace topology
(``tools.topology``: two peers behind port-preserving NATs, real wireguard-go), runs the
real ``natrelay agent`` on both, and measures agent ``a`` from the outside through /proc:

- CPU share: utime+stime of the agent and of the children it waited for (``wg`` runs),
  over a window, as a fraction of one core;
- wake-ups per second: voluntary context switches of all its threads (each is a sleep
  that ended); involuntary ones (preemptions, which grow with the machine's load) apart;
- ``wg`` children: child processes named ``wg`` seen while sampling /proc every 50 ms
  (a lower bound of the forks: a short `wg` run can fall between two samples);
- RSS (VmRSS) at the end of the window;
- observation latency: from the first WireGuard handshake with ``b`` (read from
  wireguard-go's UAPI with nanoseconds) to the ``handshake_observed`` event in the log.

Agent ``a`` is configured with ``b`` (the real peer) plus ``peers - 1`` peers that exist only
in its configuration: random public keys, ``direct_only``, no endpoint, so that WireGuard
holds them and every reading of WireGuard carries them, while the engine waits for their
candidates. The churn phase publishes new (unreachable) candidates in the rendezvous for
10 % of those peers per minute, which makes the agent start and fail direct rounds.

Run as root: ``python -m natrelay.tools.bench_agent --peers 1,100,1000 --window 30``.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from natrelay.tools.topology import Topology, missing_prerequisites

#: Where unreachable candidates of churning peers point (the topology's internet, no host).
UNREACHABLE = "203.0.113.250"


@attrs.frozen
class ProcSample:
    at: float
    #: utime + stime + cutime + cstime, in clock ticks.
    cpu_ticks: int
    #: cutime + cstime: the share of the children it waited for (`wg` runs).
    child_ticks: int
    #: Voluntary context switches (the process went to sleep and was woken).
    switches: int
    #: Involuntary ones (preempted: grows with the machine's load, not with the agent's).
    preempted: int
    rss_kb: int


@attrs.frozen
class Measurement:
    peers: int
    phase: str
    data_plane: str
    window_s: float
    cpu_percent: float
    children_cpu_percent: float
    wakeups_per_s: float
    preempted_per_s: float
    wg_children: int
    rss_mb: float


def fake_key(rng: random.Random) -> str:
    """A WireGuard public key nobody holds (WireGuard accepts any 32 bytes)."""
    return base64.b64encode(rng.randbytes(32)).decode()


def sample(pid: int) -> ProcSample:
    """CPU ticks, context switches (all threads) and RSS of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    child = int(fields[13]) + int(fields[14])
    switches = preempted = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    preempted += int(line.split()[1])
        except FileNotFoundError:
            continue
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcSample(time.monotonic(), ticks, child, switches, preempted, rss)


def children_named(pid: int, name: str) -> set[int]:
    """Pids of live children of ``pid`` whose command is ``name``."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid and comm == name:
            found.add(int(entry.name))
    return found


def measure(
    pid: int, peers: int, phase: str, window: float, during: object = None, data_plane: str = "shared"
) -> Measurement:
    """Watch ``pid`` for ``window`` seconds; ``during(elapsed)`` is called every 50 ms."""
    hz = os.sysconf("SC_CLK_TCK")
    before = sample(pid)
    forked: set[int] = set()
    while time.monotonic() - before.at < window:
        forked |= children_named(pid, "wg")
        if callable(during):
            during(time.monotonic() - before.at)
        time.sleep(0.05)
    after = sample(pid)
    span = after.at - before.at
    return Measurement(
        peers=peers,
        phase=phase,
        data_plane=data_plane,
        window_s=round(span, 1),
        cpu_percent=100.0 * (after.cpu_ticks - before.cpu_ticks) / hz / span,
        children_cpu_percent=100.0 * (after.child_ticks - before.child_ticks) / hz / span,
        wakeups_per_s=(after.switches - before.switches) / span,
        preempted_per_s=(after.preempted - before.preempted) / span,
        wg_children=len(forked),
        rss_mb=after.rss_kb / 1024,
    )


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_config(
    path: Path, node: str, peers: Sequence[dict[str, object]], data_plane: str = "shared"
) -> Path:
    """The agent's config in ``data_plane`` (its probes need the mesh's shared secret)."""
    secret = path.parent / "probe.secret"
    if not secret.exists():
        secret.touch(mode=0o600)
        secret.write_text("bench-agent-probe-secret-" + path.parent.name + "\n")
    lines = [
        f"node = {_toml(node)}",
        "advertise_reflexive = false",
        f"data_plane = {_toml(data_plane)}",
        f"probe_secret_file = {_toml(str(secret))}",
        "",
    ]
    for peer in peers:
        lines.append("[[peers]]")
        lines += [f"{k} = {_toml(v)}" for k, v in peer.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def uapi_handshake_ms(interface: str, public_key: str) -> int | None:
    """The latest handshake of ``public_key`` on ``interface`` in unix ms (wireguard-go's UAPI)."""
    want = base64.b64decode(public_key).hex()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(f"/var/run/wireguard/{interface}.sock")
        sock.sendall(b"get=1\n\n")
        data = b""
        while b"errno=" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    current, sec, nsec, found = None, 0, 0, None
    for line in data.decode().splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            if current == want:
                found = (sec, nsec)
            current, sec, nsec = value, 0, 0
        elif key == "last_handshake_time_sec":
            sec = int(value)
        elif key == "last_handshake_time_nsec":
            nsec = int(value)
    if current == want:
        found = (sec, nsec)
    if found is None or found[0] == 0:
        return None
    return found[0] * 1000 + found[1] // 1_000_000


def _events(db: Path, node: str, kind: str) -> list[object]:
    from natrelay.eventlog import EventLog
    from natrelay.eventlog.errors import EventLogError
    from natrelay.eventlog.replay import node_events

    if not db.exists():
        return []
    try:
        with EventLog.open(str(db), create=False) as log:
            return [e for _s, _st, e in node_events(log, node) if kind == e.TYPE]
    except EventLogError:
        return []  # the agents are still creating the log


def wait_for(what: str, condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def run_one(
    peers: int, window: float, churn_window: float, settle: float, seed: int = 18, data_plane: str = "shared"
) -> tuple[list[Measurement], float | None]:
    """Measure one agent with ``peers`` peers; returns the measurements and the latency (ms)."""
    rng = random.Random(seed + peers)
    with Topology() as topo:
        topo.start()
        a, b = topo.add_peer("a"), topo.add_peer("b")
        db = topo.workdir / "mesh.db"
        fakes = [fake_key(rng) for _ in range(peers - 1)]
        a_peers: list[dict[str, object]] = [
            {
                "name": "b",
                "public_key": b.public_key,
                "allowed_ips": [f"{b.tunnel_ip}/32"],
                "endpoints": [b.public_endpoint],
            }
        ]
        for i, key in enumerate(fakes):
            a_peers.append(
                {
                    "name": f"f{i}",
                    "public_key": key,
                    "allowed_ips": [f"10.200.{i // 250}.{i % 250 + 1}/32"],
                    "access": "direct_only",
                }
            )
        b_peers: list[dict[str, object]] = [
            {
                "name": "a",
                "public_key": a.public_key,
                "allowed_ips": [f"{a.tunnel_ip}/32"],
                "endpoints": [a.public_endpoint],
            }
        ]
        procs = {}
        for peer, spec in ((b, b_peers), (a, a_peers)):
            config = write_config(topo.workdir / f"agent-{peer.name}.toml", peer.name, spec, data_plane)
            procs[peer.name] = topo.spawn(
                f"agent-{peer.name}",
                [
                    *(sys.executable, "-m", "natrelay.tools.cli.cmd_agent", "agent"),
                    *("--interface", peer.wg_if, "--log", str(db), "--config", str(config)),
                ],
                ns=peer.ns,
                log=topo.workdir / f"agent-{peer.name}.log",
            )
        pid = procs["a"].pid
        wait_for(
            "a direct path from a to b",
            lambda: any(e.peer == b.public_key for e in _events(db, "a", "direct_path_selected")),  # type: ignore[attr-defined]
            60 + peers / 20,
        )
        handshake = uapi_handshake_ms(a.wg_if, b.public_key)
        seen = [e for e in _events(db, "a", "handshake_observed") if e.peer == b.public_key]  # type: ignore[attr-defined]
        latency = None
        if handshake is not None and seen and seen[0].at >= handshake:  # type: ignore[attr-defined]
            latency = float(seen[0].at - handshake)  # type: ignore[attr-defined]
        time.sleep(settle)
        results = [measure(pid, peers, "idle", window, data_plane=data_plane)]
        if churn_window > 0 and peers >= 100:
            from natrelay.adapters.mesh.rendezvous import Rendezvous

            rendezvous = Rendezvous(str(db))
            per_s = 0.1 * len(fakes) / 60
            done = [0]

            def churn(elapsed: float) -> None:
                while done[0] < int(elapsed * per_s) + 1:
                    key = rng.choice(fakes)
                    port = rng.randrange(20000, 60000)
                    rendezvous.publish_candidates(
                        time.time_ns() // 1_000_000, key, (f"{UNREACHABLE}:{port}",)
                    )
                    done[0] += 1

            results.append(
                measure(pid, peers, "churn 10 %/min", churn_window, during=churn, data_plane=data_plane)
            )
            rendezvous.close()
        for name in ("a", "b"):
            procs[name].send_signal(2)
            procs[name].wait(20)
        keep = os.environ.get("NATRELAY_BENCH_KEEP_LOGS")
        if keep:  # the agents' own logs, for looking into a figure (the topology goes away)
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name in ("a", "b"):
                target = Path(keep) / f"agent-{name}-{data_plane}-{peers}.log"
                target.write_bytes((topo.workdir / f"agent-{name}.log").read_bytes())
        return results, latency


def render(results: Sequence[Measurement], latencies: dict[tuple[int, str], float | None]) -> str:
    head = (
        "| data plane | peers | phase | window | CPU % of a core | of which `wg` | wake-ups/s | preempted/s"
        " | `wg` children seen | RSS | first handshake → log |"
    )
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in results:
        latency = latencies.get((m.peers, m.data_plane))
        shown = "—" if latency is None or m.phase != "idle" else f"{latency:.0f} ms"
        lines.append(
            f"| {m.data_plane} | {m.peers:,} | {m.phase} | {m.window_s:.0f} s | {m.cpu_percent:.2f} "
            f"| {m.children_cpu_percent:.2f} | {m.wakeups_per_s:.1f} | {m.preempted_per_s:.1f} "
            f"| {m.wg_children} | {m.rss_mb:.0f} MB | {shown} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natrelay.tools.bench_agent", description=__doc__)
    parser.add_argument("--peers", default="1,100,1000", help="comma-separated peer counts")
    parser.add_argument("--window", type=float, default=30.0, help="idle measurement window, seconds")
    parser.add_argument("--churn-window", type=float, default=60.0, help="churn window, seconds (0: none)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after connecting before measuring")
    parser.add_argument(
        "--latency-trials",
        type=int,
        default=0,
        help="extra 1-peer runs measuring only first handshake → log (median and max)",
    )
    parser.add_argument(
        "--data-plane",
        default="shared",
        help="comma-separated data planes to measure side by side: shared (the default), endpoint, proxy",
    )
    args = parser.parse_args(argv)
    planes = [p.strip() for p in args.data_plane.split(",") if p.strip()]
    if not planes or any(p not in ("shared", "endpoint", "proxy") for p in planes):
        print(
            f"bench_agent: --data-plane: expected shared, endpoint or proxy, got {args.data_plane!r}",
            file=sys.stderr,
        )
        return 2
    try:
        counts = [int(p) for p in args.peers.split(",") if p.strip()]
    except ValueError:
        print(f"bench_agent: --peers: expected comma-separated integers, got {args.peers!r}", file=sys.stderr)
        return 2
    if not counts or min(counts) < 1 or max(counts) > 60_000:
        print(f"bench_agent: --peers: counts must be 1..60000, got {args.peers!r}", file=sys.stderr)
        return 2
    if args.window <= 0 or args.churn_window < 0 or args.settle < 0 or args.latency_trials < 0:
        message = "--window must be > 0; --churn-window, --settle, --latency-trials >= 0"
        print(f"bench_agent: {message}", file=sys.stderr)
        return 2
    missing = missing_prerequisites()
    if missing or os.geteuid() != 0:
        print(f"bench_agent: needs root and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    results: list[Measurement] = []
    latencies: dict[tuple[int, str], float | None] = {}
    for count in counts:
        for plane in planes:
            measured, latency = run_one(count, args.window, args.churn_window, args.settle, data_plane=plane)
            results += measured
            latencies[(count, plane)] = latency
            print(
                render(measured, {(count, plane): latency}).splitlines()[-len(measured) :][0], file=sys.stderr
            )
    print(render(results, latencies))
    if args.latency_trials > 0:
        samples = []
        for _ in range(args.latency_trials):
            _measured, latency = run_one(1, 0.1, 0, 0, data_plane=planes[0])
            if latency is not None:
                samples.append(latency)
        samples.sort()
        if samples:
            print(
                f"\nfirst handshake → handshake_observed in the log, {len(samples)} runs of 1 peer: "
                f"median {samples[len(samples) // 2]:.0f} ms, max {samples[-1]:.0f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
