"""The NAT simulator: a seeded, discrete-event network behind the NetworkAdapter interface.

Owns one vantage: a local node behind its NAT, the remote peers of the mesh
(each behind its own NAT, on a link with latency and loss), the relays, and
everything that happens to them over time (joins, leaves, rebinding, sleep and
wake on a new network, relay outages and recoveries). It executes the engine's
commands the way the real data plane would and emits what a real node would
observe; it also records the ground truth (which paths physically exist, when)
in an `Account` per peer, which the metrics read.

Rules:
- no wall clock, no global randomness: every draw comes from generators seeded
  by the run's seed, and events at the same millisecond keep insertion order;
- a direct attempt works only as WireGuard hole punching works (`sim_nat.punch`);
  a lost handshake is retried after REKEY_TIMEOUT (5 s), as WireGuard does, also
  through a relay (the peer's lossy link is on both paths); once a session is up,
  probing another endpoint is one authenticated round trip (WireGuard roaming);
- established paths renew their handshake every 120 s (REKEY_AFTER_TIME) while
  the path physically works; a broken path simply falls silent;
- `oracle=True` runs without an engine: the simulator itself puts every peer on
  its best working path as soon as it exists (the physical limit).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import random
from collections.abc import Sequence
from typing import Any

from natrelay.adapters.sim.nat_model import NAT_TYPES, NatBehaviour, hairpin_works, punch, roaming_survives
from natrelay.adapters.sim.scenario import PeerSpec, RelaySpec, Scenario
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import (
    CandidatesUpdated,
    Event,
    HandshakeObserved,
    NatObserved,
    PeerAdded,
    PeerRemoved,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
)

#: WireGuard renews a handshake every 2 minutes while traffic flows (REKEY_AFTER_TIME).
REKEY_AFTER_MS = 120_000
#: A lost handshake initiation is retried after 5 s (REKEY_TIMEOUT), for up to 90 s.
REKEY_TIMEOUT_MS = 5_000
MAX_HANDSHAKE_TRIES = 18
#: Relays report their health this often.
HEALTH_EVERY_MS = 30_000
#: The coordination server withdraws a relay that stopped answering after this long.
RELAY_DOWN_DETECTION_MS = 15_000
#: A TURN connect to a dead relay fails after this long.
RELAY_CONNECT_FAIL_MS = 3_000


def peer_key(seed: int, vantage: int, index: int) -> str:
    """A deterministic WireGuard-shaped public key for a simulated peer."""
    digest = hashlib.blake2b(f"{seed}/{vantage}/{index}".encode(), digest_size=32).digest()
    return base64.b64encode(digest).decode()


class Account:
    """Ground truth and path use of one peer, integrated over time (what the metrics read)."""

    __slots__ = (
        "connected_possible_ms",
        "direct_possible",
        "direct_possible_ms",
        "first_direct_at",
        "first_direct_possible_at",
        "first_join_at",
        "first_path_at",
        "last_t",
        "possible",
        "possible_at_join",
        "possible_ms",
        "present",
        "present_ms",
        "relayed",
        "relayed_ms",
        "relayed_while_direct_ms",
        "switches",
        "working",
    )

    def __init__(self) -> None:
        self.last_t = 0
        self.present = self.possible = self.direct_possible = self.working = self.relayed = False
        self.present_ms = self.possible_ms = self.connected_possible_ms = 0
        self.direct_possible_ms = self.relayed_while_direct_ms = self.relayed_ms = 0
        self.first_join_at: int | None = None
        self.first_path_at: int | None = None
        self.first_direct_at: int | None = None
        self.first_direct_possible_at: int | None = None
        self.possible_at_join = False
        self.switches = 0

    def advance(self, now: int) -> None:
        span = now - self.last_t
        if span > 0:
            if self.present:
                self.present_ms += span
            if self.possible:
                self.possible_ms += span
                if self.working:
                    self.connected_possible_ms += span
            if self.direct_possible:
                self.direct_possible_ms += span
                if self.relayed:
                    self.relayed_while_direct_ms += span
            if self.relayed:
                self.relayed_ms += span
        self.last_t = now


class SimPeer:
    """One remote peer as the simulator knows it (the truth, not what the engine believes)."""

    __slots__ = (
        "account",
        "awake",
        "dedicated_port",
        "index",
        "key",
        "known_reflexive",
        "lan",
        "lan_addr",
        "loss",
        "name",
        "nat",
        "nat_name",
        "plane",
        "plane_token",
        "port",
        "present",
        "public_ip",
        "rtt_ms",
        "stale",
    )

    def __init__(self, key: str, name: str, index: int) -> None:
        self.key, self.name, self.index = key, name, index
        self.nat_name = "port_restricted_cone"
        self.nat: NatBehaviour = NAT_TYPES[self.nat_name]
        self.lan = False
        self.lan_addr = ""
        self.public_ip = ""
        self.port = 0
        self.dedicated_port = 0
        self.known_reflexive = ""
        self.stale: str | None = None
        self.rtt_ms = 50
        self.loss = 0.0
        self.present = False
        self.awake = True
        #: What the data plane uses: ("direct", endpoint) or ("relay", relay id), or None.
        self.plane: tuple[str, str] | None = None
        self.plane_token = 0
        self.account = Account()

    @property
    def reflexive(self) -> str:
        return f"{self.public_ip}:{self.port}"

    @property
    def dedicated(self) -> str:
        return f"{self.public_ip}:{self.dedicated_port}"

    def candidates(self) -> tuple[str, ...]:
        """What the coordination server reports: the reflexive endpoint it saw, then the others."""
        found = [self.known_reflexive]
        if self.stale and self.stale not in found:
            found.append(self.stale)
        if self.lan_addr not in found:
            found.append(self.lan_addr)
        return tuple(found)


class Relay:
    """A relay: where, how fast, how full, and whether it is up."""

    __slots__ = ("capacity", "id", "loss", "region", "rtt_ms", "sessions", "up")

    def __init__(self, spec: RelaySpec) -> None:
        self.id, self.region, self.rtt_ms = spec.id, spec.region, spec.rtt_ms
        self.capacity, self.loss = spec.capacity, spec.loss
        self.up = True
        #: peer key -> session id, established sessions only.
        self.sessions: dict[str, str] = {}

    def setup_ms(self) -> int:
        """TURN allocate, channel bind, first handshake through it: about three round trips."""
        return 3 * self.rtt_ms


class SimNetwork:
    """The simulated network for one vantage, implementing `NetworkAdapter`."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int,
        vantage: int = 0,
        peer_indexes: Sequence[int] | None = None,
        oracle: bool = False,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.vantage = vantage
        self.oracle = oracle
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
                self._later(at + dyn.sleep_ms, "wake", (key, new_nat))
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
            return ()
        return (peer.reflexive,) if result.peer_endpoint == "reflexive" else (peer.dedicated,)

    def best_relay(self) -> Relay | None:
        up = [r for r in self.relays.values() if r.up and len(r.sessions) < r.capacity]
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
        acc.present = peer.present
        acc.direct_possible = live and bool(self.working_endpoints(peer))
        acc.possible = acc.direct_possible or (live and any(r.up for r in self.relays.values()))
        acc.working = self._plane_works(peer)
        acc.relayed = acc.working and peer.plane is not None and peer.plane[0] == "relay"
        if acc.working and acc.first_path_at is None:
            acc.first_path_at = now
        if acc.direct_possible and acc.first_direct_possible_at is None:
            acc.first_direct_possible_at = now
        if acc.working and not acc.relayed and acc.first_direct_at is None:
            acc.first_direct_at = now

    def _set_plane(self, peer: SimPeer, plane: tuple[str, str] | None, now: int) -> None:
        if plane == peer.plane:
            return
        if plane is not None and peer.plane is not None:
            peer.account.switches += 1
        elif plane is not None and peer.account.first_path_at is not None:
            peer.account.switches += 1  # back on a path after losing one
        peer.plane = plane
        peer.plane_token += 1
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
            if command.endpoint is not None:
                self._set_plane(peer, ("direct", command.endpoint), now)
            elif command.relay is not None:
                self._set_plane(peer, ("relay", command.relay), now)
        elif type(command) is CloseRelaySession:
            self._close_session(peer, command.relay, now)
        elif type(command) is ForgetPeer:
            for relay in self.relays.values():
                if peer.key in relay.sessions:
                    self._close_session(peer, relay.id, now)
            self._set_plane(peer, None, now)

    def _handshake_ms(self, peer: SimPeer, rtt: int) -> int | None:
        """Time to complete a handshake over a lossy link, or None if every try is lost."""
        survive = (1.0 - peer.loss) ** 2
        draw = self._loss_rng[peer.key]
        for attempt in range(MAX_HANDSHAKE_TRIES):
            if draw.random() < survive:
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
        reached = self._direct_result(peer, command.endpoint)
        if reached is None:
            return
        if self._plane_works(peer):
            # a WireGuard session is up (over the relay or another endpoint): the probe is an
            # authenticated keepalive and its answer, one round trip, no new handshake
            survive = (1.0 - peer.loss) ** 2
            took = peer.rtt_ms if self._loss_rng[peer.key].random() < survive else None
        else:
            took = self._handshake_ms(peer, peer.rtt_ms)
        if took is None or now + took > command.deadline:
            return
        self._later(now + took, "handshake", (peer.key, reached, peer.plane_token, False))

    def _connect_relay(self, peer: SimPeer, command: ConnectViaRelay, now: int) -> None:
        relay = self.relays.get(command.relay)
        if relay is None:
            return
        if not relay.up:
            if now + RELAY_CONNECT_FAIL_MS < command.deadline:
                self._later(now + RELAY_CONNECT_FAIL_MS, "relay_failed", (peer.key, relay.id, "unreachable"))
            return
        if len(relay.sessions) >= relay.capacity:
            self._later(now + relay.rtt_ms, "relay_failed", (peer.key, relay.id, "at capacity"))
            return
        draw = self._loss_rng[peer.key]
        # the first handshake through the relay still crosses the peer's lossy link
        handshake = self._handshake_ms(peer, relay.setup_ms())
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

    def _emit(self, event: Event) -> None:
        if not self.oracle:
            self._out.append(event)

    # ------------------------------------------------------------ handlers

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
        self._update(peer, at)
        self._emit(PeerRemoved(at=at, peer=peer.key))
        if self.oracle:
            self._set_plane(peer, None, at)

    def _on_rebind(self, at: int, payload: tuple[str, str | None]) -> None:
        """The peer's NAT gives it a new public port mid-session (a NAT rebinding)."""
        peer = self.peers[payload[0]]
        old = peer.reflexive
        peer.port = 20000 + (peer.port - 20000 + 4999) % 40000
        peer.dedicated_port = peer.port + 1
        self._update(peer, at)
        self._later(at + self.scenario.dynamics.candidate_report_delay_ms, "report", peer.key)
        if peer.plane == ("direct", old) and not peer.lan and roaming_survives(self.local):
            # the peer's keepalives now come from the new port; WireGuard roams to it
            new = self._direct_result(peer, peer.reflexive)
            if new is not None:
                self._later(at + peer.rtt_ms, "handshake", (peer.key, new, peer.plane_token, True))
        self._oracle_choose(peer, at)

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
        self._update(peer, at)
        self._later(at + self.scenario.dynamics.candidate_report_delay_ms, "report", peer.key)
        if (
            peer.plane is not None
            and peer.plane[0] == "direct"
            and self.local.filtering in ("open", "endpoint_independent")
            and not self.local.udp_blocked
        ):
            # the peer's WireGuard initiates toward us from its new address; an open filter lets it in
            new = self._direct_result(peer, peer.reflexive)
            if new is not None:
                self._later(at + peer.rtt_ms, "handshake", (peer.key, new, peer.plane_token, True))
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
        relay.sessions[key] = session
        self.load_changes.append((at, 1))
        self._emit(RelaySessionEstablished(at=at, peer=key, relay=relay_id, session=session))

    def _on_relay_failed(self, at: int, payload: tuple[str, str, str]) -> None:
        key, relay_id, reason = payload
        self._pending.pop((key, relay_id), None)
        self._emit(RelaySessionFailed(at=at, peer=key, relay=relay_id, reason=reason))

    def _on_relay_down(self, at: int, relay_id: str) -> None:
        relay = self.relays[relay_id]
        if not relay.up:
            return
        relay.up = False
        for key in sorted(relay.sessions):
            session = relay.sessions.pop(key)
            self.load_changes.append((at, -1))
            self._emit(
                RelaySessionClosed(at=at, peer=key, relay=relay_id, session=session, reason="relay down")
            )
        self._later(at + RELAY_DOWN_DETECTION_MS, "relay_withdraw", relay_id)
        self._refresh_all(at)

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

    def _refresh_all(self, at: int) -> None:
        for peer in self.peers.values():
            if peer.present:
                self._update(peer, at)
                self._oracle_choose(peer, at)

    # ------------------------------------------------------------- oracle

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
    "relay_down": SimNetwork._on_relay_down,
    "relay_withdraw": SimNetwork._on_relay_withdraw,
    "relay_up": SimNetwork._on_relay_up,
    "health": SimNetwork._on_health,
    "oracle_set": SimNetwork._on_oracle_set,
}
