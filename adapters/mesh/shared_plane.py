"""The shared data plane: WireGuard keeps its public port; probes share it through raw sockets.

This module owns the agent's paths when ``data_plane = "shared"`` (NetBird's sharedsock
design), with the same interface as ``PathProxy`` so ``data_plane`` drives both:

    direct:  wireguard (0.0.0.0:<public port>) ──────────────────────────────► peer
    relayed: wireguard ──► 127.0.0.1:<TURN session's port> ──► TURN ──► peer
    probes:  raw socket, source port = WireGuard's ──► peer; answers: BPF-filtered raw socket

- Probing never moves WireGuard (hitless): pings leave from WireGuard's port through the
  raw socket (``shared_socket``), so through any NAT they share WireGuard's mapping to
  that same destination; the answer comes back on the filtered raw socket.
- Only after a probe answered does the engine select the path; ``use_direct`` then sets
  WireGuard's endpoint to it in place (UAPI, or `wg set` without re-creating the peer),
  so direct traffic is kernel -> WireGuard -> wire with no Python hop. ``use_relay`` sets
  it to the TURN session's loopback port (``turn_relay``), as the "endpoint" mode does.
- Liveness of an active direct path (the proxy's heartbeat, same numbers): every
  ``sample_every`` s the direct peers' rx/tx byte counters are read from WireGuard (the
  agent's ``WireGuard``: UAPI ``get=1`` or netlink, no fork). While no direct peer sends
  data, the plane reads nothing itself: the agent's own full readings (its silence
  cadence) are shared with it (``take_reading``), and only when none came for
  ``idle_sample_every`` + ``reading_slack`` s does it read on its own — so an idle mesh
  costs one reading per cadence, not two. A peer is active while its tx counter grows by
  more than a keepalive; received bytes count only while WireGuard's endpoint is the direct path
  (WireGuard roams to where authenticated packets come from, e.g. the relay). Nothing
  received for ``heartbeat_after`` s: a ping every ``heartbeat_every`` s; a pong counts
  as received; ``dead_after`` s of silence: ``on_dead``.
- A CALL arriving through the relay (``tap_for``) makes the agent probe back, as in proxy
  mode; everything else from the relay goes to WireGuard untouched.
- No decisions; the wire format and its authentication are ``probes``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from natrelay.adapters import liveness as lv
from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.path_proxy import Addr, fmt, parse_addr
from natrelay.adapters.mesh.probing import Probing
from natrelay.adapters.mesh.shared_socket import RawProbeSocket
from natrelay.adapters.mesh.wg_counters import Uapi, UapiError
from natrelay.adapters.mesh.wg_values import WireGuardError

if TYPE_CHECKING:
    from natrelay.adapters.mesh.hard_nat_plane import HardNatRunner

log = logging.getLogger(__name__)

#: A transport packet carrying nothing (a keepalive) is 32 bytes on the wire.
KEEPALIVE_BYTES = 32


class Counters(Protocol):
    """What liveness reads of one peer: a ``PeerStatus`` of the agent's reading, or a test's."""

    @property
    def rx_bytes(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def endpoint(self) -> str | None: ...


class PeerReading(Counters, Protocol):
    @property
    def public_key(self) -> str: ...


@attrs.define(eq=False)
class SharedLink:
    """One peer's slice of the shared plane."""

    peer: str
    direct: Addr | None = None
    relay: Any = None  # a TurnSession
    ever_set: bool = False
    last_rx_direct: float = 0.0
    last_tx_data: float = -1e9
    last_heartbeat: float = 0.0
    dead_reported: bool = False
    #: WireGuard's endpoint was seen elsewhere than ``direct`` (it roamed, e.g. to the relay).
    roamed: str | None = None
    rx_bytes: int = -1
    tx_bytes: int = -1

    def path(self) -> tuple[str, str] | None:
        if self.direct is not None:
            return ("direct", fmt(self.direct))
        if self.relay is not None:
            return ("relay", self.relay.server.relay_id)
        return None


