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
path is. Reading addresses runs ``ip -j -4 addr`` (iproute2, a prerequisite of the agent
already); a failure yields no host candidates, logged, never an exception.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from typing import Literal

log = logging.getLogger(__name__)

CandidateKind = Literal["host", "mapped", "reflexive", "configured", "relayed"]
#: Probe order when several are published: the LAN first, then what a router promised.
KIND_ORDER: tuple[CandidateKind, ...] = ("host", "mapped", "reflexive", "configured")


def host_addresses(exclude_interfaces: tuple[str, ...] = ()) -> list[str]:
    """IPv4 addresses of interfaces that are up (no loopback, link-local or excluded ones)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "up"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        interfaces = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot list interface addresses (no host candidates): %s", exc)
        return []
    return addresses_from_ip_json(interfaces, exclude_interfaces)


def addresses_from_ip_json(interfaces: list[dict], exclude_interfaces: tuple[str, ...] = ()) -> list[str]:
    """The usable addresses in `ip -j addr` output (pure; tested without a network)."""
    found = []
    for iface in interfaces:
        if iface.get("ifname") in exclude_interfaces:
            continue
        for info in iface.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            try:
                ip = ipaddress.IPv4Address(info.get("local", ""))
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            found.append(str(ip))
    return found


def ordered(kinds: dict[str, CandidateKind]) -> tuple[str, ...]:
    """Endpoints by kind (host, mapped, reflexive, configured), each kind in insertion order."""
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    return tuple(sorted(kinds, key=lambda e: rank.get(kinds[e], len(rank))))


def stun_public_ip(host: str, port: int, timeout: float = 1.0) -> str | None:
    """This host's public IP as a STUN server sees it (a Binding request, no credentials)."""
    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(bytes(request), (host, port))
            data, _ = sock.recvfrom(2048)
            response = stun.parse_message(data)
        except (OSError, ValueError):
            return None
    mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
    return mapped[0] if mapped else None
