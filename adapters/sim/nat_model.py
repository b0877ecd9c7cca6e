"""The NAT model of the simulator, after RFC 4787, and the hole-punching truth it implies.

Owns what a NAT does to UDP: how it maps an inside endpoint to a public one
(no translation, endpoint-independent, endpoint-dependent), which inbound
packets its filter admits (open, endpoint-independent, address-dependent,
address-and-port-dependent), hairpinning, mapping timeouts, and the two
firewalls (a stateful one that drops unsolicited UDP, and one that blocks UDP
altogether so only a relay over TCP/TLS gets through).

Whether a direct WireGuard path between two hosts exists is not a table typed
in by hand: `punch` replays the packets of a hole punch through two `NatBox`
objects — both agents learn each other's server-reflexive endpoint from the
coordination server, both send, and WireGuard roams to the source of the first
authenticated packet it receives. The path exists when both sides received a
packet from the other. Results are cached per (behaviour, behaviour, target).

This module never schedules anything and never reads a clock.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import attrs

Mapping = Literal["none", "endpoint_independent", "endpoint_dependent"]
Filtering = Literal["open", "endpoint_independent", "address_dependent", "address_port_dependent"]
#: What the local agent points WireGuard at: the peer's server-reflexive endpoint, or an
#: endpoint that no longer maps to the peer (stale).
Target = Literal["reflexive", "stale"]
Addr = tuple[str, int]

SERVER: Addr = ("198.51.100.1", 3478)
#: Where a stale candidate points: an address the peer no longer has.
STALE_HOST = "192.0.2.77"


@attrs.frozen
class NatBehaviour:
    """One NAT (or firewall) as RFC 4787 describes it."""

    #: none: no translation (a public host or a firewall); the others after RFC 4787 section 4.1.
    mapping: Mapping = "endpoint_independent"
    #: RFC 4787 section 5: which unsolicited inbound packets a mapping admits.
    filtering: Filtering = "address_port_dependent"
    #: A packet from inside to the NAT's own public endpoint loops back in (RFC 4787 section 6).
    hairpinning: bool = False
    #: An idle mapping is forgotten after this long (RFC 4787 REQ-5 asks for >= 2 min).
    mapping_timeout_ms: int = 120_000
    #: All UDP is dropped; only a relay reached over TCP/TLS works.
    udp_blocked: bool = False


#: The named behaviours a scenario may use.
NAT_TYPES: dict[str, NatBehaviour] = {
    "none": NatBehaviour(mapping="none", filtering="open"),
    "full_cone": NatBehaviour(filtering="endpoint_independent"),
    "restricted_cone": NatBehaviour(filtering="address_dependent"),
    "port_restricted_cone": NatBehaviour(filtering="address_port_dependent"),
    "symmetric": NatBehaviour(mapping="endpoint_dependent", filtering="address_port_dependent"),
    "firewall": NatBehaviour(mapping="none", filtering="address_port_dependent"),
    "udp_blocked": NatBehaviour(mapping="none", filtering="address_port_dependent", udp_blocked=True),
}


class NatBox:
    """A NAT with its live mappings and filter state, for replaying a hole punch packet by packet."""

    __slots__ = ("_next_port", "behaviour", "inside_port", "mappings", "pinholes", "public_ip")

    def __init__(self, behaviour: NatBehaviour, public_ip: str, inside_port: int = 51820) -> None:
        self.behaviour = behaviour
        self.public_ip = public_ip
        self.inside_port = inside_port
        #: destination (or None when the mapping ignores it) -> public port.
        self.mappings: dict[Addr | None, int] = {}
        #: (public port, remote address, remote port) this NAT sent to.
        self.pinholes: set[tuple[int, str, int]] = set()
        self._next_port = 40000

    def outbound(self, destination: Addr) -> Addr | None:
        """Send from the inside host to `destination`; the packet's public source, or None if dropped."""
        behaviour = self.behaviour
        if behaviour.udp_blocked:
            return None
        if behaviour.mapping == "none":
            port = self.inside_port
        else:
            key = None if behaviour.mapping == "endpoint_independent" else destination
            mapped = self.mappings.get(key)
            if mapped is None:
                self._next_port += 1
                mapped = self.mappings[key] = self._next_port
            port = mapped
        self.pinholes.add((port, destination[0], destination[1]))
        return (self.public_ip, port)

    def admits(self, port: int, source: Addr) -> bool:
        """Does a packet from `source` to our public `port` reach the inside host?"""
        behaviour = self.behaviour
        if behaviour.udp_blocked:
            return False
        if behaviour.mapping == "none":
            if port != self.inside_port:
                return False
        elif port not in self.mappings.values():
            return False
        filtering = behaviour.filtering
        if filtering in ("open", "endpoint_independent"):
            return True
        if filtering == "address_dependent":
            return any(p == port and ip == source[0] for p, ip, _ in self.pinholes)
        return (port, source[0], source[1]) in self.pinholes


