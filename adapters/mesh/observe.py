"""The agent's loop and what it observes: WireGuard state, silent paths, the rendezvous.

This module owns the observation side of ``Agent`` (``adapters/mesh/agent.py`` owns
start-up, feeding the engine and carrying out its commands): the loop that decides when
to look again, reading WireGuard into ``HandshakeObserved`` / ``PathSilent``, and reading
the rendezvous into ``CandidatesUpdated`` and the peers' relayed addresses. It is a mixin
of ``Agent`` so the two halves share one object and one event-log position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from natrelay.adapters import liveness as lv
from natrelay.adapters.mesh import data_plane as dp
from natrelay.adapters.mesh import intake
from natrelay.adapters.mesh.rendezvous import latest_relay_address
from natrelay.adapters.mesh.wireguard import WireGuardError
from natrelay.core import lifecycle as lc
from natrelay.core import values as v
from natrelay.core.events import (
    CandidatesUpdated,
    Event,
    HandshakeObserved,
    InputRejected,
    PathSilent,
    Tick,
)

if TYPE_CHECKING:
    from natrelay.adapters.mesh.agent import Agent

log = logging.getLogger("natrelay.adapters.mesh.agent")


async def _set_when(stop: asyncio.Event, wake: asyncio.Event) -> None:
    await stop.wait()
    wake.set()


class Inbox(list[Event]):
    """Observations from the agent's tasks (relay sessions): appending one wakes the loop."""

    wake: Callable[[], None] | None = None

    def append(self, event: Event) -> None:
        super().append(event)
        if self.wake is not None:
            self.wake()


@attrs.define
class Watch:
    """When the agent looks again at WireGuard and the rendezvous, and what it counted."""

    #: Wall ms when WireGuard is read next (0: at the first turn).
    wireguard_at: int = 0
    #: When every peer was last read (the silence cadence counts from there).
    full_read_at: int = 0
    #: Peers whose handshake is awaited (read every ``poll_interval``).
    awaited: set[str] = attrs.field(factory=set)
    rendezvous_at: int = 0
    rendezvous_gap_ms: int = 100
    #: SQLite: the rendezvous poll backs off up to this while nothing changes.
    rendezvous_max_ms: int = 2_000
    #: PostgreSQL: notifications wake the agent; a poll this often covers a lost one.
    rendezvous_safety_ms: int = 30_000
    notified: bool = False
    listening: bool = False
    wake: asyncio.Event | None = None
    #: Counters for tests and the benchmark.
    turns: int = 0
    wireguard_reads: int = 0
    rendezvous_reads: int = 0


