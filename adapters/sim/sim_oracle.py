"""The oracle: the physical limit, as a strategy inside the simulator.

Owns the best any agent could do with perfect knowledge: `OracleStrategy` is a
part of `SimNetwork` (`simulated_network`) that, with `oracle=True`, puts every
peer on its best working path as soon as physics allows, with no engine.
"""

from __future__ import annotations

from natrelay.adapters.sim.sim_model import SimPeer


class OracleStrategy:
    """The oracle's choices, run from the simulator's handlers."""

    def _oracle_choose(self, peer: SimPeer, at: int) -> None:
        """The oracle's whole strategy: the best path that physically works, as fast as physics allows.

        Direct is best. While a direct handshake is still in flight, a relay that can be set up
        sooner carries the traffic (the earliest possible first path).
        """
        if not self.oracle:
            return
        direct = self.working_endpoints(peer)
        relay = self.best_relay() if peer.present and peer.awake else None
        relay_plane = None if relay is None else ("relay", relay.id)
        if direct:
            best: tuple[str, str] | None = ("direct", direct[0])
        else:
            best = relay_plane
        if best == peer.plane and self._plane_works(peer):
            return
        self._oracle_gen[peer.key] = generation = self._oracle_gen.get(peer.key, 0) + 1
        relayed = peer.plane is not None and peer.plane[0] == "relay" and best != peer.plane
        if relayed and not (direct and self._plane_works(peer)):
            self._close_session(peer, peer.plane[1], at)  # type: ignore[index]
        if best is None:
            self._set_plane(peer, None, at)
            return
        if direct and relay is not None and relay.setup_ms() < peer.rtt_ms and not self._plane_works(peer):
            self._later(at + relay.setup_ms(), "oracle_set", (peer.key, relay_plane, generation))
        delay = peer.rtt_ms if direct else relay.setup_ms()  # type: ignore[union-attr]
        self._later(at + delay, "oracle_set", (peer.key, best, generation))

    def _on_oracle_set(self, at: int, payload: tuple[str, tuple[str, str] | None, int]) -> None:
        key, best, generation = payload
        peer = self.peers[key]
        if self._oracle_gen.get(key) != generation:
            return
        if peer.plane is not None and peer.plane[0] == "relay" and best != peer.plane:
            self._close_session(peer, peer.plane[1], at)
        if best is not None and best[0] == "relay":
            relay = self.relays[best[1]]
            if not relay.up:
                return
            if key not in relay.sessions:
                self._sessions += 1
                relay.sessions[key] = f"{relay.id}-s{self._sessions}"
                self.load_changes.append((at, 1))
        self._set_plane(peer, best, at)
