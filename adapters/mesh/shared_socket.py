"""Probes on WireGuard's own UDP port: raw-socket send, BPF-filtered raw-socket receive.

This module owns the transport of the "shared" data plane (NetBird's sharedsock design):
wireguard-go (or kernel WireGuard) keeps its public UDP port, and the agent still sends
and receives its path probes on that very port, so a probe opens and tests the NAT
mapping WireGuard's packets use.

- Sending: a ``SOCK_RAW``/``IPPROTO_UDP`` socket; the agent writes the UDP header itself
  with source port = WireGuard's port (the kernel writes the IP header). The checksum is
  0, which IPv4 allows ("no checksum"); NATs keep a zero checksum zero.
- Receiving: a second raw socket gets a copy of every UDP datagram the host receives,
  but a classic BPF program attached with ``SO_ATTACH_FILTER`` passes only datagrams to
  WireGuard's port whose payload starts with the probe magic (``probes.MAGIC``) and that
  are not fragments. Everything else is dropped in the kernel, so WireGuard's data never
  reaches Python: that is what keeps throughput at plain WireGuard's.
- WireGuard receives its own copy of each probe and drops it (its first byte, 0x4e, is
  no WireGuard message type).
- IPv4 only: an IPv6 raw socket does not hand over the IP header and BPF offsets differ;
  IPv6 candidates are not probed in this mode (``send`` refuses them).

Needs CAP_NET_RAW (the agent runs as root to drive WireGuard anyway).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct

from natrelay.adapters.mesh import probes as pr

Addr = tuple[str, int]

SO_ATTACH_FILTER = 26
UDP_HEADER = 8

# Classic BPF opcodes (linux/filter.h).
_LD, _LDX, _JMP, _RET = 0x00, 0x01, 0x05, 0x06
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MSH = 0x20, 0x40, 0xA0
_JEQ, _JSET, _K = 0x10, 0x40, 0x00

BpfInsn = tuple[int, int, int, int]


def probe_filter(port: int, magic: bytes = pr.MAGIC) -> list[BpfInsn]:
    """The BPF program: accept IPv4 UDP to ``port`` whose payload starts with ``magic`` (6 bytes).

    The socket sees the IP header at offset 0; ``ldxb 4*([0]&0xf)`` loads its length.
    """
    if len(magic) != 6:
        raise ValueError("the probe magic is 6 bytes")
    head = int.from_bytes(magic[:4], "big")
    tail = int.from_bytes(magic[4:6], "big")
    drop = 12  # index of "ret #0"
    prog: list[BpfInsn] = [
        (_LD | _B | _ABS, 0, 0, 9),  # 0: A = ip protocol
        (_JMP | _JEQ | _K, 0, 0, 17),  # 1: UDP?            (jf patched below)
        (_LD | _H | _ABS, 0, 0, 6),  # 2: A = flags + fragment offset
        (_JMP | _JSET | _K, 0, 0, 0x1FFF),  # 3: a later fragment? drop
        (_LDX | _B | _MSH, 0, 0, 0),  # 4: X = ip header length
        (_LD | _H | _IND, 0, 0, 2),  # 5: A = udp destination port
        (_JMP | _JEQ | _K, 0, 0, port),  # 6
        (_LD | _W | _IND, 0, 0, UDP_HEADER),  # 7: A = payload[0:4]
        (_JMP | _JEQ | _K, 0, 0, head),  # 8
        (_LD | _H | _IND, 0, 0, UDP_HEADER + 4),  # 9: A = payload[4:6]
        (_JMP | _JEQ | _K, 0, 0, tail),  # 10
        (_RET | _K, 0, 0, 0x40000),  # 11: accept (whole packet)
        (_RET | _K, 0, 0, 0),  # 12: drop
    ]
    out: list[BpfInsn] = []
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == _JMP | _JEQ | _K:
            jf = drop - i - 1
        elif code == _JMP | _JSET | _K:
            jt = drop - i - 1
        out.append((code, jt, jf, k))
    return out


def attach_filter(sock: socket.socket, program: list[BpfInsn]) -> None:
    """``SO_ATTACH_FILTER`` with a ``struct sock_fprog`` built here (the kernel copies it)."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def udp_checksum(src_ip: str, dst_ip: str, segment: bytes) -> int:
    """The UDP checksum over the IPv4 pseudo-header and ``segment`` (header with checksum 0)."""
    pseudo = (
        ipaddress.IPv4Address(src_ip).packed
        + ipaddress.IPv4Address(dst_ip).packed
        + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(segment))
    )
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    return checksum or 0xFFFF  # 0 means "none": a computed 0 is sent as 0xffff


def build_udp(
    src_port: int, dst_port: int, payload: bytes, src_ip: str | None = None, dst_ip: str | None = None
) -> bytes:
    """A UDP header and ``payload``; the checksum is computed when both addresses are given, else 0."""
    length = UDP_HEADER + len(payload)
    if length > 0xFFFF:
        raise ValueError("UDP payload too large")
    segment = struct.pack("!HHHH", src_port, dst_port, length, 0) + payload
    if src_ip is None or dst_ip is None:
        return segment
    return segment[:6] + struct.pack("!H", udp_checksum(src_ip, dst_ip, segment)) + segment[8:]


def parse_ipv4_udp(packet: bytes) -> tuple[Addr, int, bytes] | None:
    """(source address, destination port, payload) of an IPv4 UDP packet; None when malformed."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + UDP_HEADER or packet[9] != socket.IPPROTO_UDP:
        return None
    src_port, dst_port, length, _ = struct.unpack("!HHHH", packet[ihl : ihl + UDP_HEADER])
    if length < UDP_HEADER or ihl + length > len(packet):
        return None
    src = socket.inet_ntoa(packet[12:16])
    return (src, src_port), dst_port, packet[ihl + UDP_HEADER : ihl + length]


class RawProbeSocket:
    """Send UDP from ``port`` and receive the probes sent to it, beside whoever owns the port."""

    def __init__(self, port: int, magic: bytes = pr.MAGIC) -> None:
        self.port = port
        # One socket both ways: the filter acts on what it receives, never on what it sends.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            attach_filter(self.sock, probe_filter(port, magic))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        # Datagrams queued between socket() and the filter passed no filter: drop them.
        self.drain()

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                self.sock.recv(65535)

    def send(self, payload: bytes, addr: Addr) -> None:
        """One datagram from our ``port`` to ``addr`` (IPv4); ``OSError`` as ``sendto``."""
        ip = ipaddress.ip_address(addr[0])
        if ip.version != 4:
            raise OSError(97, f"raw probes are IPv4 only, not {addr[0]}")  # EAFNOSUPPORT
        self.sock.sendto(build_udp(self.port, addr[1], payload), (str(ip), 0))

    def receive(self, limit: int = 64) -> list[tuple[bytes, Addr]]:
        """Up to ``limit`` probes waiting: (payload, source address)."""
        got: list[tuple[bytes, Addr]] = []
        for _ in range(limit):
            try:
                packet = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            parsed = parse_ipv4_udp(packet)
            if parsed is None or parsed[1] != self.port:
                continue
            got.append((parsed[2], parsed[0]))
        return got

    def close(self) -> None:
        self.sock.close()
