"""The oracle: the physical limit, as a strategy inside the simulator.

Owns the best any agent could do with perfect knowledge: `OracleStrategy` is a
part of `SimNetwork` (`simulated_network`) that, with `oracle=True`, puts every
peer on its best working path as soon as physics allows, with no engine:

- it knows the truth at once (no candidate report delay, no silence to wait
  out), and a handshake costs one round trip, a relay session its setup; a lost
  handshake costs it WireGuard's 5 s retry like any agent (WireGuard sends one
  initiation per peer per REKEY_TIMEOUT, whatever the endpoint: no sender can
  resend sooner), with the same fate as every run's try in that slot
  (`sim_model.handshake_lost`);
- after a rebinding our filter admits, the peer's packets from its new port make
  WireGuard roam its direct session there in one round trip, with no handshake to lose,
  as they do for any agent (`roam_ms`);
- direct is best; a peer with no direct path takes the best relay with room;
- a hard pairing (issue 16: a symmetric NAT against a port-restricted cone, a
  firewall or another symmetric NAT) is direct too: the oracle knows which port
  the symmetric NAT maps next, so one packet each way opens the pair, a round
  trip like any punch (`birthday_endpoint`). No agent knows that port (a birthday
  punch guesses it: docs/hard-nat.md), so no policy goes direct sooner, and the
  bound holds for every policy, with or without hard-NAT attempts;
- it never overbooks a relay: a slot is reserved while a session is set up;
  a peer that finds every relay full waits in line and gets the first slot that
  frees (a session closed, a relay back up), so it never gives up on a relay;
- with `oracle_bridge`, a relay that can be set up sooner than a direct
  handshake completes carries the traffic meanwhile (the earliest first path,
  at the price of a switch and some relayed time); without it, the peer waits
  for the direct handshake. `run.run_policy` runs both and reports, metric by
  metric, the better: the oracle row is the physical limit of each metric.
"""

from __future__ import annotations

from natrelay.adapters.sim.sim_model import SimPeer

Plane = tuple[str, str]


def birthday_endpoint(peer: SimPeer) -> str:
    """The oracle's direct path to a hard-paired peer: valid while the peer keeps the public
    address and port it has now (a rebinding or a new network asks for a new punch)."""
    return f"birthday:{peer.public_ip}:{peer.port}"


class OracleStrategy:
    """The oracle's choices, run from the simulator's handlers."""

    def _oracle_choose(self, peer: SimPeer, at: int, roam_ms: int | None = None) -> None:
        """Put the peer on its best working path as fast as physics allows (see the module doc);
        `roam_ms`: the peer's packets reach us from its new address on their own (a rebinding
        our filter admits), so its direct session roams there in that long, with no handshake."""
        if not self.oracle:
            return
        key = peer.key
        live = peer.present and peer.awake
        if peer.present and not peer.awake:
            return  # asleep: nothing to carry; what it holds stays, as an agent's sessions do
        direct = self.working_endpoints(peer)
        works = self._plane_works(peer)
        relay = None
        best: Plane | None
        if direct:
            best = ("direct", direct[0])
        elif works and peer.plane is not None and peer.plane[0] == "relay":
            best = peer.plane  # keep a working relay session
        else:
            relay = self.best_relay(key) if live else None
            best = None if relay is None else ("relay", relay.id)
        if best is not None and best == peer.plane and works:
            self._oracle_waiting.pop(key, None)
            return
        self._oracle_gen[key] = generation = self._oracle_gen.get(key, 0) + 1
        self._oracle_unreserve(key)
        if best is None:
            self._oracle_release(peer, at)
            self._set_plane(peer, None, at)
            if live:
                self._oracle_waiting[key] = None  # every relay is full (or down): wait in line
            return
        self._oracle_waiting.pop(key, None)
        if best[0] == "direct":
            took: int | None = peer.rtt_ms
            if not works and roam_ms is not None:
                took = roam_ms
            elif not works:
                self._oracle_release(peer, at)
                took = self._handshake_ms(peer, peer.rtt_ms, at)
                bridge = self.best_relay(key) if self.oracle_bridge else None
                if bridge is not None and bridge.setup_ms() < peer.rtt_ms:
                    bridged = self._handshake_ms(peer, bridge.setup_ms(), at)
                    if bridged is not None:
                        bridge.reserved.add(key)
                        self._later(at + bridged, "oracle_set", (key, ("relay", bridge.id), generation))
            if took is not None:
                self._later(at + took, "oracle_set", (key, best, generation))
        else:
            assert relay is not None
            self._oracle_release(peer, at)
            setup = self._handshake_ms(peer, relay.setup_ms(), at)
            if setup is None:
                return  # every try lost (a 90 s outage of the peer's link): as for any agent
            relay.reserved.add(key)
            self._later(at + setup, "oracle_set", (key, best, generation))

    def _oracle_unreserve(self, key: str) -> None:
        for relay in self.relays.values():
            relay.reserved.discard(key)

    def _oracle_release(self, peer: SimPeer, at: int) -> None:
        """Close the peer's relay sessions (the oracle holds one only while it carries traffic)."""
        for relay in self.relays.values():
            if peer.key in relay.sessions:
                self._close_session(peer, relay.id, at)

    def _oracle_serve_waiting(self, at: int) -> None:
        """A relay slot freed or a relay came back: the peers waiting in line try again, in order."""
        if not self.oracle or not self._oracle_waiting:
            return
        for key in list(self._oracle_waiting):
            if key in self._oracle_waiting and self.best_relay(key) is not None:
                self._oracle_waiting.pop(key, None)
                self._oracle_choose(self.peers[key], at)

    def _on_oracle_set(self, at: int, payload: tuple[str, Plane | None, int]) -> None:
        key, best, generation = payload
        peer = self.peers[key]
        if self._oracle_gen.get(key) != generation:
            return
        if best is not None and best[0] == "relay":
            relay = self.relays[best[1]]
            relay.reserved.discard(key)
            if not relay.up or not relay.has_room(key):
                self._oracle_choose(peer, at)
                return
            if key not in relay.sessions:
                self._sessions += 1
                relay.sessions[key] = f"{relay.id}-s{self._sessions}"
                self.load_changes.append((at, 1))
            self._set_plane(peer, best, at)
            return
        self._oracle_unreserve(key)
        held = peer.plane if peer.plane is not None and peer.plane[0] == "relay" else None
        self._set_plane(peer, best, at)
        if held is not None:
            self._close_session(peer, held[1], at)
