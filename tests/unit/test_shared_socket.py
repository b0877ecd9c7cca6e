"""The shared data plane's transport: the raw UDP header, the BPF filter on a real raw socket, liveness.

The socket tests run in a network namespace of their own (a forked child that unshares
its network namespace, loopback only): they need root (CAP_NET_RAW, CAP_SYS_ADMIN), as CI
has, and fail with a message otherwise.
"""

from __future__ import annotations

import ast
import base64
import ctypes
import os
import socket
import struct
import subprocess
import sys
import textwrap

import attrs
import pytest

from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.shared_plane import SharedPlane
from natrelay.adapters.mesh.shared_socket import build_udp, parse_ipv4_udp, probe_filter, udp_checksum
from natrelay.adapters.mesh.wg_counters import Uapi

SECRET = b"a mesh secret of enough bytes"
A = base64.b64encode(bytes([1]) * 32).decode()
B = base64.b64encode(bytes([2]) * 32).decode()


def _ones_sum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_udp_header_fields_and_checksum() -> None:
    payload = b"NRPRB\x01hello"
    plain = build_udp(51820, 3478, payload)
    assert struct.unpack("!HHHH", plain[:8]) == (51820, 3478, 8 + len(payload), 0)
    assert plain[8:] == payload
    summed = build_udp(51820, 3478, payload, "10.0.0.1", "10.0.0.2")
    assert summed[:6] == plain[:6] and summed[8:] == payload
    # The receiver's check: pseudo-header + segment (with its checksum) sums to 0xffff.
    pseudo = (
        socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + struct.pack("!BBH", 0, 17, len(summed))
    )
    assert _ones_sum(pseudo + summed) == 0xFFFF
    assert udp_checksum("10.0.0.1", "10.0.0.2", plain) == struct.unpack("!H", summed[6:8])[0]


def test_parse_ipv4_udp_reads_the_source_and_payload() -> None:
    segment = build_udp(40000, 51820, b"payload")
    header = bytes([0x45, 0, 0, 20 + len(segment), 0, 0, 0, 0, 64, 17, 0, 0])
    packet = header + socket.inet_aton("192.0.2.7") + socket.inet_aton("192.0.2.8") + segment
    assert parse_ipv4_udp(packet) == (("192.0.2.7", 40000), 51820, b"payload")
    assert parse_ipv4_udp(packet[:25]) is None  # truncated
    assert parse_ipv4_udp(packet[:9] + b"\x06" + packet[10:]) is None  # TCP


def test_the_filter_jumps_to_its_drop() -> None:
    prog = probe_filter(51820)
    drop = len(prog) - 1
    assert prog[drop] == (0x06, 0, 0, 0)
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # a jump: its failing branch must land on the drop
            assert i + 1 + (jf if code & 0xF0 == 0x10 else jt) == drop
    assert (0x15, 0, drop - 7, 51820) in prog  # jeq port


# ---- on a real raw socket, in a namespace of its own ---------------------------------------

_IN_NAMESPACE = textwrap.dedent(
    """
    import socket, sys, time
    from natrelay.adapters.mesh import probes as pr
    from natrelay.adapters.mesh.shared_socket import RawProbeSocket

    wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # plays WireGuard on its port
    wg.bind(("127.0.0.1", 0)); wg.settimeout(1)
    port = wg.getsockname()[1]
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # another port on the host
    other.bind(("127.0.0.1", 0)); other.settimeout(1)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # the remote side
    peer.bind(("127.0.0.1", 0)); peer.settimeout(1)
    raw = RawProbeSocket(port)
    probe = pr.MAGIC + b"probe body"
    peer.sendto(b"\\x04\\x00\\x00\\x00wireguard data", ("127.0.0.1", port))
    peer.sendto(b"NRPRB\\x02 almost the magic", ("127.0.0.1", port))
    peer.sendto(probe + b" to another port", ("127.0.0.1", other.getsockname()[1]))
    peer.sendto(probe, ("127.0.0.1", port))
    time.sleep(0.2)
    got = raw.receive()
    wg_got = [wg.recv(100) for _ in range(3)]
    raw.send(b"pong from the shared port", ("127.0.0.1", peer.getsockname()[1]))
    data, src = peer.recvfrom(100)
    print(repr((got, peer.getsockname(), wg_got, data, src, port)))
    """
)


