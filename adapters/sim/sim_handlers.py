"""The simulator's event handlers: what happens in the world at each scheduled event.

Owns the reactions of the simulated world to its own queue: joins and leaves,
NAT rebinding, sleep and wake on another network, candidate reports by the
coordination server, handshakes and their renewal, relay sessions, relay
outages, health reports. `NetworkHandlers` is a part of `SimNetwork`
(`simulated_network`), which owns the state these handlers read and change.
"""

from __future__ import annotations

from natrelay.adapters.sim.nat_model import NAT_TYPES, roaming_survives
from natrelay.adapters.sim.sim_model import (
    HEALTH_EVERY_MS,
    REKEY_AFTER_MS,
    REKEY_TIMEOUT_MS,
    RELAY_DOWN_DETECTION_MS,
)
from natrelay.core.commands import ConnectViaRelay
from natrelay.core.events import (
    CandidatesUpdated,
    HandshakeObserved,
    PathSilent,
    PeerAdded,
    PeerRemoved,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
)


class NetworkHandlers:
    """The `_on_<kind>` handlers of `SimNetwork`'s event queue."""

    def _on_join(self, at: int, payload: tuple[str, str | None]) -> None:
        peer = self.peers[payload[0]]
        if peer.present:
            return
        peer.present, peer.awake = True, True
        acc = peer.account
        self._update(peer, at)
        if acc.first_join_at is None:
            acc.first_join_at = at
            acc.possible_at_join = acc.possible
        self._emit(
            PeerAdded(
                at=at, peer=peer.key, candidates=peer.candidates(), name=peer.name, nat_type=peer.nat_name
            )
        )
        self._oracle_choose(peer, at)

    def _on_leave(self, at: int, payload: tuple[str, str | None]) -> None:
        peer = self.peers[payload[0]]
        if not peer.present:
            return
        peer.present = False
        peer.account.recovering = False  # a peer that left has nothing to recover
        self._update(peer, at)
        self._emit(PeerRemoved(at=at, peer=peer.key))
        if self.oracle:
            self._oracle_release(peer, at)
            self._set_plane(peer, None, at)

    def _on_rebind(self, at: int, payload: tuple[str, str | None]) -> None:
        """The peer's NAT gives it a new public port mid-session (a NAT rebinding)."""
        peer = self.peers[payload[0]]
        old = peer.reflexive
        peer.port = 20000 + (peer.port - 20000 + 4999) % 40000
        peer.dedicated_port = peer.port + 1
        self.network_changed(peer, at)
        self._later(at + self.scenario.dynamics.candidate_report_delay_ms, "report", peer.key)
        new = None  # where a direct session roams: the peer's packets from its new port reach us
        on_direct = peer.plane is not None and peer.plane[0] == "direct" and not peer.lan
        if on_direct and roaming_survives(self.local):
            new = self._direct_result(peer, peer.reflexive)
        if new is not None and peer.plane == ("direct", old):
            # the peer's keepalives now come from the new port; WireGuard roams to it: no
            # handshake, the link's round trip (the oracle's direct path roams the same way)
            self._later(at + peer.rtt_ms, "handshake", (peer.key, new, peer.plane_token, True))
        self._oracle_choose(peer, at, roam_ms=peer.rtt_ms if new is not None else None)

    def _on_sleep(self, at: int, payload: tuple[str, str | None]) -> None:
        peer = self.peers[payload[0]]
        peer.awake = False
        self._update(peer, at)
        self._oracle_choose(peer, at)

    def _on_wake(self, at: int, payload: tuple[str, str | None]) -> None:
        """The peer is back, maybe on another network behind another NAT."""
        peer = self.peers[payload[0]]
        peer.awake = True
        if payload[1] is not None:
            peer.nat_name, peer.nat = payload[1], NAT_TYPES[payload[1]]
            peer.lan = False
            peer.rtt_ms = max(peer.rtt_ms, 10)
            peer.public_ip = self._new_ip()
            peer.port = 20000 + (peer.port - 20000 + 7001) % 40000
            peer.dedicated_port = peer.port + 1
        self.network_changed(peer, at)
        self._later(at + self.scenario.dynamics.candidate_report_delay_ms, "report", peer.key)
        if (
            peer.plane is not None
            and peer.plane[0] == "direct"
            and self.local.filtering in ("open", "endpoint_independent")
            and not self.local.udp_blocked
        ):
            # the peer's WireGuard initiates toward us from its new address; an open filter lets
            # it in (a new handshake: its loss is paid as the oracle's is)
            new = self._direct_result(peer, peer.reflexive)
            took = self._handshake_ms(peer, peer.rtt_ms, at)
            if new is not None and took is not None:
                self._later(at + took, "handshake", (peer.key, new, peer.plane_token, True))
        self._oracle_choose(peer, at)

    def _on_report(self, at: int, key: str) -> None:
        peer = self.peers[key]
        if peer.known_reflexive == peer.reflexive:
            return
        peer.known_reflexive = peer.reflexive
        if peer.present:
            self._emit(
                CandidatesUpdated(at=at, peer=key, candidates=peer.candidates(), nat_type=peer.nat_name)
            )

    def _on_handshake(self, at: int, payload: tuple[str, str, int, bool]) -> None:
        key, endpoint, token, roaming = payload
        peer = self.peers[key]
        if roaming and peer.plane_token != token:
            return
        if endpoint not in self.working_endpoints(peer):
            return  # the network changed while the handshake was in flight
        if peer.hard_unshaken == endpoint:
            peer.hard_unshaken = None  # this handshake set the session up
        self._emit(HandshakeObserved(at=at, peer=key, endpoint=endpoint))

    def _on_renew(self, at: int, payload: tuple[str, int]) -> None:
        key, token = payload
        peer = self.peers[key]
        if peer.plane_token != token or peer.plane is None:
            return
        self._later(at + REKEY_AFTER_MS, "renew", payload)
        if self.oracle or not self._plane_works(peer):
            return
        kind, where = peer.plane
        if kind == "direct":
            self._emit(HandshakeObserved(at=at, peer=key, endpoint=where))
        else:
            self._emit(HandshakeObserved(at=at, peer=key, relay=where))

    def _on_relay_established(self, at: int, payload: tuple[str, str, str]) -> None:
        key, relay_id, session = payload
        if self._pending.get((key, relay_id)) != session:
            return  # cancelled meanwhile
        del self._pending[(key, relay_id)]
        relay = self.relays[relay_id]
        if not relay.up:
            self._emit(RelaySessionFailed(at=at, peer=key, relay=relay_id, reason="relay went down"))
            return
        peer = self.peers[key]
        if not (peer.present and peer.awake):
            return  # the peer went away while the session was set up: its handshake never comes
        if len(relay.sessions) >= relay.capacity:
            # the relay counts its sessions when one opens, not when the connect was issued
            self.over_capacity += 1
            self._emit(RelaySessionFailed(at=at, peer=key, relay=relay_id, reason="at capacity"))
            return
        relay.sessions[key] = session
        self.load_changes.append((at, 1))
        self._emit(RelaySessionEstablished(at=at, peer=key, relay=relay_id, session=session))

    def _retry_through_relay(self, key: str, command: ConnectViaRelay, now: int) -> None:
        """The peer did not answer the initiation through the relay (asleep, away): WireGuard
        sends the next one REKEY_TIMEOUT later, which a peer that woke meanwhile answers, if
        the connect still waits then (a connect timeout above 5 s fits one retry)."""
        at = now + REKEY_TIMEOUT_MS
        if at >= command.deadline:
            return
        waiting = f"retry@{at}"
        self._pending[(key, command.relay)] = waiting
        self._later(at, "relay_retry", (key, command, waiting))

    def _on_relay_retry(self, at: int, payload: tuple[str, ConnectViaRelay, str]) -> None:
        key, command, waiting = payload
        if self._pending.get((key, command.relay)) != waiting:
            return  # the connect was closed (or replaced) meanwhile
        del self._pending[(key, command.relay)]
        self._connect_relay(self.peers[key], command, at)

    def _refuse(self, key: str, relay_id: str, now: int, at: int, reason: str) -> None:
        """The relay will refuse this connect at `at`. The refusal is pending like a session:
        closing the connect first (a direct path won meanwhile) voids it."""
        refusal = f"refused@{now}"
        self._pending[(key, relay_id)] = refusal
        self._later(at, "relay_failed", (key, relay_id, reason, refusal))

    def _on_relay_failed(self, at: int, payload: tuple[str, str, str, str]) -> None:
        key, relay_id, reason, refusal = payload
        if self._pending.get((key, relay_id)) != refusal:
            return  # the connect was closed (or replaced) meanwhile: nobody waits for its answer
        del self._pending[(key, relay_id)]
        self._emit(RelaySessionFailed(at=at, peer=key, relay=relay_id, reason=reason))

    def _on_relay_down(self, at: int, relay_id: str) -> None:
        relay = self.relays[relay_id]
        if not relay.up:
            return
        relay.up = False
        hit = [key for key, peer in self.peers.items() if peer.plane == ("relay", relay_id)]
        closed = sorted(relay.sessions)
        for key in closed:
            session = relay.sessions.pop(key)
            self.load_changes.append((at, -1))
            self._emit(
                RelaySessionClosed(at=at, peer=key, relay=relay_id, session=session, reason="relay down")
            )
        relay.reserved.clear()
        self._later(at + RELAY_DOWN_DETECTION_MS, "relay_withdraw", relay_id)
        for key in hit:
            self.network_changed(self.peers[key], at, "relay")
        self._refresh_all(at)
        for key in closed:
            self.peers[key].silence_gen += 1  # the agent heard of it from TURN, not from silence

    def _on_relay_withdraw(self, at: int, relay_id: str) -> None:
        if not self.relays[relay_id].up:
            self._emit(RelayWithdrawn(at=at, relay=relay_id))

    def _on_relay_up(self, at: int, relay_id: str) -> None:
        relay = self.relays[relay_id]
        relay.up = True
        self._emit(RelayAnnounced(at=at, relay=relay_id, region=relay.region, capacity=relay.capacity))
        self._later(at, "health", relay_id)
        self._refresh_all(at)

    def _on_health(self, at: int, relay_id: str) -> None:
        relay = self.relays[relay_id]
        if not relay.up:
            return
        load = min(100, (100 * len(relay.sessions)) // max(1, relay.capacity))
        self._emit(
            RelayHealthMeasured(at=at, relay=relay_id, rtt_ms=2 * relay.rtt_ms, load=load, loss=relay.loss)
        )
        self._later(at + HEALTH_EVERY_MS, "health", relay_id)

    def _on_silent(self, at: int, payload: tuple[str, int, int, int]) -> None:
        """The agent's silence rule (`adapters.liveness`) fired: it reports PathSilent."""
        key, token, gen, silent = payload
        peer = self.peers[key]
        if peer.plane_token != token or peer.silence_gen != gen or not peer.present:
            return
        if peer.plane is None or self._plane_works(peer):
            return
        self._emit(PathSilent(at=at, peer=key, silent_ms=silent))

    def _on_probe_over(self, at: int, payload: tuple[str, int]) -> None:
        """A blacking-out probe timed out: the agent points WireGuard back at the live path."""
        key, token = payload
        peer = self.peers[key]
        if peer.plane_token != token or peer.probe_saved is None:
            return
        saved, peer.probe_saved = peer.probe_saved, None
        peer.plane = saved
        peer.plane_token += 1
        self._later(at + REKEY_AFTER_MS, "renew", (peer.key, peer.plane_token))
        self._update(peer, at)

    def _refresh_all(self, at: int) -> None:
        for peer in self.peers.values():
            if peer.present:
                self._update(peer, at)
                self._oracle_choose(peer, at)
