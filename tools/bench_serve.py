"""`natrelay serve` measured over its Unix socket: decisions per second and round-trip latency.

Owns the service benchmark: a `natrelay serve` process on a fresh log, and
agents in their own processes (`python -m natrelay.tools.bench_serve agent
...`), each running the in-memory mesh of tools/bench.py over the socket —
commands executed by the scripted network, observations and ticks sent back,
one request in flight per agent. The round trip is timed from the request's
write to its answer's arrival (the append included: the service answers only
after it). Beside it, the same mesh through `adapters.node.Node` in-process
on the same backend, appending per observation: the cost of the socket and
JSON is the difference. Nothing here asserts a limit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from natrelay.adapters.node import Node
from natrelay.adapters.serve.protocol import COMMAND_TYPES, event_to_wire
from natrelay.core.events import Tick
from natrelay.eventlog import EventLog

#: Simulated time each agent's mesh runs for.
DURATION_MS = 120_000


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def agent(socket_path: str, node: str, peers: int, duration_ms: int) -> dict[str, Any]:
    """Run the bench mesh for `node` over the socket; counts, elapsed time, round trips (ms)."""
    from natrelay.tools.bench_mesh import mesh_inputs

    network, setup = mesh_inputs(peers)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    stream = sock.makefile("rwb")
    rtts: list[float] = []
    counts = {"observations": 0, "decisions": 0, "pushes": 0}
    state: dict[str, Any] = {"now": 0, "deadline": None}

    def react(answer: dict[str, Any]) -> None:
        state["deadline"] = answer["next_deadline"]
        state["now"] = max(state["now"], answer["now"])
        counts["decisions"] += len(answer["decisions"])
        for wire in answer["commands"]:
            fields = {k: v for k, v in wire.items() if k != "type"}
            network.execute(COMMAND_TYPES[wire["type"]](**fields), state["now"])

    def request(message: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        started = time.perf_counter()
        stream.write(line)
        stream.flush()
        while True:
            answer = json.loads(stream.readline())
            if answer["type"] != "push":
                break
            counts["pushes"] += 1
            react(answer)
        rtts.append((time.perf_counter() - started) * 1000)
        if answer["type"] == "error":
            raise RuntimeError(f"natrelay serve refused {message}: {answer}")
        return answer

    def observe(event: Any) -> None:
        counts["observations"] += 1
        react(request({"type": "observe", "event": event_to_wire(event)}))

    started = time.perf_counter()
    request({"type": "hello", "protocol": 1, "node": node})
    for event in setup:
        observe(event)
    while True:
        times = [t for t in (state["deadline"], network.next_event_at()) if t is not None]
        if not times or min(times) > duration_ms:
            break
        state["now"] = max(state["now"], min(times))
        for event in network.poll(state["now"]):
            observe(event)
        if state["deadline"] is not None and state["deadline"] <= state["now"]:
            observe(Tick(at=state["now"]))
    elapsed = time.perf_counter() - started
    sock.close()
    return {**counts, "elapsed_s": elapsed, "rtts_ms": rtts}


@contextmanager
def _service(url: str, socket_path: str) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-m", "natrelay.tools.cli", "serve", "--log", url, "--socket", socket_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"natrelay serve did not start: {process.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.02)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"natrelay serve exited with {process.returncode}: {err}")


def measure_service(url: str, agents: int, peers: int, duration_ms: int = DURATION_MS) -> dict[str, float]:
    """`agents` agent processes at once against one service on `url`."""
    with tempfile.TemporaryDirectory(prefix="nrb-", dir="/tmp") as tmp:
        socket_path = str(Path(tmp) / "s.sock")
        with _service(url, socket_path):
            running = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "natrelay.tools.bench_serve",
                        "agent",
                        socket_path,
                        f"bench-{index}",
                        str(peers),
                        str(duration_ms),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for index in range(agents)
            ]
            results = []
            for process in running:
                out, _ = process.communicate(timeout=3600)
                if process.returncode != 0:
                    raise RuntimeError(f"a bench agent failed with {process.returncode}")
                results.append(json.loads(out))
    rtts = [rtt for result in results for rtt in result["rtts_ms"]]
    elapsed = max(result["elapsed_s"] for result in results)
    return {
        "decisions_per_s": sum(r["decisions"] for r in results) / elapsed,
        "observations_per_s": sum(r["observations"] for r in results) / elapsed,
        "rtt_p50_ms": _percentile(rtts, 0.50),
        "rtt_p99_ms": _percentile(rtts, 0.99),
        "decisions": float(sum(r["decisions"] for r in results)),
    }


def measure_in_process(url: str, peers: int, duration_ms: int = DURATION_MS) -> dict[str, float]:
    """The same mesh through `Node` in this process, one atomic append per observation."""
    from natrelay.tools.bench_mesh import mesh_inputs

    network, setup = mesh_inputs(peers)
    with EventLog.open(url) as log:
        node = Node(log, network, node="bench-0")
        observations = decisions = 0

        def count(_observation: Any, reaction: Any) -> None:
            nonlocal observations, decisions
            observations += 1
            decisions += len(reaction.decisions)

        node.on_reaction = count
        started = time.perf_counter()
        for event in setup:
            node.observe(event)
        node.run_until(duration_ms)
        elapsed = time.perf_counter() - started
    return {"decisions_per_s": decisions / elapsed, "observations_per_s": observations / elapsed}


def run(*, peers: int, pg_url: str | None = None, postgres: bool = True, agents: int = 4) -> dict[str, float]:
    """Every service measurement, keyed `serve_<measure>_<backend>` (and `_<n>_agents`)."""
    from natrelay.tools.bench_log import DEFAULT_PG_URL, _pg_schema

    out: dict[str, float] = {}

    def record(prefix: str, backend: str, measured: dict[str, float], keys: tuple[str, ...]) -> None:
        for key in keys:
            out[f"{prefix}_{key}_{backend}"] = measured[key]

    with tempfile.TemporaryDirectory() as tmp:
        record("serve", "sqlite", measure_service(str(Path(tmp) / "one.sqlite"), 1, peers), _ALL)
        record(
            f"serve_{agents}_agents",
            "sqlite",
            measure_service(str(Path(tmp) / "many.sqlite"), agents, peers),
            _ALL,
        )
        record(
            "serve_in_process", "sqlite", measure_in_process(str(Path(tmp) / "node.sqlite"), peers), _RATES
        )
    if postgres:
        url = pg_url or os.environ.get("NATRELAY_PG_URL", DEFAULT_PG_URL)
        with _pg_schema(url) as (schema_url, _):
            record("serve", "pg", measure_service(schema_url, 1, peers), _ALL)
        with _pg_schema(url) as (schema_url, _):
            record(f"serve_{agents}_agents", "pg", measure_service(schema_url, agents, peers), _ALL)
        with _pg_schema(url) as (schema_url, _):
            record("serve_in_process", "pg", measure_in_process(schema_url, peers), _RATES)
    out["serve_peers_per_agent"] = float(peers)
    return out


_RATES = ("decisions_per_s", "observations_per_s")
_ALL = (*_RATES, "rtt_p50_ms", "rtt_p99_ms")


if __name__ == "__main__":  # the agent process of measure_service
    if sys.argv[1:2] == ["agent"]:
        socket_path, node, peers, duration = sys.argv[2:6]
        print(json.dumps(agent(socket_path, node, int(peers), int(duration))))
    else:
        print(json.dumps(run(peers=int(sys.argv[1]) if len(sys.argv) > 1 else 500), indent=2))