def _run_in_namespace(script: str) -> str:
    """Run ``script`` in a forked child inside a new network namespace (loopback up)."""
    if os.geteuid() != 0:
        pytest.fail(
            "the raw-socket tests need root (CAP_NET_RAW, and unshare for a namespace)", pytrace=False
        )
    libc = ctypes.CDLL(None, use_errno=True)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            out = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
            )
            os.write(write, (out.stdout + out.stderr).encode())
            code = out.returncode
        except BaseException as exc:  # reported to the parent
            os.write(write, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_only_probes_to_the_port_pass_the_filter_and_probes_leave_from_the_port() -> None:
    got, peer_addr, wg_got, data, src, port = ast.literal_eval(_run_in_namespace(_IN_NAMESPACE))
    # The raw socket saw exactly the probe to WireGuard's port, with the sender's address.
    assert got == [(pr.MAGIC + b"probe body", tuple(peer_addr))]
    # WireGuard's own socket still got everything sent to it, the probe included.
    assert wg_got[0].startswith(b"\x04") and wg_got[2] == pr.MAGIC + b"probe body"
    # What the raw socket sends arrives from WireGuard's port.
    assert data == b"pong from the shared port" and src == ("127.0.0.1", port)


# ---- UAPI and liveness -----------------------------------------------------------------------


@attrs.frozen
class PeerCounters:
    """One peer's counters as a reading of WireGuard gives them."""

    rx_bytes: int
    tx_bytes: int
    endpoint: str | None


class _FakeRaw:
    def __init__(self, sent: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.sent = sent

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.sent.clear()


def _plane(sent: list[tuple[bytes, tuple[str, int]]], dead: list[str]) -> SharedPlane:
    plane = SharedPlane(
        me=A,
        secret=SECRET,
        public_port=51820,
        wireguard=None,
        uapi=Uapi("none"),
        on_dead=lambda p, s: dead.append(p),
    )
    plane.add_peer(B)
    plane._raw = _FakeRaw(sent)  # type: ignore[assignment]
    link = plane.link(B)
    assert link is not None
    link.direct = ("192.0.2.2", 51820)
    return plane


def test_an_active_direct_path_whose_rx_counter_stops_gets_heartbeats_then_is_dead() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    dead: list[str] = []
    plane = _plane(sent, dead)
    ep = "192.0.2.2:51820"
    t, rx, tx = 100.0, 0, 0
    for _ in range(10):  # 1 s of traffic both ways
        t, rx, tx = t + 0.1, rx + 500, tx + 500
        plane.check_liveness(t, {B: PeerCounters(rx, tx, ep)})
    assert not sent and not dead
    for _ in range(7):  # 0.7 s: sending, nothing received: no heartbeat yet
        t, tx = t + 0.1, tx + 500
        plane.check_liveness(t, {B: PeerCounters(rx, tx, ep)})
    assert not sent
    for _ in range(20):  # 2 s more
        t, tx = t + 0.1, tx + 500
        plane.check_liveness(t, {B: PeerCounters(rx, tx, ep)})
    pings = [pr.decode(d, pr.pair_key(SECRET, A, B)) for d, to in sent if to == ("192.0.2.2", 51820)]
    assert len(pings) >= 4 and all(p.kind == pr.PING for p in pings)
    assert dead == [B]


def test_bytes_received_while_wireguard_roamed_elsewhere_do_not_keep_the_direct_path_alive() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    dead: list[str] = []
    plane = _plane(sent, dead)
    t, rx, tx = 100.0, 0, 0
    plane.check_liveness(t, {B: PeerCounters(rx, tx, "192.0.2.2:51820")})
    for _ in range(30):  # traffic flows, but through the relay's loopback port
        t, rx, tx = t + 0.1, rx + 500, tx + 500
        plane.check_liveness(t, {B: PeerCounters(rx, tx, "127.0.0.1:40000")})
    assert dead == [B]


def test_an_idle_peer_gets_no_heartbeat() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    dead: list[str] = []
    plane = _plane(sent, dead)
    t, tx = 100.0, 0
    for _ in range(50):  # only keepalives (32 bytes a second)
        t += 0.1
        tx += 32 if round(t * 10) % 10 == 0 else 0
        plane.check_liveness(t, {B: PeerCounters(0, tx, "192.0.2.2:51820")})
    assert not sent and not dead


def test_counters_are_read_seldom_while_every_direct_peer_is_idle_and_often_once_traffic_flows() -> None:
    """An idle mesh must not wake the agent ten times a second (issue 18's idle goals)."""
    plane = _plane([], [])
    ep = "192.0.2.2:51820"
    t = 100.0
    plane.check_liveness(t, {B: PeerCounters(0, 0, ep)})
    plane._last_reading = t
    idle_due = plane.next_reading_at(t)
    assert idle_due == t + plane.idle_sample_every + plane.reading_slack
    t += 1.0
    plane.check_liveness(t, {B: PeerCounters(5_000, 5_000, ep)})  # data sent: active
    plane._last_reading = t
    assert plane.next_reading_at(t) == t + plane.sample_every
    later = t + plane.active_window + 0.1
    assert plane.next_reading_at(later) == t + plane.idle_sample_every + plane.reading_slack
    link = plane.link(B)
    assert link is not None
    link.direct = None  # relayed: nothing to read
    assert plane.next_reading_at(later) is None


@attrs.frozen
class _Reading:
    public_key: str
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None


class _CountingWireGuard:
    """The agent's WireGuard as the plane reads it: counts the plane's own readings."""

    def __init__(self) -> None:
        self.reads = 0
        self.tx = 0

    def show(self, only: object = None) -> object:
        self.reads += 1
        self.tx += 5_000  # traffic flows while the plane looks
        return _Status((_Reading(B, self.tx, self.tx, "192.0.2.2:51820"),))


@attrs.frozen
class _Status:
    peers: tuple[_Reading, ...]


def test_the_agents_shared_readings_spare_the_idle_plane_its_own_and_traffic_makes_it_read_fast() -> None:
    """Kills a plane that reads WireGuard beside the agent while idle (twice the idle cost),
    and one that never reads on its own (traffic on an idle path would go unwatched)."""
    import asyncio

    async def run() -> tuple[int, int]:
        wireguard = _CountingWireGuard()
        plane = _plane([], [])
        plane.wireguard = wireguard
        plane._loop = asyncio.get_running_loop()
        plane.idle_sample_every, plane.reading_slack, plane.sample_every = 0.05, 0.02, 0.01
        idle = [_Reading(B, 0, 0, "192.0.2.2:51820")]
        for _ in range(10):  # the agent reads every 0.05 s: the plane never needs to
            plane.take_reading(idle)
            await asyncio.sleep(0.05)
        own_while_shared = wireguard.reads
        plane.take_reading([_Reading(B, 0, 5_000, "192.0.2.2:51820")])  # data sent: active
        await asyncio.sleep(0.2)
        plane.close()
        return own_while_shared, wireguard.reads

    own_while_shared, own_total = asyncio.run(run())
    assert own_while_shared == 0
    assert own_total >= 5
