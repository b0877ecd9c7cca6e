"""Network-namespace topologies for the end-to-end tests: an internet, coturn relays, NATs, peers.

This module owns building and tearing down a small internet inside Linux network
namespaces, so that real WireGuard (wireguard-go), real NATs (iptables) and real TURN
relays (coturn) can be exercised on one machine:

    peer ns ──lan── NAT router ns ──wan──┐
                                          ├── "internet" bridge, 203.0.113.0/24
    relay ns (coturn) ───────────────────┘

Rules of this module:

- Every namespace, veth and WireGuard interface name starts with the topology's random
  prefix, so parallel runs and leftovers of a killed run never collide. A state file in
  ``/run/natrelay-topology/`` records what a run created and its pid; ``cleanup_stale()``
  removes the leftovers of runs whose process is gone.
- Only addresses inside the namespaces created here are used (the documentation range
  203.0.113.0/24 for the internet, 10.x inside each NAT, 10.77.0.0/24 in the tunnel).
- Teardown is idempotent and kills only the processes this topology started, by pid.
- A NAT drops unsolicited inbound traffic (``--ctstate NEW -j DROP`` on the WAN side) as
  home routers do: MASQUERADE alone would let hole punching "succeed" unrealistically.
  Conntrack is flushed after every rule change so old mappings do not survive it.
- wireguard-go's control socket ``/var/run/wireguard/<if>.sock`` is shared by all
  namespaces, hence one distinct interface name per peer.

It never talks to addresses outside these namespaces and never touches the host's own
network configuration (only ``ip netns`` objects it created).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from natrelay.tools.topology_nat import NatControls
from natrelay.tools.topology_shell import (
    INTERNET_NET,
    STATE_DIR,
    TUNNEL_NET,
    TURN_REALM,
    NatKind,
    Peer,
    Relay,
    TopologyError,
    _remove,
    cleanup_stale,
    missing_prerequisites,
    run,
)


@attrs.define
class Topology(NatControls):
    """A live namespace topology; use as a context manager so teardown always runs."""

    prefix: str = attrs.field(factory=lambda: "nr" + secrets.token_hex(3))
    turn_user: str = "natrelay"
    #: The "internet" /24. miniupnpd refuses to map behind any reserved range (RFC 5737
    #: documentation ranges included): its tests use a non-reserved prefix, which is safe
    #: only because the internet namespace has no link to the host's own network.
    internet_net: str = INTERNET_NET
    turn_password: str = attrs.field(factory=lambda: secrets.token_urlsafe(12), repr=False)
    relays: dict[str, Relay] = attrs.field(factory=dict)
    peers: dict[str, Peer] = attrs.field(factory=dict)
    nats: dict[str, NatKind] = attrs.field(factory=dict)
    _namespaces: list[str] = attrs.field(factory=list)
    _processes: dict[str, subprocess.Popen[bytes]] = attrs.field(factory=dict)
    _wg_ifs: list[str] = attrs.field(factory=list)
    _workdir: Path | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    @property
    def inet_ns(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(f"/tmp/{self.prefix}")
            self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._workdir

    def _save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "pid": os.getpid(),
            "namespaces": self._namespaces,
            "processes": {k: p.pid for k, p in self._processes.items()},
            "wg_ifs": self._wg_ifs,
            "workdir": str(self._workdir) if self._workdir else None,
        }
        (STATE_DIR / f"{self.prefix}.json").write_text(json.dumps(state))

    def _add_ns(self, ns: str) -> None:
        run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._save_state()
        run(["ip", "link", "set", "lo", "up"], ns=ns)

    def _veth(self, a_name: str, a_ns: str, b_name: str, b_ns: str) -> None:
        run(["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name])
        run(["ip", "link", "set", a_name, "netns", a_ns])
        run(["ip", "link", "set", b_name, "netns", b_ns])

    def start(self) -> Topology:
        """Create the internet namespace with its bridge."""
        missing = missing_prerequisites()
        if missing:
            raise TopologyError("missing prerequisites: " + ", ".join(missing))
        self._add_ns(self.inet_ns)
        run(["ip", "link", "add", "br0", "type", "bridge"], ns=self.inet_ns)
        run(["ip", "link", "set", "br0", "up"], ns=self.inet_ns)
        return self

    def _attach_to_internet(self, ns: str, host_octet: int, tag: str) -> str:
        """Connect ``ns`` to the bridge as 203.0.113.<host_octet>; return its interface name."""
        outside, inside = f"{self.prefix}{tag}i", f"{self.prefix}{tag}w"
        self._veth(outside, self.inet_ns, inside, ns)
        run(["ip", "link", "set", outside, "master", "br0"], ns=self.inet_ns)
        run(["ip", "link", "set", outside, "up"], ns=self.inet_ns)
        run(["ip", "addr", "add", f"{self.internet_net}.{host_octet}/24", "dev", inside], ns=ns)
        run(["ip", "link", "set", inside, "up"], ns=ns)
        return inside

    def spawn(
        self,
        key: str,
        cmd: Sequence[str],
        *,
        ns: str,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``ns``; teardown kills it by pid."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        if log:
            out.close()  # type: ignore[union-attr]
        self._processes[key] = proc
        self._save_state()
        return proc

    def stop_process(self, key: str, timeout: float = 3.0) -> None:
        """Stop one process this topology started (SIGTERM, then SIGKILL)."""
        proc = self._processes.pop(key, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._save_state()

    # ---- relays ------------------------------------------------------------------------

    def add_relay(self, name: str) -> Relay:
        """A coturn relay, long-term credentials, on 203.0.113.(10+n)."""
        index = len(self.relays) + 1
        ns = f"{self.prefix}-{name}"
        ip = f"{self.internet_net}.{10 + index}"
        self._add_ns(ns)
        self._attach_to_internet(ns, 10 + index, f"r{index}")
        relay = Relay(name=name, ns=ns, ip=ip)
        self.relays[name] = relay
        self.start_relay(name)
        return relay

    def start_relay(self, name: str) -> None:
        """(Re)start coturn for relay ``name`` and wait until it answers."""
        relay = self.relays[name]
        conf = self.workdir / f"turn-{name}.conf"
        # The password goes into a 0600 file, never onto a command line (ps would show it).
        conf.write_text(
            f"listening-ip={relay.ip}\nrelay-ip={relay.ip}\nlistening-port={relay.port}\n"
            f"realm={TURN_REALM}\nlt-cred-mech\nuser={self.turn_user}:{self.turn_password}\n"
            "no-tls\nno-dtls\nno-tcp\nno-cli\nno-software-attribute\nmin-port=49152\n"
            "max-port=49999\nsimple-log\nno-stdout-log\n"
            f"log-file={self.workdir / f'turn-{name}.log'}\n"
            f"pidfile={self.workdir / f'turn-{name}.pid'}\n"
            f"userdb={self.workdir / f'turn-{name}.db'}\n"
        )
        conf.chmod(0o600)
        self.spawn(f"turn-{name}", ["turnserver", "-c", str(conf)], ns=relay.ns)
        self._wait_udp_listening(relay.ns, relay.port, what=f"coturn {name}")

    def kill_relay(self, name: str) -> None:
        """The relay dies (SIGKILL, no goodbye to clients)."""
        proc = self._processes.pop(f"turn-{name}", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._save_state()

    def _wait_udp_listening(self, ns: str, port: int, what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = run(["ss", "-Hlun", f"sport = :{port}"], ns=ns, check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TopologyError(f"{what} is not listening on udp port {port} after {timeout} s")

    # ---- NATs and peers ----------------------------------------------------------------

    def add_peer(self, name: str, nat: NatKind = "preserving", *, lan_of: str | None = None) -> Peer:
        """A peer behind its own NAT router, with wireguard-go up and no peers configured.

        ``lan_of``: the new peer joins that peer's LAN, behind the same router and NAT
        (the router does not hairpin: a packet to its own public address is dropped).
        """
        index = len(self.peers) + 1
        ns = f"{self.prefix}-{name}"
        if lan_of is None:
            router_ns = f"{self.prefix}-nat{name}"
            self._add_ns(router_ns)
            wan_if = self._attach_to_internet(router_ns, 100 + index, f"n{index}")
            lan_net, wan_ip = f"10.{index}.0", f"{self.internet_net}.{100 + index}"
            bridge = f"{self.prefix}b{index}"
            run(["ip", "link", "add", bridge, "type", "bridge"], ns=router_ns)
            run(["ip", "addr", "add", f"{lan_net}.1/24", "dev", bridge], ns=router_ns)
            run(["ip", "link", "set", bridge, "up"], ns=router_ns)
            run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=router_ns)
            host = 2
        else:
            first = self.peers[lan_of]
            router_ns, wan_if, wan_ip = first.router_ns, first.wan_if, first.wan_ip
            lan_net = first.lan_ip.rsplit(".", 1)[0]
            bridge = f"{self.prefix}b{first.index}"
            host = 2 + sum(1 for p in self.peers.values() if p.router_ns == router_ns)
        self._add_ns(ns)
        router_lan, peer_lan = f"{self.prefix}l{index}r", f"{self.prefix}l{index}p"
        self._veth(router_lan, router_ns, peer_lan, ns)
        run(["ip", "link", "set", router_lan, "master", bridge], ns=router_ns)
        run(["ip", "link", "set", router_lan, "up"], ns=router_ns)
        run(["ip", "addr", "add", f"{lan_net}.{host}/24", "dev", peer_lan], ns=ns)
        run(["ip", "link", "set", peer_lan, "up"], ns=ns)
        run(["ip", "route", "add", "default", "via", f"{lan_net}.1"], ns=ns)

        wg_if = f"wg{self.prefix}{index}"
        private_key = run(["wg", "genkey"]).stdout.strip()
        public_key = subprocess.run(
            ["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True
        ).stdout.strip()
        peer = Peer(
            name=name,
            ns=ns,
            router_ns=router_ns,
            index=index,
            lan_ip=f"{lan_net}.{host}",
            wan_ip=wan_ip,
            wan_if=wan_if,
            wg_if=wg_if,
            tunnel_ip=f"{TUNNEL_NET}.{index}",
            private_key=private_key,
            public_key=public_key,
        )
        self.peers[name] = peer
        if lan_of is None:
            self.set_nat(name, nat)
        else:
            self.nats[name] = self.nats[lan_of]
        self._start_wireguard(peer)
        return peer

    def _start_wireguard(self, peer: Peer) -> None:
        self._wg_ifs.append(peer.wg_if)
        self.spawn(
            f"wg-{peer.name}",
            ["wireguard-go", "-f", peer.wg_if],
            ns=peer.ns,
            env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"},
            log=self.workdir / f"wg-{peer.name}.log",
        )
        sock = Path(f"/var/run/wireguard/{peer.wg_if}.sock")
        deadline = time.monotonic() + 5.0
        while not sock.exists():
            if time.monotonic() > deadline:
                raise TopologyError(f"wireguard-go for {peer.name} did not create {sock}")
            time.sleep(0.02)
        key_file = self.workdir / f"wg-{peer.name}.key"
        key_file.write_text(peer.private_key + "\n")
        key_file.chmod(0o600)
        run(
            ["wg", "set", peer.wg_if, "private-key", str(key_file), "listen-port", str(peer.listen_port)],
            ns=peer.ns,
        )
        run(["ip", "addr", "add", f"{peer.tunnel_ip}/24", "dev", peer.wg_if], ns=peer.ns)
        run(["ip", "link", "set", peer.wg_if, "up"], ns=peer.ns)

    def wg(self, name: str, *args: str) -> str:
        peer = self.peers[name]
        return run(["wg", *args], ns=peer.ns).stdout

    def ping(self, src: str, dst: str, count: int = 1, timeout_s: int = 2) -> bool:
        """Ping ``dst``'s tunnel address from ``src``'s namespace; True when it answered."""
        proc = run(
            ["ping", "-n", "-c", str(count), "-W", str(timeout_s), self.peers[dst].tunnel_ip],
            ns=self.peers[src].ns,
            check=False,
            timeout=count * timeout_s + 5,
        )
        return proc.returncode == 0

    # ---- teardown ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill our processes and delete our namespaces; safe to call any number of times."""
        for key in list(self._processes):
            with contextlib.suppress(Exception):
                self.stop_process(key, timeout=2.0)
        _remove(self._namespaces, self._wg_ifs, self._workdir)
        self._namespaces.clear()
        self._wg_ifs.clear()
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{self.prefix}.json").unlink()


