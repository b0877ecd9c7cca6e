"""What every piece of the end-to-end topology shares: constants, values, running commands, cleanup.

Owns the vocabulary of tools/topology.py (the namespaces) and tools/topology_nat.py (NAT
rules, port mapping, blocking): the address plan, `run` (a command inside a namespace,
failing loudly), the Relay and Peer values, and removing what a killed run left behind.
It never touches anything but namespaces, interfaces and processes a topology recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

NatKind = Literal["preserving", "symmetric", "none"]

INTERNET_NET = "203.0.113"
TUNNEL_NET = "10.77.0"
TURN_PORT = 3478
WG_PORT = 51820
TURN_REALM = "natrelay.test"
STATE_DIR = Path("/run/natrelay-topology")
REQUIRED_TOOLS = ("ip", "iptables", "conntrack", "wg", "wireguard-go", "turnserver", "miniupnpd", "nft")


class TopologyError(RuntimeError):
    """A namespace command failed, or a prerequisite is missing."""


def missing_prerequisites(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    """What is missing to build a topology: tools not on PATH, and root."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces need uid 0)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (wireguard-go needs it)")
    return missing


def run(
    cmd: Sequence[str], *, ns: str | None = None, check: bool = True, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run a command, inside namespace ``ns`` when given; raise TopologyError on failure."""
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TopologyError(f"{' '.join(full)}: {exc}") from exc
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise TopologyError(f"{' '.join(full)} exited {proc.returncode}: {detail}")
    return proc


@attrs.frozen
class Relay:
    """A coturn relay on the internet bridge."""

    name: str
    ns: str
    ip: str
    port: int = TURN_PORT

    @property
    def url(self) -> str:
        return f"turn:{self.ip}:{self.port}?transport=udp"


@attrs.frozen
class Peer:
    """A host behind its own NAT router, running wireguard-go on ``wg_if``."""

    name: str
    ns: str
    router_ns: str
    index: int
    lan_ip: str
    wan_ip: str
    wan_if: str
    wg_if: str
    tunnel_ip: str
    private_key: str
    public_key: str
    listen_port: int = WG_PORT

    @property
    def public_endpoint(self) -> str:
        """Where this peer's WireGuard port appears on the internet when the NAT preserves ports."""
        return f"{self.wan_ip}:{self.listen_port}"


def _remove(namespaces: Sequence[str], wg_ifs: Sequence[str], workdir: Path | None) -> None:
    for ns in reversed(namespaces):
        run(["ip", "netns", "del", ns], check=False)
    for wg_if in wg_ifs:
        with contextlib.suppress(FileNotFoundError):
            Path(f"/var/run/wireguard/{wg_if}.sock").unlink()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove what topologies of dead processes left behind; return their prefixes."""
    removed: list[str] = []
    if not STATE_DIR.exists():
        return removed
    for state_file in sorted(STATE_DIR.glob("*.json")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(state.get("pid", 0))):
            continue
        for pid in state.get("processes", {}).values():
            # Only pids recorded by that run, and only if they still run inside its netns.
            with contextlib.suppress(OSError):
                ns_link = os.readlink(f"/proc/{pid}/ns/net")
                if ns_link != os.readlink("/proc/self/ns/net"):
                    os.kill(pid, signal.SIGKILL)
        workdir = state.get("workdir")
        _remove(state.get("namespaces", []), state.get("wg_ifs", []), Path(workdir) if workdir else None)
        state_file.unlink(missing_ok=True)
        removed.append(state_file.stem)
    return removed
