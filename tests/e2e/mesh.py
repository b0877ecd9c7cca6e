"""Helpers of the end-to-end tests: agents on a namespace topology, and what to assert.

This module owns starting `natrelay agent` inside each peer's namespace (configs written
from the topology, one shared SQLite log, TURN credentials in a 0600 file), waiting for
WireGuard handshakes, pinging through the tunnel, and checking the log with
`replay --verify`. It never sleeps a fixed time where it can wait for a condition, and
every process it starts belongs to the topology, which kills it at teardown.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from natrelay.adapters.mesh.agent_config import DEFAULT_DATA_PLANE
from natrelay.tools.topology import Topology, run

#: A policy fast enough for tests: short timeouts, quick rounds and upgrade probes.
E2E_POLICY = {
    # The scenarios are about the fallback story (direct first, relay after the
    # direct rounds fail), so they pin the mode whatever the tuned default is.
    "mode": "direct_first",
    "min_direct_attempts": 2,
    "attempt_timeout_ms": 1000,
    "step_interval_ms": 300,
    "backoff_cap_ms": 2000,
    "parallel_endpoints": 1,
    "relay_connect_timeout_ms": 6000,
    "relay_retry_ms": 2000,
    "upgrade_probe_interval_ms": 1500,
    "upgrade_probe_backoff": 1.5,
    "upgrade_probe_cap_ms": 4000,
    "switch_hysteresis_ms": 2000,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


@attrs.define
class Mesh:
    """Agents running on a topology; `log_path` is the shared event log."""

    topo: Topology
    policy: dict[str, Any] = attrs.field(factory=lambda: dict(E2E_POLICY))
    started_at: dict[str, float] = attrs.field(factory=dict)
    #: How many times each agent had said "agent running" before its latest start.
    runs: dict[str, int] = attrs.field(factory=dict)
    #: Extra top-level config keys (data_plane, port_mapping, ...).
    settings: dict[str, Any] = attrs.field(factory=lambda: {"port_mapping": False})

    @property
    def proxy_mode(self) -> bool:
        """The agent logs its data path and WireGuard's session survives switches (proxy, shared)."""
        return self.settings.get("data_plane", DEFAULT_DATA_PLANE) != "endpoint"

    @property
    def log_path(self) -> Path:
        return self.topo.workdir / "mesh.db"

    def block_direct(self, name: str, other: str) -> None:
        """Drop every packet between the two peers' public addresses at ``name``'s router.

        TURN traffic goes to the relays' addresses and passes; only the direct path dies.
        """
        router, far = self.topo.peers[name].router_ns, self.topo.peers[other].wan_ip
        for direction in ("-d", "-s"):
            run(["iptables", "-I", "FORWARD", direction, far, "-j", "DROP"], ns=router)

    def agent_pid(self, name: str) -> int:
        """The agent's own pid (`ip netns exec` execs it in place)."""
        return self.topo._processes[f"agent-{name}"].pid

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`natrelay ARGS` on the shared log, as a person would type it."""
        return subprocess.run(
            [sys.executable, "-m", "natrelay.tools.cli", *args], capture_output=True, text=True, timeout=60
        )

    def write_config(self, name: str, extra: str = "") -> Path:
        topo = self.topo
        cred = topo.workdir / "turn.cred"
        if not cred.exists():
            cred.touch(mode=0o600)
            cred.write_text(f"{topo.turn_user}:{topo.turn_password}\n")
        secret = topo.workdir / "probe.secret"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.write_text(topo.turn_password + "-probe-secret\n")
        lines = [
            f"node = {_toml_value(name)}",
            "persistent_keepalive = 1",
            f"probe_secret_file = {_toml_value(str(secret))}",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.settings.items()]
        lines += [
            "",
            "[credentials]",
            f"file = {_toml_value(str(cred))}",
            "",
            "[policy]",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.policy.items()]
        for other in topo.peers.values():
            if other.name == name:
                continue
            lines += [
                "",
                "[[peers]]",
                f"name = {_toml_value(other.name)}",
                f"public_key = {_toml_value(other.public_key)}",
                f"allowed_ips = {_toml_value([other.tunnel_ip + '/32'])}",
            ]
        for relay in topo.relays.values():
            lines += [
                "",
                "[[relays]]",
                f"id = {_toml_value(relay.name)}",
                f"url = {_toml_value(relay.url)}",
                'region = "lab"',
            ]
        path = topo.workdir / f"agent-{name}.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    def start_agent(self, name: str, extra: str = "") -> None:
        """Start `name`'s agent; ``extra`` is TOML appended to its config (more [[peers]])."""
        peer = self.topo.peers[name]
        config = self.write_config(name, extra)
        self.started_at[name] = time.monotonic()
        self.runs[name] = self.agent_log(name).count("agent running")
        self.topo.spawn(
            f"agent-{name}",
            [
                sys.executable,
                "-m",
                "natrelay.tools.cli.cmd_agent",
                "agent",
                "--interface",
                peer.wg_if,
                "--log",
                str(self.log_path),
                "--config",
                str(config),
            ],
            ns=peer.ns,
            log=self.topo.workdir / f"agent-{name}.log",
        )

    def stop_agent(self, name: str) -> int | None:
        """Ctrl-C the agent (SIGINT) and return its exit status."""
        proc = self.topo._processes.get(f"agent-{name}")
        if proc is None:
            return None
        proc.send_signal(2)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            self.topo.stop_process(f"agent-{name}")
            return None
        self.topo._processes.pop(f"agent-{name}", None)
        return code

    def agent_log(self, name: str) -> str:
        path = self.topo.workdir / f"agent-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def peer_endpoint(self, name: str, other: str) -> str | None:
        """The endpoint `name`'s WireGuard uses for `other` right now."""
        out = self.topo.wg(name, "show", self.topo.peers[name].wg_if, "endpoints")
        for line in out.splitlines():
            key, _, endpoint = line.partition("\t")
            if key == self.topo.peers[other].public_key:
                return None if endpoint == "(none)" else endpoint
        return None

    def latest_handshake(self, name: str, other: str) -> int:
        out = self.topo.wg(name, "show", self.topo.peers[name].wg_if, "latest-handshakes")
        for line in out.splitlines():
            key, _, value = line.partition("\t")
            if key == self.topo.peers[other].public_key:
                return int(value or 0)
        return 0

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> float:
        """Wait until `condition()` holds; return the seconds it took, or fail naming `what`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n" + self.diagnostics())

    def proxy_path(self, name: str, other: str) -> tuple[str, str] | None:
        """The path `name`'s proxy sends `other`'s packets on, from its agent's log."""
        key = self.topo.peers[other].public_key[:8]
        found = None
        for line in self.agent_log(name).splitlines():
            marker = f"data path of {key}: "
            if marker in line:
                kind, _, where = line.split(marker, 1)[1].partition(" ")
                found = (kind, where.strip().partition(" via ")[0])
        return found

    def punched_via(self, name: str, other: str) -> str | None:
        """The loopback port WireGuard reaches `other` through when a hard-NAT punch carries the path."""
        key = self.topo.peers[other].public_key[:8]
        via = None
        for line in self.agent_log(name).splitlines():
            marker = f"data path of {key}: "
            if marker in line:
                via = line.split(" via ", 1)[1].strip() if " via " in line else None
        return via

    def path_kind(self, name: str, other: str) -> str | None:
        """'relay' or 'direct': the proxy's path, or where WireGuard points (endpoint mode)."""
        if self.proxy_mode:
            path = self.proxy_path(name, other)
            kind = None if path is None else path[0]
            if kind is not None and self.settings.get("data_plane", DEFAULT_DATA_PLANE) == "shared":
                # Shared mode: WireGuard itself must point where the agent says (not roamed).
                endpoint = self.peer_endpoint(name, other)
                via = self.punched_via(name, other)
                if via is not None and endpoint == via:
                    endpoint = path[1]  # WireGuard reaches the direct path through the punched socket
                actual = "relay" if endpoint and endpoint.startswith("127.") else "direct"
                if endpoint is None or actual != kind or (kind == "direct" and endpoint != path[1]):
                    return f"{kind}, but WireGuard points at {endpoint}"
            return kind
        endpoint = self.peer_endpoint(name, other)
        if endpoint is None:
            return None
        return "relay" if endpoint.startswith("127.") else "direct"

    def wait_path(
        self, kind: str, timeout: float, pair: tuple[str, str] = ("a", "b"), since: int = 0
    ) -> float:
        """Both sides use a `kind` path with a handshake newer than `since` (unix s)."""
        a, b = pair

        def ok() -> bool:
            # Through the proxy, WireGuard's session survives path switches: no new
            # handshake is needed, a ping through the tunnel shows the path carries.
            return all(
                self.path_kind(x, y) == kind
                and (self.proxy_mode or self.latest_handshake(x, y) > since)
                and self.engine_path(x) == kind
                for x, y in ((a, b), (b, a))
            ) and (not self.proxy_mode or self.ping(a, b, tries=1))

        return self.wait_for(f"a {kind} handshake between {a} and {b}", ok, timeout)

    def ping(self, src: str = "a", dst: str = "b", tries: int = 5) -> bool:
        return any(self.topo.ping(src, dst, count=1, timeout_s=1) for _ in range(tries))

    def verify(self, node: str) -> str:
        """`replay --verify` of `node` on the shared log; returns the report, fails on divergence."""
        from natrelay.eventlog import EventLog
        from natrelay.eventlog.replay import verify

        with EventLog.open(str(self.log_path), create=False) as log:
            result = verify(log, node)
        assert result.ok, f"replay --verify {node}: {result.divergence}"
        return f"{node}: {result.observations} observations, {result.decisions} decisions ok"

    def engine_path(self, node: str) -> str | None:
        """The kind of path `node`'s engine last selected, as its log records it."""
        kinds = {
            "direct_path_selected": "direct",
            "path_upgraded": "direct",
            "relay_path_selected": "relay",
            "path_lost": None,
        }
        last = None
        for decision in self.decisions(node):
            if decision in kinds:
                last = kinds[decision]
        return last

    def wait_running(self, name: str, timeout: float = 20) -> float:
        """Wait until agent `name` says it runs (its start-up, resume included, is done)."""
        before = self.runs.get(name, 0)
        return self.wait_for(
            f"agent {name} to run", lambda: self.agent_log(name).count("agent running") > before, timeout
        )

    def decisions(self, node: str) -> list[str]:
        return self._types(node, "decision")

    def observations(self, node: str) -> list[str]:
        return self._types(node, "observation")

    def _types(self, node: str, kind: str) -> list[str]:
        from natrelay.eventlog import EventLog
        from natrelay.eventlog.replay import node_events

        if not self.log_path.exists():
            return []
        with EventLog.open(str(self.log_path), create=False) as log:
            return [e.TYPE for _s, _st, e in node_events(log, node) if e.KIND in (kind,)]

    def diagnostics(self) -> str:
        parts = []
        for name, peer in self.topo.peers.items():
            dump = run(["wg", "show", peer.wg_if, "endpoints"], ns=peer.ns, check=False).stdout
            parts.append(f"--- {name} endpoints: {dump.strip()}")
            parts.append(f"--- agent {name} log (tail):\n" + self.agent_log(name)[-3000:])
        return "\n".join(parts)
