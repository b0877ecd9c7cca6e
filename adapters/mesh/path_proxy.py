"""The path proxy: the agent owns WireGuard's public UDP port and carries its packets.

This module owns the data plane between wireguard-go and the network:

    wireguard (127.0.0.1:<wg port>) ──► 127.0.0.1:<peer's link port> ──► direct: public socket ─► peer
                                                                     └─► relay: TURN session ─► peer
    peer ─► public socket (0.0.0.0:<public port>) ─┬─ probe?  answered here, never seen by WireGuard
                                                    └─ else ─► the peer's link port ─► wireguard
    TURN session ─► sink ─┬─ probe (CALL)? handled here
                          └─ else ─► the peer's link port ─► wireguard

Used in ``data_plane = "proxy"`` (the default is ``shared``, docs/real-mesh.md). Each peer is
configured in WireGuard once, with its link port as endpoint, which never changes again:
switching paths and probing candidates happen here, so the live path is never taken away
(as in Tailscale's magicsock and NetBird's wgproxy).

Rules of this module:

- Inbound packets are accepted from every path the peer is known on (its direct
  addresses confirmed by probes, every TURN session bound to it), whichever path is
  selected for sending: the two peers may switch at different moments without loss.
- A direct address is bound to a peer only by an authenticated probe from or to it
  (``probes``): a forged or replayed answer binds nothing and redirects nothing.
- Probes leave from the public socket, so the NAT mapping they open and test is the one
  WireGuard's packets use.
- While WireGuard sends data to a peer over a direct path (``active``: a transport
  packet larger than a keepalive within ``active_window`` s) and nothing came back for
  ``heartbeat_after`` s, the proxy pings the path every ``heartbeat_every`` s; nothing
  back for ``dead_after`` s reports the path dead (``on_dead``). Idle peers get no
  heartbeats: their dead paths show in WireGuard's handshake age, as before.
- Handshake messages sent while the peer has no path are held (the last four, for 4 s)
  and sent once a path is set; only the node with the larger public key sends a held
  initiation (two crossing ones both wait for WireGuard's 5 s retry).
- No decisions: the path comes from the engine through the agent (``use_direct``,
  ``use_relay``); what is observed goes out through the callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from natrelay.adapters import liveness as lv
from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.probing import Addr, Probing

log = logging.getLogger(__name__)

#: WireGuard message types (first byte, little-endian u32 with three zero bytes).
WG_INITIATION, WG_TRANSPORT = 1, 4
#: A transport packet carrying nothing (a keepalive) is 32 bytes.
KEEPALIVE_LEN = 32
HOLD_INITIATION_S = 4.0
HOLD_MAX = 4
SWITCH_INTERVAL_S = 0.0005
_RECV_BATCH = 64


#: Socket buffers: the event loop can be busy for milliseconds (a database write), and
#: at a few hundred Mbit/s the kernel's default 208 KiB fills in less than that.
SOCKET_BUFFER = 8 * 1024 * 1024


def _big_buffers(sock: socket.socket) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # not root: as much as net.core.[rw]mem_max allows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def fmt(addr: Addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def parse_addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@attrs.define(eq=False)
class PeerLink:
    """One peer's slice of the proxy."""

    peer: str
    sock: socket.socket
    direct: Addr | None = None
    relay: Any = None  # a TurnSession with .send(data) and .server.relay_id
    last_rx_direct: float = 0.0
    last_tx_data: float = 0.0
    last_heartbeat: float = 0.0
    dead_reported: bool = False
    #: What WireGuard sent while the peer had no path (sent once one is set).
    held: list[tuple[bytes, float]] = attrs.field(factory=list)
    tx_direct: int = 0
    tx_relay: int = 0
    rx_direct: int = 0
    rx_relay: int = 0
    dropped: int = 0

    @property
    def endpoint(self) -> str:
        return fmt(self.sock.getsockname())

    def path(self) -> tuple[str, str] | None:
        if self.direct is not None:
            return ("direct", fmt(self.direct))
        if self.relay is not None:
            return ("relay", self.relay.server.relay_id)
        return None