@contextlib.contextmanager
def topology(
    relays: Sequence[str] = ("r1", "r2"),
    peers: Sequence[tuple[str, NatKind]] = (("a", "preserving"), ("b", "preserving")),
) -> Iterator[Topology]:
    """Build a whole topology, yield it, and always tear it down."""
    topo = Topology()
    try:
        topo.start()
        for relay in relays:
            topo.add_relay(relay)
        for name, kind in peers:
            topo.add_peer(name, kind)
        yield topo
    finally:
        topo.teardown()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m natrelay.tools.topology demo|cleanup``: build and show, or remove leftovers."""
    parser = argparse.ArgumentParser(prog="natrelay-topology", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="build a topology, print it, wait for Enter, tear down")
    demo.add_argument("--nat-a", default="preserving", choices=["preserving", "symmetric", "none"])
    demo.add_argument("--nat-b", default="preserving", choices=["preserving", "symmetric", "none"])
    sub.add_parser("cleanup", help="remove leftovers of topologies whose process died")
    args = parser.parse_args(argv)
    if args.cmd == "cleanup":
        for prefix in cleanup_stale():
            print(f"removed {prefix}")
        return 0
    started = time.monotonic()
    with topology(peers=(("a", args.nat_a), ("b", args.nat_b))) as topo:
        print(f"built {topo.prefix} in {time.monotonic() - started:.2f} s")
        for relay in topo.relays.values():
            print(f"relay {relay.name}: ns={relay.ns} {relay.url}")
        for peer in topo.peers.values():
            print(
                f"peer {peer.name}: ns={peer.ns} nat={topo.nats[peer.name]} wg={peer.wg_if} "
                f"wan={peer.wan_ip} tunnel={peer.tunnel_ip} key={peer.public_key}"
            )
        with contextlib.suppress(EOFError):
            input("Enter to tear down> ") if sys.stdin.isatty() else None
    return 0


if __name__ == "__main__":
    sys.exit(main())
