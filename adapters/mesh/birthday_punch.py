"""Birthday punching: a direct path through a NAT that picks a random port per destination (issue 16).

This module owns the packets of a hard-NAT attempt between two agents, as Tailscale's
"How NAT traversal works" describes it and no mesh ships:

- the **hard side** (behind the symmetric NAT) opens ``sockets`` UDP sockets; each sends
  authenticated PINGs (``probes``) to the easy side's endpoint, so its NAT opens one
  mapping per socket — ``sockets`` random public ports, all towards the easy side;
- the **easy side** (a cone NAT or a firewall that keeps its port) sends PINGs from
  WireGuard's port to random ports of the hard side's public address (``spray_ports``),
  each opening its own NAT towards that port;
- one of those ports is one of the hard side's mappings with probability about
  ``1 - (1 - sockets/range)^probes`` (the birthday paradox): a PING crosses both NATs,
  the socket that got it answers with a PONG from the same socket, and the pair met.
  The hard side closes every other socket at once; the found socket then carries the
  path (``PunchedPath``: WireGuard talks to a loopback port, as it does to a TURN
  session), while the easy side's WireGuard sends from its own port to the met address.

Both sides are paced (``rate`` probes a second, so it never looks like a scan) and bounded
(``duration`` seconds, ``sockets`` and ``probes`` from the engine's budget). Nothing here
decides: the engine says when, to whom, with which budget; this module reports what met.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable

import attrs

from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.probing import Addr

log = logging.getLogger(__name__)

#: Ports a NAT allocates from (Linux: 1024-65535 for MASQUERADE --random-fully).
PORT_LOW, PORT_HIGH = 1024, 65535


def spray_ports(count: int, rng: random.Random, low: int = PORT_LOW, high: int = PORT_HIGH) -> list[int]:
    """``count`` distinct ports of ``low..high`` in random order (no port probed twice)."""
    return rng.sample(range(low, high + 1), min(count, high - low + 1))


def meet_probability(sockets: int, probes: int, span: int = PORT_HIGH - PORT_LOW + 1) -> float:
    """The chance that ``probes`` distinct random ports hit one of ``sockets`` random mappings."""
    miss = 1.0
    for i in range(min(probes, span)):
        miss *= max(0.0, 1.0 - sockets / (span - i))
    return 1.0 - miss


@attrs.frozen
class PunchOutcome:
    """What one side of an attempt saw."""

    met: bool
    #: The peer's address as the meeting socket saw it (hard side), or the hard side's met
    #: public address (easy side); None when nothing met.
    remote: Addr | None
    probes_sent: int
    sockets_opened: int
    took_s: float


@attrs.define(eq=False)
class HardSide:
    """The hard side of one attempt: many sockets towards the easy side's endpoint."""

    me: str
    peer: str
    key: bytes
    target: Addr
    sockets: int = 256
    rate: float = 200.0
    duration: float = 10.0
    #: How often each socket's mapping is refreshed while nothing met (NATs forget idle ones).
    refresh: float = 2.0

    _socks: list[socket.socket] = attrs.field(factory=list)
    _met: asyncio.Future[tuple[int, Addr]] | None = None
    sent: int = 0

    async def run(self) -> tuple[PunchOutcome, socket.socket | None]:
        """Punch for at most ``duration`` s; the meeting socket (connected to the peer) or None."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._met = loop.create_future()
        try:
            for _ in range(self.sockets):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.bind(("0.0.0.0", 0))
                index = len(self._socks)
                self._socks.append(sock)
                loop.add_reader(sock.fileno(), self._readable, index)
            sender = loop.create_task(self._send_all(started))
            try:
                index, remote = await asyncio.wait_for(asyncio.shield(self._met), self.duration)
            except TimeoutError:
                return PunchOutcome(
                    False, None, self.sent, len(self._socks), time.monotonic() - started
                ), None
            finally:
                sender.cancel()
            winner = self._socks[index]
            self._socks[index] = None  # type: ignore[call-overload]
            loop.remove_reader(winner.fileno())
            winner.connect(remote)
            took = time.monotonic() - started
            return PunchOutcome(True, remote, self.sent, len(self._socks), took), winner
        finally:
            self._close_all(loop)

    async def _send_all(self, started: float) -> None:
        """Round-robin over the sockets at ``rate`` a second, again every ``refresh`` s."""
        gap = 1.0 / self.rate
        while time.monotonic() - started < self.duration:
            round_started = time.monotonic()
            for index, sock in enumerate(self._socks):
                if sock is None:
                    continue
                txid = pr.new_txid()
                try:
                    sock.sendto(pr.encode(pr.PING, self.me, self.key, txid), self.target)
                    self.sent += 1
                except OSError as exc:
                    log.debug("hard-NAT ping from socket %d failed: %s", index, exc)
                await asyncio.sleep(gap)
            await asyncio.sleep(max(0.0, self.refresh - (time.monotonic() - round_started)))

    def _readable(self, index: int) -> None:
        sock = self._socks[index]
        if sock is None:
            return
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            probe = self._authenticated(data)
            if probe is None or probe.kind != pr.PING or self._met is None or self._met.done():
                # Only the easy side's ping decides, and only once: a pong to one of our
                # pings, or a second socket answering, could name another pair than the one
                # the easy side met (its meeting is our pong), and the two would disagree.
                continue
            # The easy side's spray came through: answer from this very socket, and it is ours.
            pong = pr.encode(pr.PONG, self.me, self.key, probe.txid, observed=addr)
            try:
                sock.sendto(pong, addr)
            except OSError:
                continue
            self._met.set_result((index, addr))
            return

    def _authenticated(self, data: bytes) -> pr.Probe | None:
        if not pr.looks_like_probe(data):
            return None
        try:
            if pr.sender_of(data) != self.peer:
                return None
            return pr.decode(data, self.key)
        except (pr.ProbeError, ValueError):
            return None

    def _close_all(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock in self._socks:
            if sock is None:
                continue
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()


async def spray(
    send_ping: Callable[[Addr], object],
    ip: str,
    ports: list[int],
    rate: float,
    met: Callable[[], bool],
) -> int:
    """The easy side: a ping to each of ``ports`` of ``ip`` at ``rate`` a second, until ``met()``.

    ``send_ping`` sends one authenticated PING from WireGuard's port and remembers it (the
    shared plane's ``_send_ping``), so the answer is recognised like any probe's.
    """
    gap, sent = 1.0 / rate, 0
    for port in ports:
        if met():
            break
        send_ping((ip, port))
        sent += 1
        await asyncio.sleep(gap)
    return sent


class _FromWireGuard(asyncio.DatagramProtocol):
    def __init__(self, path: PunchedPath) -> None:
        self.path = path

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.path.wireguard_addr = addr
        try:
            self.path.sock.send(data)
            self.path.forwarded_out += 1
        except OSError as exc:
            log.debug("punched path: sending to the peer failed: %s", exc)


@attrs.define(eq=False)
class PunchedPath:
    """The hard side's found path: WireGuard <-> 127.0.0.1:<port> <-> the meeting socket <-> peer."""

    sock: socket.socket
    #: Where WireGuard listens, to deliver to before it has sent anything here.
    wireguard_addr: Addr
    #: Answers a probe that came over the path (the easy side's heartbeat): the reply to
    #: send back, or None; probes never reach WireGuard.
    answer_probe: Callable[[bytes], bytes | None] | None = None
    forwarded_in: int = 0
    forwarded_out: int = 0
    _local: asyncio.DatagramTransport | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> str:
        """Open the loopback port; returns it as WireGuard's endpoint for the peer."""
        self._loop = asyncio.get_running_loop()
        self._local, _ = await self._loop.create_datagram_endpoint(
            lambda: _FromWireGuard(self), local_addr=("127.0.0.1", 0)
        )
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._from_peer)
        return self.local_endpoint

    @property
    def local_endpoint(self) -> str:
        assert self._local is not None
        host, port = self._local.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def send(self, data: bytes) -> bool:
        """Send ``data`` to the peer through the meeting socket (a probe of the plane)."""
        try:
            self.sock.send(data)
        except OSError:
            return False
        return True

    def _from_peer(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if pr.looks_like_probe(data):
                reply = self.answer_probe(data) if self.answer_probe is not None else None
                if reply is not None:
                    with contextlib.suppress(OSError):
                        self.sock.send(reply)
                continue
            if self._local is not None:
                self._local.sendto(data, self.wireguard_addr)
                self.forwarded_in += 1

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.sock.fileno())
        if self._local is not None:
            self._local.close()
        self.sock.close()