@attrs.define(eq=False)
class SharedPlane(Probing):
    """The agent's data plane for one WireGuard interface that keeps its public port."""

    me: str
    secret: bytes
    public_port: int
    #: ``WireGuard`` (the `wg` adapter): endpoint changes when UAPI is not there.
    wireguard: Any
    uapi: Uapi
    #: The peers' persistent keepalive (s), re-armed at the first endpoint to start a handshake.
    keepalive: int | None = None
    on_answer: Callable[[str, Addr, float, Addr | None], None] | None = None
    on_dead: Callable[[str, float], None] | None = None
    on_call: Callable[[str], None] | None = None
    active_window: float = lv.ACTIVE_WINDOW_S
    heartbeat_after: float = lv.HEARTBEAT_AFTER_S
    heartbeat_every: float = lv.HEARTBEAT_EVERY_S
    dead_after: float = lv.DEAD_AFTER_S
    probe_every: float = lv.PROBE_EVERY_S
    sample_every: float = lv.SAMPLE_EVERY_S
    #: While no direct peer sends data, counters are read this seldom (an idle agent sleeps).
    idle_sample_every: float = 1.0
    #: How late the agent's shared reading may be before the idle plane reads on its own.
    reading_slack: float = 0.25

    _loop: asyncio.AbstractEventLoop | None = None
    _raw: RawProbeSocket | None = None
    _links: dict[str, SharedLink] = attrs.field(factory=dict)
    _keys: dict[str, bytes] = attrs.field(factory=dict)
    _pending: pr.PendingPings = attrs.field(factory=pr.PendingPings)
    _probing: dict[tuple[str, Addr], float] = attrs.field(factory=dict)
    _confirmed: dict[tuple[str, Addr], float] = attrs.field(factory=dict)
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    _reading_timer: asyncio.TimerHandle | None = None
    _last_reading: float = -1e9
    #: Readings of WireGuard the plane made itself (the agent's shared ones not counted).
    own_readings: int = 0
    #: Hard-NAT attempts and their punched paths (``hard_nat_plane``), once the agent opens it.
    hard_nat: HardNatRunner | None = None
    rejected_probes: int = 0
    closed: bool = False

    # ---- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the raw sockets on WireGuard's port (inside a running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._raw = RawProbeSocket(self.public_port)
        self._loop.add_reader(self._raw.fileno(), self._read)
        self._arm_reading()

    def add_peer(self, peer: str) -> str | None:
        """Track ``peer``; WireGuard gets no endpoint until a path is selected (None)."""
        if peer not in self._links:
            self._links[peer] = SharedLink(peer=peer)
            self._keys[peer] = pr.pair_key(self.secret, self.me, peer)
        return None

    def remove_peer(self, peer: str) -> None:
        self._links.pop(peer, None)
        self._keys.pop(peer, None)

    def close(self) -> None:
        self.closed = True
        if self._reading_timer is not None:
            self._reading_timer.cancel()
        if self.hard_nat is not None:
            self.hard_nat.close()
        for task in list(self._tasks):
            task.cancel()
        if self._raw is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._raw.fileno())
            self._raw.close()
            self._raw = None

    # ---- paths -----------------------------------------------------------------------------

    def link(self, peer: str) -> SharedLink | None:
        return self._links.get(peer)

    def path(self, peer: str) -> tuple[str, str] | None:
        link = self._links.get(peer)
        return None if link is None else link.path()

    def _set_wireguard(self, link: SharedLink, endpoint: str) -> None:
        """Set WireGuard's endpoint in place; the first time, also start a handshake now.

        wireguard-go tried a handshake when the peer was added without an endpoint, failed
        to send it, and will not try again for 5 s (REKEY_TIMEOUT). So the first endpoint
        of a peer that never exchanged a byte re-creates it (a fresh peer handshakes at
        once); a peer that did exchange something (the other side's handshake arrived
        first) keeps its state and only has its keepalive re-armed.
        """
        first, link.ever_set = not link.ever_set, True
        if self.uapi.available:
            try:
                if first and self._untouched(link.peer):
                    self.wireguard.set_endpoint(link.peer, endpoint, handshake_now=True)
                    return
                self.uapi.set_endpoint(link.peer, endpoint, kick_keepalive=self.keepalive if first else None)
                return
            except UapiError as exc:
                log.info("%s; falling back to wg set", exc)
        self.wireguard.set_endpoint(link.peer, endpoint, handshake_now=first)

    def _untouched(self, peer: str) -> bool:
        seen = self.wireguard.show([peer]).peer(peer)
        return seen is not None and seen.rx_bytes == 0 and seen.tx_bytes == 0

    def _pin(self, link: SharedLink) -> None:
        """The direct path answers but WireGuard roamed away from it: point it back."""
        assert link.direct is not None
        log.info("WireGuard roamed %s to %s; back to direct %s", link.peer[:8], link.roamed, fmt(link.direct))
        link.roamed = None
        try:
            self._set_wireguard(link, self._wireguard_endpoint(link.direct))
        except Exception as exc:  # WireGuardError, UapiError: the next pong tries again
            log.error("pointing WireGuard back to %s failed: %s", fmt(link.direct), exc)

    def _wireguard_addr(self, addr: Addr) -> Addr:
        """Where WireGuard sends to reach ``addr``: there, or a punched path's loopback port."""
        punched = self.hard_nat.punched.get(addr) if self.hard_nat is not None else None
        return addr if punched is None else parse_addr(punched.local_endpoint)

    def _wireguard_endpoint(self, addr: Addr) -> str:
        return fmt(self._wireguard_addr(addr))

    def use_direct(self, peer: str, addr: Addr) -> None:
        link = self._links[peer]
        endpoint = self._wireguard_endpoint(addr)
        self._set_wireguard(link, endpoint)
        link.roamed = None
        link.direct = addr
        link.last_rx_direct = time.monotonic()
        link.dead_reported = False
        via = "" if endpoint == fmt(addr) else f" via {endpoint}"  # a punched path's loopback port
        log.info("data path of %s: direct %s%s", peer[:8], fmt(addr), via)
        self._arm_reading()

    def use_relay(self, peer: str, session: Any) -> None:
        link = self._links[peer]
        if session.local_endpoint is None:
            log.error("relay session %s of %s has no local port", session.session_id, peer[:8])
            return
        self._set_wireguard(link, session.local_endpoint)
        link.direct = None
        link.relay = session
        log.info("data path of %s: relay %s", peer[:8], session.server.relay_id)

    def drop_relay(self, peer: str, session: Any) -> None:
        link = self._links.get(peer)
        if link is not None and link.relay is session:
            link.relay = None

    def sink_for(self, peer: str) -> None:
        """No sink: the TURN session keeps its loopback port for WireGuard (see ``tap_for``)."""
        return None

    def tap_for(self, peer: str) -> Callable[[bytes], bool]:
        """What sees the relay's datagrams first: probes are handled here (True), not WireGuard's."""

        def tap(data: bytes) -> bool:
            if not pr.looks_like_probe(data):
                return False
            probe = self._authenticated(data)
            if probe is not None and probe.sender == peer and probe.kind == pr.CALL and self.on_call:
                self.on_call(peer)
            return True

        return tap

    # ---- probing -----------------------------------------------------------------------------

    def _send_probe(self, data: bytes, addr: Addr) -> bool:
        punched = self.hard_nat.punched.get(addr) if self.hard_nat is not None else None
        if punched is not None:  # only the punched socket's NAT mapping reaches the peer
            return punched.send(data)
        if self._raw is None:
            return False
        try:
            self._raw.send(data, addr)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.ENETUNREACH):
                log.info("probe to %s failed: %s", fmt(addr), exc)
            return False
        return True

    def _read(self) -> None:
        if self._raw is None:
            return
        for data, addr in self._raw.receive():
            self.on_probe(data, addr)

    def on_probe(self, data: bytes, addr: Addr) -> None:
        """A datagram that passed the filter, from ``addr``."""
        probe = self._authenticated(data)
        if probe is None:
            return
        peer, now = probe.sender, time.monotonic()
        link = self._links[peer]
        if probe.kind == pr.PING:
            self._send_probe(pr.encode(pr.PONG, self.me, self._keys[peer], probe.txid, observed=addr), addr)
            if link.direct == addr:
                link.last_rx_direct = now
                if link.roamed is not None:
                    self._pin(link)
            elif not self.probing(peer, addr) and now - self._confirmed.get((peer, addr), -1e9) > 5.0:
                self.probe(peer, addr, 2.0)  # the peer reached us from there: probe back once
        elif probe.kind == pr.PONG:
            rtt = self._pending.answer(probe, addr, now)
            if rtt is None:
                self.rejected_probes += 1
                log.debug("pong from %s answers no ping of ours", fmt(addr))
                return
            if link.direct == addr:
                link.last_rx_direct = now
                link.dead_reported = False
                if link.roamed is not None:
                    self._pin(link)
            self._probing.pop((peer, addr), None)
            first = now - self._confirmed.get((peer, addr), -1e9) > 1.0
            self._confirmed[(peer, addr)] = now
            if self.hard_nat is not None and self.hard_nat.answered(peer, addr):
                return  # an easy side's spray met: reported as the attempt's meeting
            if self.on_answer is not None and first:
                self.on_answer(peer, addr, rtt, probe.observed)

    # ---- liveness ------------------------------------------------------------------------------

    def take_reading(self, peers: Iterable[PeerReading]) -> None:
        """The agent's own full reading of WireGuard, shared: the idle plane need not read."""
        direct = {link.peer for link in self._links.values() if link.direct is not None}
        now = time.monotonic()
        self.check_liveness(now, {p.public_key: p for p in peers if p.public_key in direct})
        self._last_reading = now
        self._arm_reading()

    def next_reading_at(self, now: float) -> float | None:
        """When the plane must read WireGuard itself (monotonic s), or None: no direct path.

        Fast (``sample_every``) while a direct peer carries traffic or WireGuard roamed
        away from its direct path; otherwise only when the agent's shared reading is late,
        so an idle mesh costs one reading per cadence (issue 18's idle goals).
        """
        idle = False
        for link in self._links.values():
            if link.direct is None:
                continue
            if link.roamed is not None or now - link.last_tx_data <= self.active_window:
                return self._last_reading + self.sample_every
            idle = True
        return self._last_reading + self.idle_sample_every + self.reading_slack if idle else None

    def _arm_reading(self) -> None:
        """(Re)schedule the plane's own reading: a timer, so nothing wakes while none is due."""
        if self._reading_timer is not None:
            self._reading_timer.cancel()
            self._reading_timer = None
        if self._loop is None or self.closed:
            return
        now = time.monotonic()
        due = self.next_reading_at(now)
        if due is not None:
            self._reading_timer = self._loop.call_later(max(0.0, due - now), self._read_wireguard)

    def _read_wireguard(self) -> None:
        self._reading_timer = None
        direct = [link.peer for link in self._links.values() if link.direct is not None]
        if direct and not self.closed:
            self.own_readings += 1
            try:
                status = self.wireguard.show(direct)
            except (WireGuardError, OSError) as exc:
                log.info("reading WireGuard's counters failed: %s", exc)
            else:
                self.check_liveness(time.monotonic(), {p.public_key: p for p in status.peers})
        self._last_reading = time.monotonic()
        self._arm_reading()

    def check_liveness(self, now: float, counters: Mapping[str, Counters]) -> None:
        """Heartbeat active direct paths; report those silent for ``dead_after`` s."""
        self._pending.expire(now)
        for link in list(self._links.values()):
            seen = counters.get(link.peer)
            if link.direct is None or seen is None:
                continue
            if link.tx_bytes >= 0 and seen.tx_bytes - link.tx_bytes > KEEPALIVE_BYTES:
                link.last_tx_data = now
            expected = self._wireguard_addr(link.direct)  # the heartbeat's path: no format round trip
            on_direct = seen.endpoint is not None and parse_addr(seen.endpoint) == expected
            link.roamed = None if on_direct else seen.endpoint
            if link.rx_bytes >= 0 and seen.rx_bytes != link.rx_bytes and on_direct:
                link.last_rx_direct = now
            link.tx_bytes, link.rx_bytes = seen.tx_bytes, seen.rx_bytes
            # An idle peer gets no heartbeat; one whose WireGuard roamed away does: a pong
            # puts WireGuard back on the direct path, silence reports it dead.
            if now - link.last_tx_data > self.active_window and link.roamed is None:
                continue
            silent = now - link.last_rx_direct
            if silent >= self.heartbeat_after and now - link.last_heartbeat >= self.heartbeat_every:
                link.last_heartbeat = now
                self._send_ping(link.peer, link.direct)
            if silent >= self.dead_after and not link.dead_reported:
                link.dead_reported = True
                log.info("direct path of %s silent for %.1f s", link.peer[:8], silent)
                if self.on_dead is not None:
                    self.on_dead(link.peer, silent)