class Observing:
    """The loop and the observations of ``Agent`` (see the module docstring)."""

    # ---- the loop ----------------------------------------------------------------------

    async def run(self: Agent, stop: asyncio.Event) -> None:
        self.start()
        log.info(
            "agent running: node %s, interface %s, %d peers, %d relays",
            self.config.node,
            self.interface,
            len(self.config.peers),
            len(self.config.relays),
        )
        watch = self.watch
        watch.wake = asyncio.Event()
        self._pending.wake = watch.wake.set  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        stopper = loop.create_task(_set_when(stop, watch.wake))
        if self.rendezvous.notifies:
            watch.listening = True
            self._spawn(self._listen())
        try:
            while not stop.is_set():
                watch.wake.clear()
                self.step()
                delay = self._sleep_ms(self.now())
                if delay > 0 and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watch.wake.wait(), delay / 1000)
        finally:
            stopper.cancel()
            await self.stop()

    async def _listen(self: Agent) -> None:
        """Wake at PostgreSQL notifications; if listening fails, fall back to polling."""
        try:
            await self.rendezvous.listen(lambda _channel: self._notified())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lost connection must not stop the node: poll instead
            log.error("listening for rendezvous notifications failed, polling instead: %s", exc)
        self.watch.listening = False
        self.watch.rendezvous_gap_ms = 100
        self._notified()

    def _notified(self: Agent) -> None:
        """A PostgreSQL notification: someone published a record or appended to the log."""
        self.watch.notified = True
        if self.watch.wake is not None:
            self.watch.wake.set()

    def step(self: Agent) -> None:
        """One turn: drain async results, read what is due, tick when the engine asks.

        What is due: WireGuard when a handshake is awaited (every ``poll_interval``), at the
        silence-check cadence of connected peers, and right before a Tick; the rendezvous
        at a notification, or on SQLite at an interval that doubles while nothing changes.
        """
        watch = self.watch
        watch.turns += 1
        pending = list(self._pending)
        self._pending.clear()
        for event in pending:
            self.feed(event)
        now = self.now()
        read = False
        if now >= watch.wireguard_at:
            self._poll_wireguard()
            read = True
        if watch.notified or now >= watch.rendezvous_at:
            watch.notified = False
            self._poll_rendezvous()
            self._catch_up()
        self._start_due_attempts()
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline <= self.now():
            if not read:
                self._poll_wireguard(self._tick_peers())  # decide on fresh facts
            self.feed(Tick(at=self.now()))
        self._plan_wireguard(self.now())

    def _awaited(self: Agent) -> set[str]:
        """Peers whose handshake a decision waits for: a direct round, a relay session, an attempt."""
        attempts = self.engine.attempts
        awaited = {
            key
            for key, record in self.engine.peers.items()
            if record.relay_pending is not None or attempts.open_round(key) is not None
        }
        now = self.now()
        awaited.update(k for k, q in self._attempts.items() if any(a.command.deadline > now for a in q))
        return awaited

    def _tick_peers(self: Agent) -> set[str]:
        """Peers a Tick may decide on from a handshake: awaited ones, and connected ones at
        their freshness limit (a renewal since the last reading keeps the path)."""
        limit = self.now() - self.engine.policy.handshake_freshness_ms
        stale = {
            key
            for key, record in self.engine.peers.items()
            if record.state in lc.CONNECTED_STATES
            and record.last_handshake_at is not None
            and record.last_handshake_at <= limit
        }
        return stale | self._awaited()

    def _plan_wireguard(self: Agent, now: int) -> None:
        """When to read WireGuard next: soon for awaited handshakes, else at the silence cadence."""
        watch = self.watch
        watch.awaited = self._awaited()
        fast = now + max(1, int(self.poll_interval * 1000))
        if watch.awaited:
            watch.wireguard_at = min(watch.wireguard_at, fast)
        if any(record.relay_pending is not None for record in self.engine.peers.values()):
            # A relay session waits for the peer's relayed address: read the rendezvous soon,
            # or the session binds to the address the peer had on its previous relay.
            watch.rendezvous_at = min(watch.rendezvous_at, fast)

    def _sleep_ms(self: Agent, now: int) -> int:
        """Milliseconds until something is due (0: now)."""
        watch = self.watch
        if self._pending:
            return 0
        times = [watch.wireguard_at, watch.rendezvous_at]
        deadline = self.engine.next_deadline()
        if deadline is not None:
            times.append(deadline)
        for queue in self._attempts.values():
            # An attempt whose round ended before its turn never starts: not a reason to wake.
            times.extend(a.start_at for a in queue if not a.started and a.command.deadline > now)
        return max(0, min(times) - now)

    def silence_check_ms(self: Agent) -> int:
        """How often connected peers' receive counters are read: a quarter of the silence limit.

        A path is declared silent at most this long after the limit (the counter's last
        change is known to within one reading).
        """
        return lv.silence_check_ms(self.config.persistent_keepalive)

    # ---- observing ---------------------------------------------------------------------

    def _poll_wireguard(self: Agent, only: set[str] | None = None) -> None:
        """Read WireGuard: every peer when the silence cadence is due, else only ``only``
        (default: the peers whose handshake is awaited)."""
        assert self.wireguard is not None
        watch = self.watch
        now = self.now()
        wanted = watch.awaited if only is None else only
        full = now >= watch.full_read_at + self.silence_check_ms() or (only is None and not wanted)
        if not full and not wanted:
            return
        try:
            status = self.wireguard.show(None if full else wanted)
        except WireGuardError as exc:
            log.error("reading WireGuard failed: %s", exc)
            watch.wireguard_at = now + self.silence_check_ms()
            return
        watch.wireguard_reads += 1
        if full:
            watch.full_read_at = now
            dp.share_reading(self, status)
        watch.wireguard_at = watch.full_read_at + self.silence_check_ms()
        # A write after this reading (a peer re-created by a decision taken below) makes
        # the reading stale for that peer: its handshake and counters are from before.
        generations = self.wireguard.generations()
        proxies = {s.local_endpoint: relay for (p, relay), s in self._sessions.items() if s.local_endpoint}
        for peer in status.peers:
            key = peer.public_key
            if key not in self.engine.peers:
                continue
            if self.wireguard.generation(key) != generations.get(key, 0):
                watch.wireguard_at = now  # look again at once
                continue
            self._watch_silence(key, peer.rx_bytes)
            if self.wireguard.generation(key) != generations.get(key, 0):
                watch.wireguard_at = now
                continue
            last = self._last_handshake.get(key)
            self._last_handshake[key] = peer.latest_handshake
            # last None: the first look after start, an old handshake, not a new one.
            if peer.latest_handshake == 0 or last is None or peer.latest_handshake == last:
                continue
            endpoint = peer.endpoint
            if endpoint is None:
                continue
            relay = proxies.get(endpoint)
            if self.proxy is not None:
                # Proxy mode: WireGuard's endpoint is a loopback port; the proxy knows the path.
                endpoint, relay = dp.handshake_path(self, key)
                if endpoint is None and relay is None:
                    continue
            if relay is not None:
                event = HandshakeObserved(at=self.now(), peer=key, relay=relay)
            else:
                try:
                    endpoint = v.parse_endpoint(endpoint)
                except v.InvalidValue:
                    continue
                if endpoint.startswith("127."):
                    continue  # a proxy port of a session already closed
                event = HandshakeObserved(at=self.now(), peer=key, endpoint=endpoint)
            self._first_handshake_ms.setdefault(key, event.at)
            self.feed(event)

    def silence_limit_ms(self: Agent) -> int:
        """Nothing received for three keepalive intervals (plus slack): the path is dead."""
        return lv.silence_limit_ms(self.config.persistent_keepalive)

    def _watch_silence(self: Agent, peer: str, rx_bytes: int) -> None:
        """Report PathSilent once when a connected peer's receive counter stops moving.

        WireGuard renews a handshake only every two minutes, so the handshake age
        shows a dead path after up to 180 s; with persistent keepalive on, a live
        path receives something every interval, so a still counter says it sooner.
        """
        now = self.now()
        seen = self._rx.get(peer)
        if seen is None or seen[0] != rx_bytes:
            self._rx[peer] = (rx_bytes, now)
            self._silence_reported.discard(peer)
            return
        record = self.engine.peers[peer]
        limit = self.silence_limit_ms()
        if (
            record.state in lc.CONNECTED_STATES
            and peer not in self._silence_reported
            and now - seen[1] >= limit
            and now - record.since >= limit
        ):
            self._silence_reported.add(peer)
            self.feed(PathSilent(at=now, peer=peer, silent_ms=now - seen[1]))

    def _poll_rendezvous(self: Agent) -> None:
        watch = self.watch
        now = self.now()
        watch.rendezvous_reads += 1
        try:
            records = self.rendezvous.poll(self.me, self._rv_seq)
        except Exception as exc:  # a busy database must not stop the node
            log.error("reading the rendezvous failed: %s", exc)
            watch.rendezvous_at = now + watch.rendezvous_max_ms
            return
        if records or any(r.relay_pending is not None for r in self.engine.peers.values()):
            # Something moves, or a relay session waits for the peer's relayed address.
            watch.rendezvous_gap_ms = max(1, int(self.poll_interval * 1000))
        elif watch.listening:
            watch.rendezvous_gap_ms = watch.rendezvous_safety_ms
        else:
            watch.rendezvous_gap_ms = min(watch.rendezvous_max_ms, watch.rendezvous_gap_ms * 2)
        watch.rendezvous_at = now + watch.rendezvous_gap_ms
        if not records:
            return
        self._rv_seq = records[-1].seq
        self._rv_records.extend(r for r in records if r.recipient == self.me)
        for record in records:
            if record.kind == "candidates" and record.sender in self.engine.peers:
                spec = self.config.peer(record.sender)
                update = self._published_candidates(record, spec.endpoints if spec else ())
                if isinstance(update, InputRejected):
                    self.feed(update)  # recorded, and the node goes on
                    continue
                peer = self.engine.peers[record.sender]
                news = update.candidates != peer.candidates or (
                    update.nat_type is not None and update.nat_type != peer.nat_type
                )
                if news and peer.state != lc.REMOVED:
                    self.feed(update)
        for peer in {r.sender for r in records if r.recipient == self.me}:
            latest = latest_relay_address(self._rv_records, peer)
            current = self._remote.get(peer)
            if latest is None:
                self._remote.pop(peer, None)
                continue
            if current is not None and current[0] == latest.seq:
                continue
            self._remote[peer] = (latest.seq, latest.payload["address"])
            for (p, _relay), session in self._sessions.items():
                if p == peer and session.remote is not None:
                    self._spawn(self._rebind(session, latest.payload["address"]))

    def _published_candidates(
        self: Agent, record: Any, known: tuple[str, ...]
    ) -> CandidatesUpdated | InputRejected:
        """The candidates a rendezvous record publishes (after the configured ones), or their refusal."""
        payload = record.payload if isinstance(record.payload, dict) else {}
        published = payload.get("candidates", ())
        if not isinstance(published, list):
            published = [published]
        kinds = payload.get("kinds")
        kinds = {**dict.fromkeys(known, "configured"), **(kinds if isinstance(kinds, dict) else {})}
        return intake.candidates_updated(
            self.now(),
            "rendezvous",
            peer=record.sender,
            candidates=list(known) + published,
            kinds=kinds,
            nat_type=payload.get("nat_type"),
        )
