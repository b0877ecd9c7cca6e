"""Port mapping: ask the router to forward the public UDP port (UPnP IGD, PCP, NAT-PMP).

This module owns one mapping of this node's public port on its router:

1. UPnP IGD through the `miniupnpc` package (SSDP discovery, AddPortMapping with a lease);
2. PCP MAP (RFC 6887) to the default gateway, port 5351;
3. NAT-PMP (RFC 6886), the same port, for routers that speak only the older protocol.

The first that works gives the mapped endpoint (the router's external IP and the port it
assigned), published as a "mapped" candidate. The lease is renewed at half its life;
``delete`` removes it (the agent calls it on stop: the mapping is gone after the agent
stops). A router that answers nothing costs about 2 s once, then a retry every minute.
PCP and NAT-PMP messages are built and parsed by the pure functions below (tested without
a router); the packages found for NAT-PMP are unmaintained and none speaks PCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import subprocess
from collections.abc import Callable
from typing import Any

import attrs

log = logging.getLogger(__name__)

PMP_PORT = 5351
LEASE_S = 3600
RETRY_S = 60.0
UDP = 17


class MappingError(RuntimeError):
    """A router refused or did not answer; the message says which protocol and why."""


@attrs.frozen
class Mapping:
    protocol: str  # "upnp" | "pcp" | "natpmp"
    external_ip: str
    external_port: int
    lifetime: int
    #: PCP: the nonce to renew or delete with.
    nonce: bytes = b""

    @property
    def endpoint(self) -> str:
        return f"{self.external_ip}:{self.external_port}"


# ---- NAT-PMP (RFC 6886) ------------------------------------------------------------------


def natpmp_address_request() -> bytes:
    return struct.pack("!BB", 0, 0)


def natpmp_parse_address(data: bytes) -> str:
    if len(data) < 12:
        raise MappingError("NAT-PMP: short external address response")
    version, opcode, result = struct.unpack("!BBH", data[:4])
    if version != 0 or opcode != 128 or result != 0:
        raise MappingError(f"NAT-PMP: external address refused (result {result})")
    return str(ipaddress.IPv4Address(data[8:12]))


def natpmp_map_request(internal: int, external: int, lifetime: int) -> bytes:
    return struct.pack("!BBHHHI", 0, 1, 0, internal, external, lifetime)


def natpmp_parse_map(data: bytes, internal: int) -> tuple[int, int]:
    """(assigned external port, lifetime) from a UDP map response."""
    if len(data) < 16:
        raise MappingError("NAT-PMP: short map response")
    version, opcode, result, _epoch, port_in, port_out, lifetime = struct.unpack("!BBHIHHI", data[:16])
    if version != 0 or opcode != 129:
        raise MappingError(f"NAT-PMP: unexpected response (version {version}, opcode {opcode})")
    if result != 0:
        raise MappingError(f"NAT-PMP: map refused (result {result})")
    if port_in != internal:
        raise MappingError(f"NAT-PMP: response for port {port_in}, asked {internal}")
    return port_out, lifetime


# ---- PCP (RFC 6887) ----------------------------------------------------------------------


def _ip16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def pcp_map_request(client_ip: str, internal: int, external: int, lifetime: int, nonce: bytes) -> bytes:
    header = struct.pack("!BBHI", 2, 1, 0, lifetime) + _ip16(client_ip)
    body = nonce + struct.pack("!B3xHH", UDP, internal, external) + _ip16("0.0.0.0")
    return header + body


def pcp_parse_map(data: bytes, nonce: bytes, internal: int) -> tuple[str, int, int]:
    """(external ip, external port, lifetime) from a MAP response."""
    if len(data) < 60:
        raise MappingError("PCP: short response")
    version, opcode, result, lifetime = struct.unpack("!BBxBI", data[:8])
    if version != 2:
        raise MappingError(f"PCP: version {version} (the router speaks NAT-PMP only?)")
    if opcode != 0x81:
        raise MappingError(f"PCP: unexpected opcode {opcode:#x}")
    if result != 0:
        raise MappingError(f"PCP: map refused (result {result})")
    body = data[24:60]
    if body[:12] != nonce:
        raise MappingError("PCP: response nonce does not match")
    protocol, port_in, port_out = struct.unpack("!B3xHH", body[12:20])
    if protocol != UDP or port_in != internal:
        raise MappingError("PCP: response for another mapping")
    ip = ipaddress.IPv6Address(body[20:36])
    external = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    return external, port_out, lifetime


# ---- transport ---------------------------------------------------------------------------


def default_gateway() -> tuple[str, str] | None:
    """(gateway, our source address toward it) from the routing table, or None."""
    try:
        out = subprocess.run(
            ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if "via" not in out or "src" not in out:
        return None
    return out[out.index("via") + 1], out[out.index("src") + 1]


def _exchange(gateway: str, request: bytes, tries: int = 2, timeout: float = 0.5) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for _ in range(tries):
            sock.sendto(request, (gateway, PMP_PORT))
            try:
                data, addr = sock.recvfrom(1100)
            except TimeoutError:
                continue
            if addr[0] == gateway:
                return data
    raise MappingError(f"no answer from {gateway}:{PMP_PORT}")


@attrs.define
class PortMapper:
    """Keeps one mapping of ``internal_port`` alive while running."""

    internal_port: int
    on_change: Callable[[], None] | None = None
    lease: int = LEASE_S
    mapping: Mapping | None = None
    _upnp: Any = None
    _stopped: bool = False

    @property
    def external(self) -> str | None:
        return None if self.mapping is None else self.mapping.endpoint

    async def run(self) -> None:
        while not self._stopped:
            try:
                mapping = await asyncio.to_thread(self.map_once)
            except MappingError as exc:
                log.info("no port mapping: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            changed = self.mapping is None or self.mapping.endpoint != mapping.endpoint
            self.mapping = mapping
            if changed:
                log.info(
                    "port mapping by %s: %s -> port %d (lease %d s)",
                    mapping.protocol,
                    mapping.endpoint,
                    self.internal_port,
                    mapping.lifetime,
                )
                if self.on_change is not None:
                    self.on_change()
            await asyncio.sleep(max(30.0, mapping.lifetime / 2))

    def stop(self) -> None:
        self._stopped = True

    def map_once(self) -> Mapping:
        """Map (or renew) with the first protocol that works."""
        errors = []
        order = [self._map_upnp, self._map_pcp, self._map_natpmp]
        if self.mapping is not None:  # renew with the protocol that worked
            first = {"upnp": 0, "pcp": 1, "natpmp": 2}[self.mapping.protocol]
            order.insert(0, order.pop(first))
        for attempt in order:
            try:
                return attempt()
            except MappingError as exc:
                errors.append(str(exc))
            except Exception as exc:  # miniupnpc raises plain Exceptions with a message
                errors.append(f"{attempt.__name__[5:]}: {exc}")
        raise MappingError("; ".join(errors))

    def _map_upnp(self) -> Mapping:
        try:
            import miniupnpc
        except ImportError:
            raise MappingError("UPnP: the miniupnpc package is not installed") from None
        upnp = self._upnp
        if upnp is None:
            upnp = miniupnpc.UPnP()
            upnp.discoverdelay = 500
            if upnp.discover() == 0:
                raise MappingError("UPnP: no IGD answered the discovery")
            upnp.selectigd()
            self._upnp = upnp
        external_ip = upnp.externalipaddress()
        port = self.internal_port
        upnp.addportmapping(port, "UDP", upnp.lanaddr, port, "natrelay", "", self.lease)
        return Mapping("upnp", external_ip, port, self.lease)

    def _map_pcp(self) -> Mapping:
        route = default_gateway()
        if route is None:
            raise MappingError("PCP: no default gateway")
        gateway, source = route
        nonce = self.mapping.nonce if self.mapping and self.mapping.nonce else secrets.token_bytes(12)
        port = self.internal_port
        data = _exchange(gateway, pcp_map_request(source, port, port, self.lease, nonce))
        ip, external, lifetime = pcp_parse_map(data, nonce, port)
        return Mapping("pcp", ip, external, lifetime, nonce)

    def _map_natpmp(self) -> Mapping:
        route = default_gateway()
        if route is None:
            raise MappingError("NAT-PMP: no default gateway")
        gateway = route[0]
        ip = natpmp_parse_address(_exchange(gateway, natpmp_address_request()))
        port = self.internal_port
        data = _exchange(gateway, natpmp_map_request(port, port, self.lease))
        external, lifetime = natpmp_parse_map(data, port)
        return Mapping("natpmp", ip, external, lifetime)

    async def delete(self) -> None:
        """Remove the mapping from the router (best effort, bounded)."""
        self._stopped = True
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(self._delete, mapping), 3.0)
            log.info("port mapping %s by %s deleted", mapping.endpoint, mapping.protocol)

    def _delete(self, mapping: Mapping) -> None:
        port = self.internal_port
        if mapping.protocol == "upnp" and self._upnp is not None:
            self._upnp.deleteportmapping(mapping.external_port, "UDP")
            return
        route = default_gateway()
        if route is None:
            return
        if mapping.protocol == "pcp":
            _exchange(route[0], pcp_map_request(route[1], port, mapping.external_port, 0, mapping.nonce))
        else:
            _exchange(route[0], natpmp_map_request(port, 0, 0))
