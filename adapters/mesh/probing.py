"""Probing a peer's endpoints, shared by both data planes that own probes (proxy and shared).

This module owns what ``PathProxy`` and ``SharedPlane`` do alike with authenticated
probes (``probes``): pinging an endpoint every ``probe_every`` s for a while or until it
answers, asking a peer through its relay session to probe back (CALL), and checking a
datagram's authentication. Where the bytes leave differs — the proxy's public socket, or
the raw socket on WireGuard's port — so each plane gives ``_send_probe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from natrelay.adapters.mesh import probes as pr

log = logging.getLogger(__name__)

#: An endpoint: (host, port).
Addr = tuple[str, int]


class Probing:
    """Probe scheduling and authentication; a mixin of the data planes (attrs classes)."""

    me: str
    probe_every: float
    closed: bool
    rejected_probes: int
    _links: dict[str, Any]
    _keys: dict[str, bytes]
    _pending: pr.PendingPings
    _probing: dict[tuple[str, Addr], float]
    _loop: asyncio.AbstractEventLoop | None
    _tasks: set[asyncio.Task[Any]]

    def _send_probe(self, data: bytes, addr: Addr) -> bool:
        """Send one probe datagram to ``addr`` from the node's public port (False: not sent)."""
        raise NotImplementedError

    def probe(self, peer: str, addr: Addr, duration: float) -> None:
        """Ping ``addr`` every ``probe_every`` s for ``duration`` s or until answered."""
        if peer not in self._links or self.closed:
            return
        key = (peer, addr)
        until = time.monotonic() + duration
        if key in self._probing:
            self._probing[key] = max(self._probing[key], until)
            return
        self._probing[key] = until
        self._spawn(self._probe_loop(peer, addr))

    def probing(self, peer: str, addr: Addr) -> bool:
        return (peer, addr) in self._probing

    async def _probe_loop(self, peer: str, addr: Addr) -> None:
        key = (peer, addr)
        try:
            while key in self._probing and time.monotonic() < self._probing[key]:
                self._send_ping(peer, addr)
                await asyncio.sleep(self.probe_every)
        finally:
            self._probing.pop(key, None)

    def call(self, peer: str) -> bool:
        """Ask the peer, through its relay session, to probe us back now."""
        link = self._links.get(peer)
        if link is None or link.relay is None:
            return False
        return bool(link.relay.send(pr.encode(pr.CALL, self.me, self._keys[peer], pr.new_txid())))

    def _send_ping(self, peer: str, addr: Addr) -> None:
        key = self._keys.get(peer)
        if key is None:
            return
        txid = pr.new_txid()
        self._pending.add(txid, peer, addr, time.monotonic())
        self._send_probe(pr.encode(pr.PING, self.me, key, txid), addr)

    def _authenticated(self, data: bytes) -> pr.Probe | None:
        """The probe in ``data`` if a peer of this node signed it; else None, counted."""
        try:
            sender = pr.sender_of(data)
            key = self._keys.get(sender)
            if key is None:
                raise pr.ProbeError("sender is not a peer of this node")
            return pr.decode(data, key)
        except (pr.ProbeError, ValueError) as exc:
            self.rejected_probes += 1
            log.debug("probe rejected: %s", exc)
            return None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
