"""The simulated agents carrying out a hard-NAT (birthday) attempt (issue 16).

Owns what `SimNetwork` does with `StartHardNatAttempt` and `StopHardNatAttempt`:
the local agent plays the role the engine chose, the remote agent the other one
(it learned of the attempt through the rendezvous, as a real peer would), and
`birthday.run_attempt` sends every packet of it through two `TimedNat`s built
from the two sides' true NAT behaviours and the scenario's port rules. A pair
that met is reported as `HardNatPairMet` when both sides know it; the found
endpoint then carries a direct path (`working_endpoints`) until either side's
address changes; a peer with no WireGuard session yet (the attempt ran beside its
first round) has its first handshake carried by it, at the link's round trip and
loss (`switch_direct`). `HardNatSim` is a part of `SimNetwork` (`simulated_network`).
"""

from __future__ import annotations

import random

from natrelay.adapters.sim.birthday import PortRules, TimedNat, run_attempt
from natrelay.adapters.sim.nat_model import hard_pairing
from natrelay.adapters.sim.sim_model import MAX_HANDSHAKE_TRIES, REKEY_TIMEOUT_MS, SimPeer
from natrelay.core.commands import StartHardNatAttempt
from natrelay.core.events import HardNatPairMet

#: The local node's public address in the packet replay of an attempt.
LOCAL_IP = "37.255.255.1"


class HardNatSim:
    """`SimNetwork`'s part that executes hard-NAT attempts."""

    def birthday_reachable(self, peer: SimPeer) -> bool:
        """Does a direct path exist that only a birthday punch opens? The world's truth, the
        same in every run (the metrics count it as a direct path that existed; the oracle
        takes it): a hard pairing (`nat_model.hard_pairing`) of two live hosts not on one LAN.
        Whether a policy finds it is the policy's business."""
        return peer.present and peer.awake and not peer.lan and hard_pairing(self.local, peer.nat)  # type: ignore[attr-defined]

    def _start_hard_nat(self, peer: SimPeer, command: StartHardNatAttempt, now: int) -> None:
        acc = peer.account
        acc.hard_attempts += 1
        acc.hard_last_start = now
        if acc.hard_first_start is None:
            acc.hard_first_start = now
        peer.hard_token += 1
        if not (peer.present and peer.awake) or peer.lan:
            return
        host = command.endpoint.rpartition(":")[0]
        if host != peer.public_ip or (command.role != "easy" and command.endpoint != peer.reflexive):
            acc.hard_probes += command.probes  # aimed where the peer is not: spent for nothing
            return
        rng = random.Random(f"{self.seed}/hard-nat/{peer.index}/{command.attempt}")  # type: ignore[attr-defined]
        rules: PortRules = self.scenario.ports  # type: ignore[attr-defined]
        ours = TimedNat(self.local, LOCAL_IP, rules, rng)  # type: ignore[attr-defined]
        theirs = TimedNat(peer.nat, peer.public_ip, rules, rng, known_port=peer.port)
        outcome = run_attempt(
            ours,
            theirs,
            command.role,
            sockets=command.sockets,
            probes=command.probes,
            rate_per_s=command.rate_per_s,
            timeout_ms=command.deadline - now,
            one_way_ms=max(1, peer.rtt_ms // 2),
            loss=peer.loss,
            rng=rng,
        )
        acc.hard_probes += outcome.probes_sent
        if outcome.met_after_ms is None or outcome.b_endpoint is None or outcome.a_port is None:
            return
        endpoint = f"{peer.public_ip}:{outcome.b_endpoint[1]}"
        payload = (peer.key, peer.hard_token, command.attempt, endpoint, outcome.a_port, outcome.probes_sent)
        self._later(now + outcome.met_after_ms, "hard_nat_met", payload)  # type: ignore[attr-defined]

    def _stop_hard_nat(self, peer: SimPeer) -> None:
        peer.hard_token += 1  # a meeting still in flight is void: the sockets are closed

    def _on_hard_nat_met(self, at: int, payload: tuple[str, int, int, str, int, int]) -> None:
        key, token, attempt, endpoint, port, probes = payload
        peer: SimPeer = self.peers[key]  # type: ignore[attr-defined]
        if peer.hard_token != token or not (peer.present and peer.awake):
            return
        acc = peer.account
        acc.hard_met += 1
        acc.hard_met_10s += at - (acc.hard_last_start or at) <= 10_000
        peer.hard_endpoint, peer.hard_where = endpoint, (peer.public_ip, peer.port)
        peer.hard_unshaken = None if self._plane_works(peer) else endpoint  # type: ignore[attr-defined]
        self._update(peer, at)  # type: ignore[attr-defined]
        self._emit(  # type: ignore[attr-defined]
            HardNatPairMet(
                at=at, peer=key, attempt=attempt, endpoint=endpoint, local_port=port, probes_sent=probes
            )
        )

    def switch_direct(self, peer: SimPeer, endpoint: str, now: int) -> None:
        """`SwitchPath` to a direct endpoint. A WireGuard session (over a relay or another
        endpoint) roams to it at once; with none, as after a meeting beside the first round,
        the path works once the first handshake over it completes (a round trip; a lost one
        is retried after REKEY_TIMEOUT, as for any first handshake)."""
        fresh = endpoint == peer.hard_unshaken and not self._plane_works(peer)  # type: ignore[attr-defined]
        peer.hard_unshaken = None
        if not fresh:
            self._set_plane(peer, ("direct", endpoint), now)  # type: ignore[attr-defined]
            return
        took = self._handshake_ms(peer, peer.rtt_ms, now)  # type: ignore[attr-defined]
        self._set_plane(peer, None, now)  # type: ignore[attr-defined]
        at = now + (took if took is not None else MAX_HANDSHAKE_TRIES * REKEY_TIMEOUT_MS)
        self._later(at, "handshaken", (peer.key, endpoint, peer.plane_token))  # type: ignore[attr-defined]

    def _on_handshaken(self, at: int, payload: tuple[str, str, int]) -> None:
        key, endpoint, token = payload
        peer: SimPeer = self.peers[key]  # type: ignore[attr-defined]
        if peer.plane_token == token:  # nothing else was chosen meanwhile
            self._set_plane(peer, ("direct", endpoint), at)  # type: ignore[attr-defined]