@attrs.frozen
class PunchResult:
    """The outcome of a hole punch, from the local side."""

    works: bool
    #: Where the local WireGuard ends up sending: "reflexive" (the peer's server-reflexive
    #: endpoint) or "dedicated" (a mapping the peer's NAT made for us alone: a symmetric peer).
    peer_endpoint: Literal["reflexive", "dedicated", ""] = ""


@cache
def punch(local: NatBehaviour, remote: NatBehaviour, target: Target = "reflexive") -> PunchResult:
    """Replay a WireGuard hole punch between a local host and a remote one on different NATs.

    Both agents first talk to the coordination server (creating their reflexive mappings).
    The local agent sends to `target`; the remote agent sends to the local reflexive
    endpoint. Whoever receives an authenticated packet roams to its source. Four rounds.
    """
    a = NatBox(local, "203.0.113.10")
    b = NatBox(remote, "203.0.113.20")
    reflexive_a = a.outbound(SERVER)
    reflexive_b = b.outbound(SERVER)
    if reflexive_a is None or reflexive_b is None:
        return PunchResult(False)
    # a stale endpoint is an address the peer had on another network: nobody answers there,
    # and our filter only knows that we sent to it (not to the peer's new address)
    to_b: Addr = reflexive_b if target == "reflexive" else (STALE_HOST, reflexive_b[1])
    to_a: Addr = reflexive_a
    got_a = got_b = False
    for _ in range(4):
        source = a.outbound(to_b)
        if source is not None and to_b[0] == b.public_ip and b.admits(to_b[1], source):
            got_b, to_a = True, source
        source = b.outbound(to_a)
        if source is not None and to_a[0] == a.public_ip and a.admits(to_a[1], source):
            got_a, to_b = True, source
    if not (got_a and got_b):
        return PunchResult(False)
    return PunchResult(True, "reflexive" if to_b == reflexive_b else "dedicated")


@cache
def hard_pairing(local: NatBehaviour, remote: NatBehaviour) -> bool:
    """A pair a plain punch cannot open but a birthday punch may (issue 16): UDP passes
    both ways, one side maps per destination (symmetric), and the punch fails."""
    if local.udp_blocked or remote.udp_blocked:
        return False
    symmetric = "endpoint_dependent" in (local.mapping, remote.mapping)
    return symmetric and not punch(local, remote).works


def hairpin_works(shared: NatBehaviour) -> bool:
    """Two hosts behind the same NAT reach each other's reflexive endpoint only by hairpinning."""
    return shared.hairpinning and not shared.udp_blocked and shared.mapping != "endpoint_dependent"


def roaming_survives(local: NatBehaviour) -> bool:
    """After the remote NAT rebinds (same address, new port), do its packets still reach us?

    Our filter saw packets go to the old port only: endpoint-independent and
    address-dependent filters admit the new port, an address-and-port-dependent one drops it.
    """
    if local.udp_blocked:
        return False
    return local.filtering in ("open", "endpoint_independent", "address_dependent")
