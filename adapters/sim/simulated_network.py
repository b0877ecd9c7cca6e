"""The NAT simulator: a seeded, discrete-event network behind the NetworkAdapter interface.

Owns one vantage: a local node behind its NAT, the remote peers of the mesh (each
behind its own NAT, on a link with latency and loss), the relays, and everything that
happens to them over time (joins, leaves, rebinding, sleep, wake, relay outages). It executes the engine's
commands the way the real data plane would and emits what a real node would observe;
it records the ground truth (which paths exist, when) in an `Account` per peer.

Rules:
- no wall clock, no global randomness: every draw comes from generators seeded
  by the run's seed, and events at the same millisecond keep insertion order;
- a direct attempt works only as WireGuard hole punching works (`nat_model.punch`);
  a lost or unanswered handshake is retried after REKEY_TIMEOUT (5 s), as WireGuard
  does, also through a relay; once a session is up, probing another endpoint is one
  authenticated round trip (WireGuard roaming);
- established paths renew their handshake every 120 s (REKEY_AFTER_TIME) while
  the path physically works; a broken path simply falls silent;
- `oracle=True` runs without an engine: the simulator itself puts every peer on
  its best working path as soon as it exists (the physical limit).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from typing import Any

from natrelay.adapters.liveness import PROBE_EVERY_S, counter_silence_at_ms, heartbeat_dead_at_ms
from natrelay.adapters.sim.nat_model import NAT_TYPES, NatBehaviour, hairpin_works, hard_pairing, punch
from natrelay.adapters.sim.scenario import PeerSpec, Scenario
from natrelay.adapters.sim.sim_handlers import NetworkHandlers
from natrelay.adapters.sim.sim_hard_nat import HardNatSim
from natrelay.adapters.sim.sim_model import (
    MAX_HANDSHAKE_TRIES,
    PROBE_COSTS,
    REKEY_AFTER_MS,
    REKEY_TIMEOUT_MS,
    RELAY_CONNECT_FAIL_MS,
    Account,
    Relay,
    SimPeer,
    handshake_lost,
    peer_key,
    sleep_length,
)
from natrelay.adapters.sim.sim_oracle import OracleStrategy, birthday_endpoint
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    StartHardNatAttempt,
    StopHardNatAttempt,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import Event, NatObserved

__all__ = ["Account", "SimNetwork", "SimPeer"]


class SimNetwork(NetworkHandlers, OracleStrategy, HardNatSim):
    """The simulated network for one vantage, implementing `NetworkAdapter`."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int,
        vantage: int = 0,
        peer_indexes: Sequence[int] | None = None,
        oracle: bool = False,
        oracle_bridge: bool = True,
        probe_cost: str = "hitless",
    ) -> None:
        if probe_cost not in PROBE_COSTS:
            raise ValueError(f"probe cost {probe_cost!r}: expected one of {', '.join(PROBE_COSTS)}")
        self.scenario = scenario
        self.seed = seed
        self.vantage = vantage
        self.oracle = oracle
        #: The oracle carries traffic over a relay while a slower direct handshake completes.
        self.oracle_bridge = oracle_bridge
        self.probe_cost = probe_cost
        #: Connects that reached a relay with no room (refused "at capacity").
        self.over_capacity = 0
        local_name = scenario.local_nats[vantage % len(scenario.local_nats)]
        base = NAT_TYPES[local_name]
        self.local_name = local_name
        self.local = NatBehaviour(
            mapping=base.mapping,
            filtering=base.filtering,
            hairpinning=scenario.local_hairpinning,
            mapping_timeout_ms=base.mapping_timeout_ms,
            udp_blocked=base.udp_blocked,
        )
        self._queue: list[tuple[int, int, str, Any]] = []
        self._order = 0
        self._out: list[Event] = []
        self._sessions = 0
        self._ips = 0
        #: Per-peer draws for handshake loss: independent of other peers' traffic.
        self._loss_rng: dict[str, random.Random] = {}
        self.relays = {spec.id: Relay(spec) for spec in scenario.relays}
        #: (time, +1/-1): relay sessions opened and closed, for peak load and the plot.
        self.load_changes: list[tuple[int, int]] = []
        #: (peer, relay) -> session id of connects in flight.
        self._pending: dict[tuple[str, str], str] = {}
        self.peers: dict[str, SimPeer] = {}
        self._oracle_gen: dict[str, int] = {}
        #: Peers the oracle could not give a relay slot yet, in arrival order.
        self._oracle_waiting: dict[str, None] = {}
        self.by_name: dict[str, SimPeer] = {}
        self._build(peer_indexes)
        # what this node's agent measured of its own NAT (fleet statistics in the log)
        self._emit(NatObserved(at=0, nat_type=local_name))

    # ------------------------------------------------------------ building

    def _later(self, at: int, kind: str, payload: Any = None) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at, self._order, kind, payload))

    def _new_ip(self) -> str:
        self._ips += 1
        n = self._ips
        # public, routable-looking addresses (37.0.0.0/8): private ranges would change
        # how policies that sort private candidates first see them
        return f"37.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def _build(self, peer_indexes: Sequence[int] | None) -> None:
        scenario, dyn = self.scenario, self.scenario.dynamics
        rng = random.Random(f"{self.seed}/scenario")
        specs: list[tuple[int, PeerSpec]] = []
        weights = [w for _, w in scenario.mix]
        nats = [n for n, _ in scenario.mix]
        # every generated peer is drawn from one seeded stream, whatever the vantage split
        for index in range(scenario.peers):
            nat = rng.choices(nats, weights)[0]
            rtt = rng.randint(*scenario.rtt_ms)
            loss = rng.uniform(*scenario.loss)
            if rng.random() < dyn.lossy_share:
                loss = max(loss, dyn.lossy_loss)
            spec = PeerSpec(
                name=f"peer-{index:05d}",
                nat=nat,
                rtt_ms=rtt,
                loss=loss,
                join_ms=rng.randint(0, dyn.join_window_ms),
                lan=rng.random() < dyn.lan_share,
                stale_candidate=rng.random() < dyn.stale_candidate_share,
            )
            specs.append((index, spec))
        offset = scenario.peers
        specs.extend((offset + i, spec) for i, spec in enumerate(scenario.peer_list))
        wanted = None if peer_indexes is None else set(peer_indexes)
        for index, spec in specs:
            if wanted is not None and index not in wanted:
                continue
            self._add_spec(index, spec)
        self._schedule_dynamics(rng, [index for index, _ in specs], wanted)
        for relay in self.relays.values():
            self._later(0, "relay_up", relay.id)
        for outage in scenario.outages:
            self._later(outage.at_ms, "relay_down", outage.relay)
            self._later(outage.at_ms + outage.duration_ms, "relay_up", outage.relay)
        for event in scenario.events:
            if event.kind.startswith("relay_"):
                self._later(event.at_ms, event.kind, event.relay)
            elif event.peer in self.by_name:
                self._later(event.at_ms, event.kind, (self.by_name[event.peer].key, event.nat))

    def _add_spec(self, index: int, spec: PeerSpec) -> None:
        peer = SimPeer(peer_key(self.seed, 0, index), spec.name, index)
        peer.nat_name, peer.nat = spec.nat, NAT_TYPES[spec.nat]
        peer.rtt_ms, peer.loss, peer.lan = spec.rtt_ms, spec.loss, spec.lan
        if spec.lan:
            peer.rtt_ms = 2
            peer.lan_addr = f"10.0.{(index >> 8) & 255}.{(index & 255) or 1}:51820"
        else:
            peer.lan_addr = f"192.168.{1 + index % 200}.{10 + index % 240}:51820"
        peer.public_ip = self._new_ip()
        peer.port = 20000 + (index * 7919) % 40000
        peer.dedicated_port = peer.port + 1
        peer.known_reflexive = peer.reflexive
        if spec.stale_candidate:
            peer.stale = f"{self._new_ip()}:{peer.port}"
        self.peers[peer.key] = peer
        self.by_name[peer.name] = peer
        self._loss_rng[peer.key] = random.Random(f"{self.seed}/loss/{index}")
        self._later(spec.join_ms, "join", (peer.key, None))

    def _schedule_dynamics(self, rng: random.Random, indexes: list[int], wanted: set[int] | None) -> None:
        scenario, dyn = self.scenario, self.scenario.dynamics
        start = int(scenario.duration_ms * dyn.active_from)
        stop = max(start + 1, int(scenario.duration_ms * dyn.active_until))
        generated = [i for i in indexes if i < scenario.peers]
        for index in generated:
            roll = rng.random()
            at = rng.randint(start, stop)
            new_nat = rng.choices([n for n, _ in scenario.mix], [w for _, w in scenario.mix])[0]
            if wanted is not None and index not in wanted:
                continue
            key = peer_key(self.seed, 0, index)
            if roll < dyn.rebinding_share:
                self._later(at, "rebind", (key, None))
            elif roll < dyn.rebinding_share + dyn.network_change_share:
                self._later(at, "sleep", (key, None))
                self._later(at + sleep_length(dyn.sleep_ms, self.seed, index), "wake", (key, new_nat))
            elif roll < dyn.rebinding_share + dyn.network_change_share + dyn.leave_share:
                self._later(at, "leave", (key, None))
                self._later(at + dyn.rejoin_after_ms, "join", (key, None))

    # -------------------------------------------------------------- truth

    def working_endpoints(self, peer: SimPeer) -> tuple[str, ...]:
        """The peer's endpoints a direct WireGuard path works on now."""
        if not (peer.present and peer.awake):
            return ()
        if peer.lan:
            return (peer.lan_addr, peer.reflexive) if hairpin_works(self.local) else (peer.lan_addr,)
        result = punch(self.local, peer.nat)
        if not result.works:
            if self.oracle:
                return (birthday_endpoint(peer),) if self.birthday_reachable(peer) else ()
            found = peer.hard_endpoint  # a hard-NAT attempt's pair, while both keep their mappings
            return (found,) if found is not None and peer.hard_where == (peer.public_ip, peer.port) else ()
        return (peer.reflexive,) if result.peer_endpoint == "reflexive" else (peer.dedicated,)

    def best_relay(self, peer: str = "") -> Relay | None:
        up = [r for r in self.relays.values() if r.up and r.has_room(peer)]
        return min(up, key=lambda r: (r.rtt_ms, r.id)) if up else None

    def _plane_works(self, peer: SimPeer) -> bool:
        plane = peer.plane
        if plane is None or not (peer.present and peer.awake):
            return False
        if plane[0] == "direct":
            return plane[1] in self.working_endpoints(peer)
        relay = self.relays.get(plane[1])
        return relay is not None and relay.up and peer.key in relay.sessions

    def _update(self, peer: SimPeer, now: int) -> None:
        """Integrate the peer's account up to now, then take the new ground truth."""
        acc = peer.account
        acc.advance(now)
        live = peer.present and peer.awake
        was_working, was_possible = acc.working, acc.possible
        acc.present = peer.present
        acc.direct_possible = live and (bool(self.working_endpoints(peer)) or self.birthday_reachable(peer))
        acc.possible = acc.direct_possible or (live and any(r.up for r in self.relays.values()))
        if acc.possible and not was_possible:
            peer.loss_anchor = now
        acc.working = self._plane_works(peer)
        acc.on_plane = peer.plane is not None
        acc.relayed = acc.working and peer.plane is not None and peer.plane[0] == "relay"
        if acc.working:
            plane = peer.plane
            assert plane is not None
            using = (*plane, self.relays[plane[1]].sessions[peer.key]) if plane[0] == "relay" else plane
            if acc.last_working is not None and using != acc.last_working:
                acc.switches += 1  # another path, or a new session after the old one died
            acc.last_working = using
            if acc.recovering:
                acc.finish_recovery(acc.recovery_ms)
        elif was_working and peer.present and not self.oracle:
            self._schedule_silence(peer, now)
        if acc.working and acc.first_path_at is None:
            acc.first_path_at = now
        if acc.direct_possible and acc.first_direct_possible_at is None:
            acc.first_direct_possible_at = now
        if acc.working and not acc.relayed and acc.first_direct_at is None:
            acc.first_direct_at = now
        if live and not acc.hard_pair and not peer.lan:
            acc.hard_pair = hard_pairing(self.local, peer.nat)
        if (
            acc.working
            and not acc.relayed
            and (acc.hard_first_start is not None or (self.oracle and acc.hard_pair))
            and acc.hard_direct_at is None
        ):
            acc.hard_direct_at = now

    def _schedule_silence(self, peer: SimPeer, died_at: int) -> None:
        """The agent will notice the dead path as `adapters.liveness` says: with the shared data
        plane (hitless probes) a direct path's heartbeat, else the receive-counter watch."""
        if peer.plane is not None and peer.plane[0] == "direct" and self.probe_cost == "hitless":
            at, silent = heartbeat_dead_at_ms(died_at, peer.plane_since)
        else:
            at, silent = counter_silence_at_ms(died_at, peer.plane_since)
        self._later(at, "silent", (peer.key, peer.plane_token, peer.silence_gen, silent))

    def network_changed(self, peer: SimPeer, now: int, cause: str = "remote") -> None:
        """A change of the network left the peer's path dead: a recovery starts (see Account);
        `cause` is "remote" (the peer's network) or "relay" (its relay went down)."""
        self._update(peer, now)
        peer.loss_anchor = now
        acc = peer.account
        live = peer.present and peer.awake
        if live and not acc.working and acc.first_path_at is not None and not acc.recovering:
            acc.recovering, acc.recovery_ms, acc.recovery_cause, acc.recovery_since = True, 0, cause, now

    def _set_plane(self, peer: SimPeer, plane: tuple[str, str] | None, now: int) -> None:
        peer.probe_saved = None
        if plane == peer.plane:
            self._update(peer, now)  # e.g. a new session on the same relay
            return
        peer.plane = plane
        peer.plane_token += 1
        peer.plane_since = now
        if plane is not None:
            self._later(now + REKEY_AFTER_MS, "renew", (peer.key, peer.plane_token))
        self._update(peer, now)

    # ------------------------------------------------------------ commands

    def execute(self, command: Command, now: int) -> None:
        peer = self.peers.get(command.peer)
        if peer is None:
            return
        if type(command) is TryDirectEndpoint:
            self._try_direct(peer, command, now)
        elif type(command) is ConnectViaRelay:
            self._connect_relay(peer, command, now)
        elif type(command) is SwitchPath:
            if command.endpoint is not None and command.relay is None:
                self.switch_direct(peer, command.endpoint, now)
            elif command.relay is not None:
                self._set_plane(peer, ("relay", command.relay), now)
        elif type(command) is CloseRelaySession:
            self._close_session(peer, command.relay, now)
        elif type(command) is StartHardNatAttempt:
            self._start_hard_nat(peer, command, now)
        elif type(command) is StopHardNatAttempt:
            self._stop_hard_nat(peer)
        elif type(command) is ForgetPeer:
            for relay in self.relays.values():
                if peer.key in relay.sessions:
                    self._close_session(peer, relay.id, now)
            self._set_plane(peer, None, now)

    def _handshake_ms(self, peer: SimPeer, rtt: int, now: int) -> int | None:
        """Time to complete a handshake started now over a lossy link, or None if every try is
        lost: a lost try is retried REKEY_TIMEOUT later (`sim_model.handshake_lost`)."""
        if not peer.loss:
            return rtt
        for attempt in range(MAX_HANDSHAKE_TRIES):
            at = now + attempt * REKEY_TIMEOUT_MS
            slot = (at - peer.loss_anchor) // REKEY_TIMEOUT_MS
            if not handshake_lost(self.seed, peer.index, peer.loss_anchor, slot, peer.loss):
                return rtt + attempt * REKEY_TIMEOUT_MS
        return None

    def _direct_result(self, peer: SimPeer, endpoint: str) -> str | None:
        """The endpoint WireGuard ends up on if a punch toward `endpoint` works, else None."""
        if not (peer.present and peer.awake):
            return None
        if endpoint == peer.lan_addr:
            return endpoint if peer.lan else None
        target = "reflexive" if endpoint == peer.reflexive else "stale"
        if peer.lan:
            return peer.reflexive if target == "reflexive" and hairpin_works(self.local) else None
        result = punch(self.local, peer.nat, target)
        if not result.works:
            return None
        return peer.reflexive if result.peer_endpoint == "reflexive" else peer.dedicated

    def _try_direct(self, peer: SimPeer, command: TryDirectEndpoint, now: int) -> None:
        if (
            self.probe_cost == "blackout"
            and peer.plane is not None
            and peer.plane != ("direct", command.endpoint)
        ):
            # today's agent: WireGuard is pointed at the candidate, the live path goes dark
            saved = peer.probe_saved or peer.plane
            peer.plane = ("direct", command.endpoint)
            peer.plane_token += 1
            peer.probe_saved = saved
            self._update(peer, now)
            self._later(command.deadline, "probe_over", (peer.key, peer.plane_token))
        reached = self._direct_result(peer, command.endpoint)
        if reached is None:
            return
        if self._plane_works(peer):
            # a WireGuard session is up (over the relay or another endpoint): the probe is an
            # authenticated ping and its answer, one round trip, no new handshake
            took = self._probe_ms(peer, now, command.deadline)
        else:
            took = self._handshake_ms(peer, peer.rtt_ms, now)
        if took is None or now + took > command.deadline:
            return
        self._later(now + took, "handshake", (peer.key, reached, peer.plane_token, False))

    def _probe_ms(self, peer: SimPeer, now: int, deadline: int) -> int | None:
        """Time to a probe's answer, or None: the shared data plane pings every PROBE_EVERY_S
        until answered or the deadline; today's agent (blackout) has one try."""
        survive = (1.0 - peer.loss) ** 2
        draw = self._loss_rng[peer.key]
        every = round(PROBE_EVERY_S * 1000)
        sent = now
        while sent + peer.rtt_ms <= deadline:
            if draw.random() < survive:
                return sent - now + peer.rtt_ms
            if self.probe_cost != "hitless":
                return None
            sent += every
        return None

    def _connect_relay(self, peer: SimPeer, command: ConnectViaRelay, now: int) -> None:
        relay = self.relays.get(command.relay)
        if relay is None:
            return
        if not relay.up:
            if now + RELAY_CONNECT_FAIL_MS < command.deadline:
                self._refuse(peer.key, relay.id, now, now + RELAY_CONNECT_FAIL_MS, "unreachable")
            return
        if not (peer.present and peer.awake):
            self._retry_through_relay(peer.key, command, now)  # nobody answers this initiation
            return
        if len(relay.sessions) >= relay.capacity:
            self.over_capacity += 1
            self._refuse(peer.key, relay.id, now, now + relay.rtt_ms, "at capacity")
            return
        draw = self._loss_rng[peer.key]
        # the first handshake through the relay still crosses the peer's lossy link
        handshake = self._handshake_ms(peer, relay.setup_ms(), now)
        if handshake is None:
            return
        took = handshake
        while relay.loss and draw.random() < relay.loss and took < 30_000:
            took += 1_000  # a TURN retransmission
        self._sessions += 1
        session = f"{relay.id}-s{self._sessions}"
        self._pending[(peer.key, relay.id)] = session
        self._later(now + took, "relay_established", (peer.key, relay.id, session))

    def _close_session(self, peer: SimPeer, relay_id: str, now: int) -> None:
        self._pending.pop((peer.key, relay_id), None)
        relay = self.relays.get(relay_id)
        if relay is not None and relay.sessions.pop(peer.key, None) is not None:
            self.load_changes.append((now, -1))
            self._oracle_serve_waiting(now)
        if peer.plane == ("relay", relay_id):
            self._set_plane(peer, None, now)
        else:
            self._update(peer, now)

    # ---------------------------------------------------------- the clock

    def next_event_at(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def poll(self, now: int) -> Sequence[Event]:
        queue = self._queue
        while queue and queue[0][0] <= now:
            at, _, kind, payload = heapq.heappop(queue)
            _HANDLERS[kind](self, at, payload)
        out, self._out = self._out, []
        return out

    def run_oracle(self, end: int) -> None:
        """Drive the oracle (no engine): process every event up to `end`."""
        while self._queue and self._queue[0][0] <= end:
            self.poll(self._queue[0][0])
        self.finish(end)

    def finish(self, end: int) -> None:
        """Close every account at `end` (call once, after the run)."""
        for peer in self.peers.values():
            self._update(peer, end)
            peer.account.close()

    def _emit(self, event: Event) -> None:
        if not self.oracle:
            self._out.append(event)


_HANDLERS: dict[str, Any] = {
    "join": SimNetwork._on_join,
    "leave": SimNetwork._on_leave,
    "rebind": SimNetwork._on_rebind,
    "sleep": SimNetwork._on_sleep,
    "wake": SimNetwork._on_wake,
    "report": SimNetwork._on_report,
    "handshake": SimNetwork._on_handshake,
    "renew": SimNetwork._on_renew,
    "relay_established": SimNetwork._on_relay_established,
    "relay_failed": SimNetwork._on_relay_failed,
    "relay_retry": SimNetwork._on_relay_retry,
    "handshaken": SimNetwork._on_handshaken,
    "relay_down": SimNetwork._on_relay_down,
    "relay_withdraw": SimNetwork._on_relay_withdraw,
    "relay_up": SimNetwork._on_relay_up,
    "health": SimNetwork._on_health,
    "oracle_set": SimNetwork._on_oracle_set,
    "silent": SimNetwork._on_silent,
    "probe_over": SimNetwork._on_probe_over,
    "hard_nat_met": SimNetwork._on_hard_nat_met,
}
