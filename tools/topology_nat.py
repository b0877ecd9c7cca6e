"""The NAT routers of the end-to-end topology: their rules, rebinding, port mapping, blocking.

Owns what tests do to a peer's router namespace once it exists: which NAT it is
(port-preserving, symmetric with `--random-fully`, none), forgetting mappings
(conntrack), moving the peer to a new public port (rebind), running miniupnpd (UPnP IGD,
NAT-PMP, PCP) on it, and blocking the direct path between two peers. A mixin of
``Topology`` (tools/topology.py), which owns creating and removing the namespaces.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from natrelay.tools.topology_shell import NatKind, TopologyError, run

if TYPE_CHECKING:
    from natrelay.tools.topology import Topology


class NatControls:
    """``Topology``'s NAT-side operations (see the module docstring)."""

    def set_nat(self: Topology, name: str, kind: NatKind, flush: str = "all") -> None:
        """Replace the NAT behaviour of ``name``'s router and flush its conntrack table.

        preserving: MASQUERADE keeps the source port when it can (endpoint-independent
        mapping). symmetric: ``--random-fully`` picks a new port for every destination.
        Both drop unsolicited inbound traffic. none: plain routing, no NAT, no filter.
        ``flush``: "all" forgets every mapping; "wireguard" only the WireGuard port's (other
        flows, such as a TURN allocation's, keep theirs); "none" keeps them all.
        """
        peer_router = self.peers[name].router_ns
        wan_if = self.peers[name].wan_if
        for table in ("nat", "filter"):
            run(["iptables", "-t", table, "-F"], ns=peer_router)
        if kind != "none":
            masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan_if, "-j", "MASQUERADE"]
            if kind == "symmetric":
                masquerade.append("--random-fully")
            run(masquerade, ns=peer_router)
            for chain in ("INPUT", "FORWARD"):
                run(
                    [
                        "iptables",
                        "-A",
                        chain,
                        "-i",
                        wan_if,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW,INVALID",
                        "-j",
                        "DROP",
                    ],
                    ns=peer_router,
                )
        if flush == "all":
            self.flush_conntrack(name)
        elif flush == "wireguard":
            run(
                ["conntrack", "-D", "-p", "udp", "--orig-port-src", str(self.peers[name].listen_port)],
                ns=peer_router,
                check=False,
            )
        self.nats[name] = kind

    def flush_conntrack(self: Topology, name: str) -> None:
        """Forget every NAT mapping of ``name``'s router (the next packet maps anew)."""
        run(["conntrack", "-F"], ns=self.peers[name].router_ns, check=False)

    def rebind(self: Topology, name: str, settle: float = 1.5) -> None:
        """The NAT of ``name`` rebinds: its WireGuard flow moves to a new external port.

        The router forgets its mappings and, for ``settle`` seconds (longer than the
        peers' keepalive), maps to ports 40000-40999; then the usual rule comes back
        without a flush, so the moved mapping stays, as after a NAT reboot.
        """
        kind = self.nats[name]
        router, wan_if = self.peers[name].router_ns, self.peers[name].wan_if
        run(["iptables", "-t", "nat", "-F"], ns=router)
        run(
            [
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan_if,
                "-p",
                "udp",
                "-j",
                "MASQUERADE",
                "--to-ports",
                "40000-40999",
            ],
            ns=router,
        )
        self.flush_conntrack(name)
        time.sleep(settle)
        self.set_nat(name, kind, flush="none")

    def start_miniupnpd(self: Topology, name: str, *, upnp: bool = True) -> None:
        """Run miniupnpd (UPnP IGD unless ``upnp`` is False, NAT-PMP and PCP) on ``name``'s router.

        Debian's miniupnpd does not create its nft table and its init script is broken,
        so the table is made here; the router's iptables FORWARD drop of NEW inbound
        packets must let DNAT'd ones (the mappings) through.
        """
        peer = self.peers[name]
        router = peer.router_ns
        if self.internet_net.startswith(("203.0.113", "198.51.100", "192.0.2", "10.", "192.168.")):
            raise TopologyError("miniupnpd refuses reserved ranges: build with internet_net='198.51.99'")
        table = f"{self.prefix}upnp"
        nft = self.workdir / f"nft-{name}.conf"
        nft.write_text(
            f"table inet {table} {{\n"
            "  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n"
            "  chain miniupnpd { }\n"
            "  chain prerouting { type nat hook prerouting priority -100; policy accept; "
            "jump prerouting_miniupnpd; }\n"
            "  chain postrouting { type nat hook postrouting priority 100; policy accept; "
            "jump postrouting_miniupnpd; }\n"
            "  chain prerouting_miniupnpd { }\n"
            "  chain postrouting_miniupnpd { }\n"
            "}\n"
        )
        run(["nft", "-f", str(nft)], ns=router)
        run(
            [
                "iptables",
                "-I",
                "FORWARD",
                "1",
                "-i",
                peer.wan_if,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "ACCEPT",
            ],
            ns=router,
        )
        lan_if = f"{self.prefix}b{peer.index}"
        lan_net = peer.lan_ip.rsplit(".", 1)[0]
        conf = self.workdir / f"miniupnpd-{name}.conf"
        conf.write_text(
            f"ext_ifname={peer.wan_if}\nlistening_ip={lan_if}\nenable_natpmp=yes\n"
            f"enable_upnp={'yes' if upnp else 'no'}\n"
            f"secure_mode=yes\nupnp_table_name={table}\nupnp_nat_table_name={table}\n"
            "uuid=3f1c0a9e-5b1d-4c3e-9a55-0123456789ab\n"
            f"allow 1024-65535 {lan_net}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
        )
        self.spawn(
            f"miniupnpd-{name}",
            ["miniupnpd", "-f", str(conf), "-P", str(self.workdir / f"miniupnpd-{name}.pid"), "-d"],
            ns=router,
            log=self.workdir / f"miniupnpd-{name}.log",
        )
        self._wait_udp_listening(router, 5351, what=f"miniupnpd on {name}'s router")

    def upnp_mappings(self: Topology, name: str) -> str:
        """The DNAT rules miniupnpd holds on ``name``'s router (empty when none)."""
        table = f"{self.prefix}upnp"
        out = run(
            ["nft", "list", "chain", "inet", table, "prerouting_miniupnpd"],
            ns=self.peers[name].router_ns,
            check=False,
        ).stdout
        return "\n".join(line.strip() for line in out.splitlines() if "dnat" in line)

    def block_direct(self: Topology, name: str, other: str, blocked: bool = True) -> None:
        """A firewall in ``name``'s router drops everything to and from ``other``'s router.

        Relayed traffic (to and from the TURN relays) still passes: only the direct path
        between the two peers dies. ``blocked=False`` removes the rules again.
        """
        router, wan_if = self.peers[name].router_ns, self.peers[name].wan_if
        other_ip = self.peers[other].wan_ip
        action = "-I" if blocked else "-D"
        for direction in (["-i", wan_if, "-s", other_ip], ["-o", wan_if, "-d", other_ip]):
            run(["iptables", action, "FORWARD", *direction, "-j", "DROP"], ns=router)

    # ---- helpers for tests -------------------------------------------------------------
