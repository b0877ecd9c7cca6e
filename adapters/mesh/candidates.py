"""This node's candidate endpoints and their kinds: host, mapped, reflexive (relayed ones are TURN's).

This module owns finding the addresses a peer may reach this node at, before anything is
published:

- host: every IPv4 address of every interface that is up, except loopback, link-local
  and the WireGuard interface itself (tunnel addresses must never carry the tunnel),
  with the public port: peers on the same LAN reach each other over it, without
  hairpinning through their router;
- mapped: the endpoint a port-mapping protocol (UPnP IGD, NAT-PMP, PCP) gave us
  (``port_mapping``);
- reflexive: the public IP a STUN server sees, with the public port (right for
  port-preserving NATs);
- configured: endpoints the config file names.

Kinds are published beside the endpoints so that logs and ``explain`` say which kind a
path is. Addresses are read over rtnetlink (no fork: the agent forks nothing in steady
state); a failure yields no host candidates, logged, never an exception.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from typing import Literal

log = logging.getLogger(__name__)

CandidateKind = Literal["host", "mapped", "reflexive", "configured", "relayed"]
#: Probe order when several are published: the LAN first, then what a router promised.
KIND_ORDER: tuple[CandidateKind, ...] = ("host", "mapped", "reflexive", "configured")


def host_addresses(exclude_interfaces: tuple[str, ...] = ()) -> list[str]:
    """IPv4 addresses of interfaces that are up (no loopback, link-local or excluded ones).

    Read from the kernel over rtnetlink (RTM_GETADDR), without forking: the agent forks
    nothing in steady state, and a local address change re-reads this.
    """
    try:
        pairs = _netlink_ipv4_addresses()
    except OSError as exc:
        log.warning("cannot list interface addresses (no host candidates): %s", exc)
        return []
    return usable_addresses(pairs, exclude_interfaces)


def usable_addresses(pairs: list[tuple[str, str]], exclude_interfaces: tuple[str, ...] = ()) -> list[str]:
    """The usable addresses among (interface, address) pairs (pure; tested without a network)."""
    found = []
    for ifname, address in pairs:
        if ifname in exclude_interfaces:
            continue
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        found.append(str(ip))
    return found


_RTM_GETADDR, _NLMSG_DONE, _NLMSG_ERROR = 22, 3, 2
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_IFA_LOCAL, _IFA_ADDRESS = 2, 1
_IFF_UP = 0x1
_SIOCGIFFLAGS = 0x8913


def _netlink_ipv4_addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) of every interface that is up, from one RTM_GETADDR dump."""
    pairs: list[tuple[str, str]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(2.0)
        request = struct.pack("=IHHII", 16 + 8, _RTM_GETADDR, _NLM_F_REQUEST_DUMP, 1, 0)
        nl.send(request + struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0))
        done = False
        while not done:
            data = nl.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind == _NLMSG_DONE:
                    done = True
                elif kind == _NLMSG_ERROR:
                    raise OSError("rtnetlink refused the address dump")
                elif kind == _RTM_GETADDR - 2:  # RTM_NEWADDR
                    pairs.extend(_address_of(data[offset + 16 : offset + length]))
                offset += (length + 3) & ~3
    return [(name, address) for name, address in pairs if _is_up(name)]


def _address_of(message: bytes) -> list[tuple[str, str]]:
    family, _prefix, _flags, _scope, index = struct.unpack_from("=BBBBI", message)
    if family != socket.AF_INET:
        return []
    found: dict[int, str] = {}
    offset = 8
    while offset + 4 <= len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        if length < 4:
            break
        if kind in (_IFA_LOCAL, _IFA_ADDRESS) and length >= 8:
            found[kind] = socket.inet_ntoa(message[offset + 4 : offset + 8])
        offset += (length + 3) & ~3
    address = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
    if address is None:
        return []
    try:
        return [(socket.if_indextoname(index), address)]
    except OSError:
        return []


def _is_up(ifname: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(
                probe.fileno(), _SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode()[:15], 0)
            )
        except OSError:
            return False
    return bool(struct.unpack_from("16sH", answer)[1] & _IFF_UP)


def ordered(kinds: dict[str, CandidateKind]) -> tuple[str, ...]:
    """Endpoints by kind (host, mapped, reflexive, configured), each kind in insertion order."""
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    return tuple(sorted(kinds, key=lambda e: rank.get(kinds[e], len(rank))))


def stun_public_ip(host: str, port: int, timeout: float = 1.0) -> str | None:
    """This host's public IP as a STUN server sees it (a Binding request, no credentials)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        mapped = stun_mapped(sock, host, port, timeout)
    return mapped[0] if mapped else None


def stun_mapped(sock: socket.socket, host: str, port: int, timeout: float = 1.0) -> tuple[str, int] | None:
    """The address a STUN server saw ``sock``'s Binding request come from (None: no answer)."""
    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    sock.settimeout(timeout)
    try:
        sock.sendto(bytes(request), (host, port))
        while True:
            data, _ = sock.recvfrom(2048)
            response = stun.parse_message(data)
            if response.transaction_id == request.transaction_id:
                break
    except (OSError, ValueError):
        return None
    mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
    return (str(mapped[0]), int(mapped[1])) if mapped else None


def nat_type_of(local: tuple[str, int], first: tuple[str, int] | None, second: tuple[str, int] | None) -> str:
    """This node's NAT behaviour from one socket's mapped addresses at two STUN servers (pure).

    - no answer from either: ``unknown`` (the servers may be down; UDP is not proven blocked);
    - the servers saw the socket's own address: ``none``;
    - two different public ports: ``symmetric`` (a mapping per destination, RFC 4787
      endpoint-dependent mapping: a plain hole punch cannot predict it);
    - the same public port: an endpoint-independent mapping. How it filters needs a server
      that answers from another address (RFC 5780), which a TURN relay does not; the agent
      assumes ``port_restricted_cone``, the strictest cone and the most common.
    """
    if first is None and second is None:
        return "unknown"
    if first is None or second is None:
        seen = first or second
        return "none" if seen == local else "unknown"
    if first == local and second == local:
        return "none"
    return "symmetric" if first != second else "port_restricted_cone"


def classify_nat(servers: list[tuple[str, int]]) -> str:
    """Ask two STUN servers from one fresh socket and name this node's NAT (``nat_type_of``)."""
    if len(servers) < 2:
        return "unknown"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        first = stun_mapped(sock, *servers[0])
        second = stun_mapped(sock, *servers[1])
        port = sock.getsockname()[1]
    seen = first or second
    # Seen from an address of our own: no NAT in between (then the port is ours too).
    local_ip = seen[0] if seen is not None and seen[0] in host_addresses() else ""
    return nat_type_of((local_ip, port), first, second)