@attrs.define(eq=False)
class PathProxy(Probing):
    """The agent's data plane for one WireGuard interface."""

    me: str
    secret: bytes
    public_port: int
    wg_port: int
    #: (peer, address, round trip s, the address the peer saw us at) on a probe answered.
    on_answer: Callable[[str, Addr, float, Addr | None], None] | None = None
    #: (peer, silent s) when an active direct path stopped answering.
    on_dead: Callable[[str, float], None] | None = None
    #: (peer) when the peer asks through the relay to be probed back now.
    on_call: Callable[[str], None] | None = None
    bind_host: str = "0.0.0.0"
    active_window: float = lv.ACTIVE_WINDOW_S
    heartbeat_after: float = lv.HEARTBEAT_AFTER_S
    heartbeat_every: float = lv.HEARTBEAT_EVERY_S
    dead_after: float = lv.DEAD_AFTER_S
    probe_every: float = lv.PROBE_EVERY_S

    _loop: asyncio.AbstractEventLoop | None = None
    _public: socket.socket | None = None
    _links: dict[str, PeerLink] = attrs.field(factory=dict)
    _by_fd: dict[int, PeerLink] = attrs.field(factory=dict)
    _addr_peer: dict[Addr, str] = attrs.field(factory=dict)
    _keys: dict[str, bytes] = attrs.field(factory=dict)
    _pending: pr.PendingPings = attrs.field(factory=pr.PendingPings)
    _probing: dict[tuple[str, Addr], float] = attrs.field(factory=dict)
    #: (peer, address) -> when a pong from there last answered one of our pings.
    _confirmed: dict[tuple[str, Addr], float] = attrs.field(factory=dict)
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    _epoll: Any = None
    _thread: threading.Thread | None = None
    rejected_probes: int = 0
    closed: bool = False

    def start(self) -> None:
        """Bind the public port and start the heartbeat (inside a running event loop)."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _big_buffers(sock)
        try:
            sock.bind((self.bind_host, self.public_port))
        except OSError:
            sock.close()
            raise
        self._public = sock
        self._epoll = select.epoll()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        # The forwarding thread needs the GIL for every packet: by default a thread running
        # Python holds it up to 5 ms, a stall of ~50 packets at 100 Mbit/s.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._forward, name="natrelay-path-proxy", daemon=True)
        self._thread.start()
        self._spawn(self._heartbeat())

    def _forward(self) -> None:
        """The forwarding thread: WireGuard's packets never wait for the agent's loop.

        The agent's loop blocks now and then (a database write, reading WireGuard); a
        packet path on that loop stalled with it and cost half the throughput. Probes
        and relay sends go back to the loop (asyncio transports are not thread-safe).
        """
        epoll = self._epoll
        while not self.closed:
            try:
                events = epoll.poll(0.2)
            except (OSError, ValueError):
                return
            for fd, _mask in events:
                if self._public is not None and fd == self._public.fileno():
                    self._read_public()
                else:
                    link = self._by_fd.get(fd)
                    if link is not None:
                        self._read_link(link)

    @property
    def wg_addr(self) -> Addr:
        return ("127.0.0.1", self.wg_port)

    def add_peer(self, peer: str) -> str:
        """Open the peer's link port; return it (WireGuard's endpoint for the peer)."""
        link = self._links.get(peer)
        if link is not None:
            return link.endpoint
        assert self._loop is not None, "start() first"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _big_buffers(sock)
        sock.bind(("127.0.0.1", 0))
        link = PeerLink(peer=peer, sock=sock)
        self._links[peer] = link
        self._by_fd[sock.fileno()] = link
        self._keys[peer] = pr.pair_key(self.secret, self.me, peer)
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        return link.endpoint

    def remove_peer(self, peer: str) -> None:
        link = self._links.pop(peer, None)
        if link is None:
            return
        self._by_fd.pop(link.sock.fileno(), None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(link.sock.fileno())
        link.sock.close()
        for addr in [a for a, p in self._addr_peer.items() if p == peer]:
            del self._addr_peer[addr]
        self._keys.pop(peer, None)

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self._links):
            self.remove_peer(peer)
        if self._thread is not None:
            self._thread.join(1.0)
        if self._public is not None:
            self._public.close()
            self._public = None
        if self._epoll is not None:
            self._epoll.close()

    def link(self, peer: str) -> PeerLink | None:
        return self._links.get(peer)

    def path(self, peer: str) -> tuple[str, str] | None:
        link = self._links.get(peer)
        return None if link is None else link.path()

    def use_direct(self, peer: str, addr: Addr) -> None:
        link = self._links[peer]
        link.direct = addr
        self._addr_peer[addr] = peer
        link.last_rx_direct = time.monotonic()
        link.dead_reported = False
        log.info("data path of %s: direct %s", peer[:8], fmt(addr))
        self._release_held(link)

    def use_relay(self, peer: str, session: Any) -> None:
        link = self._links[peer]
        link.direct = None
        link.relay = session
        log.info("data path of %s: relay %s", peer[:8], session.server.relay_id)
        self._release_held(link)

    def drop_relay(self, peer: str, session: Any) -> None:
        """``session`` is closing: never send through it again."""
        link = self._links.get(peer)
        if link is not None and link.relay is session:
            link.relay = None

    def sink_for(self, peer: str) -> Callable[[bytes], None]:
        """What a TURN session for ``peer`` delivers to: probes here, the rest to WireGuard."""

        def sink(data: bytes) -> None:
            link = self._links.get(peer)
            if link is None:
                return
            if pr.looks_like_probe(data):
                self._relay_probe(link, data)
                return
            link.rx_relay += 1
            self._to_wireguard(link, data)

        return sink

    def _send_probe(self, data: bytes, addr: Addr) -> bool:
        return self._send_public(data, addr)

    def _send_public(self, data: bytes, addr: Addr) -> bool:
        if self._public is None:
            return False
        try:
            self._public.sendto(data, addr)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.ENETUNREACH):
                log.info("sending to %s failed: %s", fmt(addr), exc)
            return False
        return True

    def _public_probe(self, data: bytes, addr: Addr) -> None:
        probe = self._authenticated(data)
        if probe is None:
            return
        peer, now = probe.sender, time.monotonic()
        link = self._links[peer]
        if probe.kind == pr.PING:
            self._addr_peer[addr] = peer
            pong = pr.encode(pr.PONG, self.me, self._keys[peer], probe.txid, observed=addr)
            self._send_public(pong, addr)
            if link.direct == addr:
                link.last_rx_direct = now
            elif not self.probing(peer, addr) and now - self._confirmed.get((peer, addr), -1e9) > 5.0:
                # The peer reached us from here: probe back (once; this also opens our NAT
                # to it), unless that address answered us lately.
                self.probe(peer, addr, 2.0)
        elif probe.kind == pr.PONG:
            rtt = self._pending.answer(probe, addr, now)
            if rtt is None:
                self.rejected_probes += 1
                log.debug("pong from %s answers no ping of ours", fmt(addr))
                return
            self._addr_peer[addr] = peer
            if link.direct == addr:
                link.last_rx_direct = now
                link.dead_reported = False
            self._probing.pop((peer, addr), None)
            first = now - self._confirmed.get((peer, addr), -1e9) > 1.0
            self._confirmed[(peer, addr)] = now
            if self.on_answer is not None and first:
                self.on_answer(peer, addr, rtt, probe.observed)

    def _relay_probe(self, link: PeerLink, data: bytes) -> None:
        probe = self._authenticated(data)
        if probe is None or probe.sender != link.peer:
            return
        if probe.kind == pr.CALL and self.on_call is not None:
            self.on_call(link.peer)

    def _read_public(self) -> None:
        sock = self._public
        if sock is None:
            return
        for _ in range(_RECV_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors surface here; nothing to do
            if pr.looks_like_probe(data):
                self._on_loop(self._public_probe, data, addr)
                continue
            peer = self._addr_peer.get(addr)
            link = self._links.get(peer) if peer else None
            if link is None:
                continue
            link.rx_direct += 1
            if link.direct == addr:
                link.last_rx_direct = time.monotonic()
            self._to_wireguard(link, data)

    def _to_wireguard(self, link: PeerLink, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionRefusedError):
            link.sock.sendto(data, self.wg_addr)

    def _read_link(self, link: PeerLink) -> None:
        for _ in range(_RECV_BATCH):
            try:
                data = link.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if data[:1] == b"\x04" and len(data) > KEEPALIVE_LEN:
                link.last_tx_data = time.monotonic()
            if link.direct is not None:
                if self._send_public(data, link.direct):
                    link.tx_direct += 1
            elif link.relay is not None:
                self._on_loop(self._relay_send, link, data)
            else:
                link.dropped += 1
                if data[:1] in (b"\x01", b"\x02"):
                    link.held = [*link.held[-(HOLD_MAX - 1) :], (data, time.monotonic())]

    def _relay_send(self, link: PeerLink, data: bytes) -> None:
        relay = link.relay
        if link.direct is None and relay is not None and relay.send(data):
            link.tx_relay += 1

    def _on_loop(self, function: Callable[..., None], *args: Any) -> None:
        if self._loop is None or self.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(function, *args)

    def _release_held(self, link: PeerLink) -> None:
        held, link.held = link.held, []
        now = time.monotonic()
        for data, at in held:
            if now - at > HOLD_INITIATION_S:
                continue
            if data[:1] == b"\x01" and self.me < link.peer:
                # Both sides release at once: crossed initiations would leave each side a
                # responder waiting for the other (5 s until WireGuard retries), so only
                # the node with the larger key sends its held initiation.
                continue
            if link.direct is not None:
                self._send_public(data, link.direct)
            elif link.relay is not None:
                link.relay.send(data)

    async def _heartbeat(self) -> None:
        step = min(self.heartbeat_every, 0.1)
        while not self.closed:
            await asyncio.sleep(step)
            self.check_liveness(time.monotonic())

    def check_liveness(self, now: float) -> None:
        """Heartbeat active direct paths; report those silent for ``dead_after`` s."""
        self._pending.expire(now)
        for link in list(self._links.values()):
            if link.direct is None or now - link.last_tx_data > self.active_window:
                continue
            silent = now - link.last_rx_direct
            if silent >= self.heartbeat_after and now - link.last_heartbeat >= self.heartbeat_every:
                link.last_heartbeat = now
                self._send_ping(link.peer, link.direct)
            if silent >= self.dead_after and not link.dead_reported:
                link.dead_reported = True
                log.info("direct path of %s silent for %.1f s while active", link.peer[:8], silent)
                if self.on_dead is not None:
                    self.on_dead(link.peer, silent)
