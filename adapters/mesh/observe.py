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
import time
from typing import TYPE_CHECKING, Any

from natrelay.adapters.mesh import intake
from natrelay.adapters.mesh.rendezvous import latest_relay_address
from natrelay.adapters.mesh.wireguard import WireGuardError
from natrelay.core import lifecycle as lc
from natrelay.core import values as v
from natrelay.core.events import (
    CandidatesUpdated,
    HandshakeObserved,
    InputRejected,
    PathSilent,
    Tick,
)

if TYPE_CHECKING:
    from natrelay.adapters.mesh.agent import Agent

log = logging.getLogger("natrelay.adapters.mesh.agent")


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
        try:
            while not stop.is_set():
                self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
        finally:
            await self.stop()

    def step(self: Agent) -> None:
        """One turn: drain async results, read WireGuard and the rendezvous, tick."""
        pending, self._pending = self._pending, []
        for event in pending:
            self.feed(event)
        self._poll_wireguard()
        self._poll_rendezvous()
        self._start_due_attempts()
        self._catch_up()
        deadline = self.engine.next_deadline()
        now = self.now()
        if deadline is not None and deadline <= now:
            self.feed(Tick(at=now))

    # ---- observing ---------------------------------------------------------------------

    def _await_candidates(self: Agent, peers: list[str]) -> dict[str, tuple[str, ...]]:
        """Candidates new peers published, waiting up to `startup_wait` s for those not yet."""
        found: dict[str, tuple[str, ...]] = {}
        rejected: set[int] = set()
        deadline = time.monotonic() + self.startup_wait
        while True:
            for record in self.rendezvous.poll(self.me, 0):
                if record.kind == "candidates" and record.sender in peers:
                    update = self._published_candidates(record, ())
                    if isinstance(update, InputRejected):
                        if record.seq not in rejected:
                            rejected.add(record.seq)
                            self._pending.append(update)  # recorded at the first step
                    else:
                        found[record.sender] = update.candidates
            if len(found) == len(peers) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _poll_wireguard(self: Agent) -> None:
        assert self.wireguard is not None
        try:
            status = self.wireguard.show()
        except WireGuardError as exc:
            log.error("reading WireGuard failed: %s", exc)
            return
        proxies = {s.local_endpoint: relay for (p, relay), s in self._sessions.items() if s.local_endpoint}
        for peer in status.peers:
            key = peer.public_key
            if key not in self.engine.peers:
                continue
            self._watch_silence(key, peer.rx_bytes)
            last = self._last_handshake.get(key)
            self._last_handshake[key] = peer.latest_handshake
            # last None: the first look after start, an old handshake, not a new one.
            if peer.latest_handshake == 0 or last is None or peer.latest_handshake == last:
                continue
            endpoint = peer.endpoint
            if endpoint is None:
                continue
            relay = proxies.get(endpoint)
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
        return 3 * self.config.persistent_keepalive * 1000 + 1000

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
        try:
            records = self.rendezvous.poll(self.me, self._rv_seq)
        except Exception as exc:  # a busy database must not stop the node
            log.error("reading the rendezvous failed: %s", exc)
            return
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
                if update.candidates != peer.candidates and peer.state != lc.REMOVED:
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
        return intake.candidates_updated(
            self.now(), "rendezvous", peer=record.sender, candidates=list(known) + published
        )
