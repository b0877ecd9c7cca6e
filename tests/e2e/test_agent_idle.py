"""End to end, issue 18 and two agent bugs of issue 12, on real wireguard-go, coturn and NATs.

- An agent holding 1,000 configured peers (two real, the rest keys nobody holds) connects
  its real peers, forks no `wg` while it runs, and its log passes ``replay --verify``.
- An agent started seconds after another, with the default policy, writes its start into
  its own stream: ``natrelay status/replay --node`` know it (issue 12, bug 1).
- A direct path that goes silent and stays blocked falls back to the relay without the
  stale reading that found it silent "re-selecting" the dead endpoint (issue 12, bug 2).
- The agent benchmark runs, tiny, and reports no fork in steady state.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time

import pytest
from mesh import Mesh

from natrelay.tools.bench_agent import children_named

pytestmark = pytest.mark.e2e


def _fake_peers(count: int) -> str:
    """TOML for ``count`` peers that exist only in the config (WireGuard accepts any key)."""
    lines = []
    for i in range(count):
        key = base64.b64encode(hashlib.sha256(f"absent-{i}".encode()).digest()).decode()
        lines += [
            "",
            "[[peers]]",
            f'name = "absent{i}"',
            f'public_key = "{key}"',
            f'allowed_ips = ["10.200.{i // 250}.{i % 250 + 1}/32"]',
            'access = "direct_only"',
        ]
    return "\n".join(lines) + "\n"


def _forks_during(pid: int, seconds: float) -> set[int]:
    seen: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen |= children_named(pid, "wg")
        time.sleep(0.01)
    return seen


def test_an_agent_with_a_thousand_configured_peers_connects_the_real_ones_and_forks_nothing(
    mesh_factory,
) -> None:
    mesh = mesh_factory("preserving", "preserving")
    mesh.topo.add_peer("c", "preserving")
    mesh.start_agent("b")
    mesh.start_agent("c")
    mesh.start_agent("a", extra=_fake_peers(998))  # b, c and 998 absent: 1,000 peers
    mesh.wait_running("a", timeout=60)
    for pair in (("a", "b"), ("a", "c")):
        took = mesh.wait_path("direct", 40, pair=pair)
        print(f"{pair[0]}-{pair[1]} direct with 1,000 configured peers {took:.2f} s after a was running")
        assert mesh.ping(*pair), mesh.diagnostics()
    out = mesh.topo.wg("a", "show", mesh.topo.peers["a"].wg_if, "peers")
    assert len(out.split()) == 1000, "WireGuard holds b, c and the 998 absent peers"
    forks = _forks_during(mesh.agent_pid("a"), 8)
    assert not forks, f"agent a forked `wg` {len(forks)} times in steady state"
    for node in ("a", "b", "c"):
        assert mesh.stop_agent(node) == 0, mesh.agent_log(node)[-2000:]
    for node in ("a", "b", "c"):
        print(mesh.verify(node))
        replay = mesh.cli("replay", str(mesh.log_path), "--node", node, "--verify")
        assert replay.returncode == 0, replay.stdout + replay.stderr


def test_an_agent_started_after_another_with_the_default_policy_has_its_own_stream(mesh_factory) -> None:
    mesh = mesh_factory("preserving", "preserving")
    mesh.policy = {}  # the default policy: the agent writes no PolicySet "because it differs"
    mesh.start_agent("a")
    mesh.wait_running("a")
    time.sleep(3)  # a announced the relays: b's view of the log is no longer empty
    mesh.start_agent("b")
    mesh.wait_running("b")
    for node in ("a", "b"):
        status = mesh.cli("status", str(mesh.log_path), "--node", node)
        assert status.returncode == 0, f"status --node {node}: {status.stdout}{status.stderr}"
    assert mesh.stop_agent("a") == 0
    assert mesh.stop_agent("b") == 0
    for node in ("a", "b"):
        replay = mesh.cli("replay", str(mesh.log_path), "--node", node, "--verify")
        assert replay.returncode == 0, replay.stdout + replay.stderr


def _events(mesh: Mesh, node: str) -> list[tuple[str, object]]:
    from natrelay.eventlog import EventLog
    from natrelay.eventlog.replay import node_events

    with EventLog.open(str(mesh.log_path), create=False) as log:
        return [(e.TYPE, e) for _s, _st, e in node_events(log, node)]


def test_a_silent_then_blocked_direct_path_falls_back_to_the_relay_without_reselecting_it(
    mesh_factory,
) -> None:
    mesh = mesh_factory("preserving", "preserving")
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("direct", 20)
    blocked_at = time.monotonic()
    mesh.block_direct("a", "b")
    since = int(time.time())
    took = mesh.wait_path("relay", 60, since=since)
    print(f"relayed {took:.2f} s after the direct path was blocked")
    for node in ("a", "b"):
        events = _events(mesh, node)
        types = [t for t, _e in events]
        assert "path_silent" in types, types
        after = [e for t, e in events[types.index("path_silent") :] if t == "handshake_observed"]
        direct = [e for e in after if getattr(e, "endpoint", None)]
        # Nothing crosses the blocked path: a direct handshake after the silence is the stale reading.
        assert not direct, f"{node} saw a handshake on the dead path after it was silent: {direct}"
    assert time.monotonic() - blocked_at < 60
    assert mesh.ping("a", "b"), mesh.diagnostics()
    assert mesh.stop_agent("a") == 0
    assert mesh.stop_agent("b") == 0
    for node in ("a", "b"):
        print(mesh.verify(node))


def test_the_agent_benchmark_runs_tiny_and_sees_no_fork_in_steady_state() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "natrelay.tools.bench_agent",
            *("--peers", "1,100", "--window", "3", "--churn-window", "3", "--settle", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split("|")[2:-1] for line in run.stdout.splitlines() if line.startswith("| shared |")]
    phases = {(r[0].strip(), r[1].strip()) for r in rows}
    assert phases == {("1", "idle"), ("100", "idle"), ("100", "churn 10 %/min")}, run.stdout
    for row in rows:
        if row[1].strip() == "idle":
            assert row[7].strip() == "0", f"`wg` children in an idle agent: {row}"
