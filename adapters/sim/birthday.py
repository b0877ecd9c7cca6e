"""A hard-NAT (birthday) attempt replayed packet by packet through two NATs (issue 16).

Owns the part of the NAT model that only matters when ports are guessed: how a NAT
allocates public ports (random, or sequential with a delta), how long an idle
mapping lives, how many mappings it holds at most; and `run_attempt`, which sends
every packet of one attempt through two such NATs on a lossy link and reports the
first pair of sockets that met both ways. Nothing here knows the odds: a probe gets
in only when it reaches a live mapping whose filter admits its source, exactly as
`nat_model.NatBox` decides a plain punch.

Pure given its seeded generator; never reads a clock.
"""

from __future__ import annotations

import heapq
import random
from typing import Literal

import attrs

from natrelay.adapters.sim.nat_model import SERVER, Addr, NatBehaviour

Allocation = Literal["random", "sequential"]
Role = Literal["hard", "easy", "both"]
#: Ports a NAT hands out (RFC 6056's range; Linux's MASQUERADE --random-fully uses 1024-65535).
LOW_PORT, HIGH_PORT = 1024, 65535
#: The inside port of WireGuard's socket; the hard side's extra sockets bind above it.
WG_PORT = 51820
#: The hard side re-sends from every socket this often (its mappings stay fresh, and a
#: probe that opened the easy side's pinhole after the first send gets a second chance).
RESEND_MS = 1_000


@attrs.frozen
class PortRules:
    """How a NAT that translates ports picks them, and its mapping table's limits."""

    allocation: Allocation = "random"
    #: Sequential allocation: each new mapping's port is the previous one plus `delta`.
    delta: int = 1
    #: At most this many live mappings (a router's session table); 0: no limit.
    mapping_limit: int = 0
    #: An idle mapping (and its filter state) is forgotten after this long.
    mapping_timeout_ms: int = 120_000


class _Mapping:
    """One live mapping: the inside socket, its key, when last used, where it sent."""

    __slots__ = ("inside", "key", "sent", "used")

    def __init__(self, inside: int, key: tuple[int, Addr | None], used: int) -> None:
        self.inside, self.key, self.used = inside, key, used
        self.sent: set[Addr] = set()


class TimedNat:
    """A NAT with live, expiring mappings (inside port, destination) -> public port."""

    __slots__ = ("behaviour", "by_port", "known_port", "last_port", "mappings", "public_ip", "rng", "rules")

    def __init__(
        self,
        behaviour: NatBehaviour,
        public_ip: str,
        rules: PortRules,
        rng: random.Random,
        known_port: int | None = None,
    ) -> None:
        self.behaviour, self.public_ip, self.rules, self.rng = behaviour, public_ip, rules, rng
        #: The public port of WireGuard's first mapping (the reflexive port the peer was told),
        #: so the replay agrees with the endpoints the engine knows; None: the NAT picks it.
        self.known_port = known_port
        #: (inside port, destination, or None when the mapping ignores it) -> public port.
        self.mappings: dict[tuple[int, Addr | None], int] = {}
        self.by_port: dict[int, _Mapping] = {}
        self.last_port = rng.randint(LOW_PORT, HIGH_PORT)

    def _alive(self, port: int, now: int) -> bool:
        entry = self.by_port.get(port)
        if entry is None:
            return False
        if now - entry.used > self.rules.mapping_timeout_ms:
            self.mappings.pop(entry.key, None)
            del self.by_port[port]
            return False
        return True

    def _new_port(self) -> int:
        span = HIGH_PORT - LOW_PORT + 1
        for _ in range(span):
            if self.rules.allocation == "sequential":
                port = LOW_PORT + (self.last_port - LOW_PORT + self.rules.delta) % span
            else:
                port = self.rng.randint(LOW_PORT, HIGH_PORT)
            self.last_port = port
            if port not in self.by_port:
                return port
        raise RuntimeError("the NAT ran out of ports")  # pragma: no cover - 64k mappings

    def outbound(self, inside: int, destination: Addr, now: int) -> int | None:
        """Send from `inside` to `destination`: the public port used, or None (dropped)."""
        behaviour = self.behaviour
        if behaviour.udp_blocked:
            return None
        if behaviour.mapping == "none":
            port = self.known_port if inside == WG_PORT and self.known_port is not None else inside
            if not self._alive(port, now):
                self.by_port[port] = _Mapping(inside, (inside, None), now)
        else:
            key = (inside, None if behaviour.mapping == "endpoint_independent" else destination)
            mapped = self.mappings.get(key)
            if mapped is None or not self._alive(mapped, now):
                limit = self.rules.mapping_limit
                if limit and len(self.by_port) >= limit:
                    for old in list(self.by_port):
                        self._alive(old, now)
                    if len(self.by_port) >= limit:
                        return None  # the table is full: the packet is dropped
                if inside == WG_PORT and self.known_port is not None and not self.by_port:
                    mapped = self.last_port = self.known_port
                else:
                    mapped = self._new_port()
                self.mappings[key] = mapped
                self.by_port[mapped] = _Mapping(inside, key, now)
            port = mapped
        entry = self.by_port[port]
        entry.used = now
        entry.sent.add(destination)
        return port

    def inbound(self, port: int, source: Addr, now: int) -> int | None:
        """A packet from `source` to our public `port`: the inside port it reaches, or None."""
        behaviour = self.behaviour
        if behaviour.udp_blocked or not self._alive(port, now):
            return None
        entry = self.by_port[port]
        filtering = behaviour.filtering
        if filtering == "address_dependent":
            admitted = any(ip == source[0] for ip, _ in entry.sent)
        elif filtering == "address_port_dependent":
            admitted = source in entry.sent
        else:
            admitted = True
        if not admitted:
            return None
        entry.used = now
        return entry.inside


@attrs.frozen
class Outcome:
    """What one attempt did, from side A's point of view."""

    #: ms after the start when both sides knew the pair (None: no pair met by the deadline).
    met_after_ms: int | None
    #: B's public endpoint of the pair, and A's public port of it.
    b_endpoint: Addr | None
    a_port: int | None
    #: Probes the easy side(s) sent, packets the hard side(s) sent from their sockets.
    probes_sent: int
    socket_packets: int
    #: Sockets the hard side(s) opened (what the budget allows, no more).
    sockets_opened: int


def _complement(role: Role) -> Role:
    return "easy" if role == "hard" else "hard" if role == "easy" else "both"


def run_attempt(
    a: TimedNat,
    b: TimedNat,
    role_a: Role,
    *,
    sockets: int,
    probes: int,
    rate_per_s: int,
    timeout_ms: int,
    one_way_ms: int,
    loss: float,
    rng: random.Random,
) -> Outcome:
    """Replay one attempt: A plays `role_a`, B the other side, both with the same budget.

    Both NATs first map WireGuard's socket toward the rendezvous server (the
    server-reflexive endpoints each side knows of the other). A hard side opens
    `sockets` sockets and sends from each to the other's reflexive endpoint every
    RESEND_MS; an easy side sends `probes` probes from WireGuard's socket, `rate_per_s`
    a second, to ports of the other's address: the ports just above its reflexive
    port first (a sequential NAT allocates there), then random ones. A side that
    receives anything answers from the socket it arrived on; the first answer that
    arrives is the pair. Every packet is lost with probability `loss`.
    """
    nats = (a, b)
    reflexive = [(nat.public_ip, nat.outbound(WG_PORT, SERVER, 0) or 0) for nat in nats]
    roles: tuple[Role, Role] = (role_a, _complement(role_a))
    queue: list[tuple[int, int, int, int, int, Addr, bool]] = []
    order = 0

    def send(at: int, side: int, inside: int, to: Addr, answer: bool) -> None:
        nonlocal order
        port = nats[side].outbound(inside, to, at)
        if port is None or rng.random() < loss:
            return
        order += 1
        heapq.heappush(queue, (at + one_way_ms, order, 1 - side, to[1], port, to, answer))

    opened = probes_sent = socket_packets = 0
    plan: list[tuple[int, int, int, Addr, bool]] = []  # (at, side, inside port, destination, a probe)
    for side in (0, 1):
        other = reflexive[1 - side]
        if roles[side] in ("hard", "both"):
            opened += sockets
            for i in range(sockets):
                for at in range(i % RESEND_MS, timeout_ms, RESEND_MS):
                    plan.append((at, side, WG_PORT + 1 + i, other, False))
        if roles[side] in ("easy", "both"):
            for j, port in enumerate(_probe_order(other[1], probes, rng)):
                # an easy side probes from WireGuard's port; a symmetric one from its sockets in turn
                inside = WG_PORT if roles[side] == "easy" else WG_PORT + 1 + j % max(1, sockets)
                plan.append((j * 1000 // rate_per_s, side, inside, (other[0], port), True))
    plan.sort(key=lambda item: item[0])
    step = 0
    while step < len(plan) or queue:
        if not queue or (step < len(plan) and plan[step][0] <= queue[0][0]):
            at, side, inside, to, probe = plan[step]
            step += 1
            if probe:
                probes_sent += 1
            else:
                socket_packets += 1
            send(at, side, inside, to, False)
            continue
        at, _, side, port, source_port, _to, answer = heapq.heappop(queue)
        if at >= timeout_ms:
            break
        source: Addr = (nats[1 - side].public_ip, source_port)
        reached = nats[side].inbound(port, source, at)
        if reached is None:
            continue
        if answer:  # `side` got the answer: the pair is its `port` and `source`
            if side == 0:
                return Outcome(at, source, port, probes_sent, socket_packets, opened)
            return Outcome(at, (nats[1].public_ip, port), source_port, probes_sent, socket_packets, opened)
        send(at, side, reached, source, True)
    return Outcome(None, None, None, probes_sent, socket_packets, opened)


def _probe_order(known: int, count: int, rng: random.Random) -> list[int]:
    """Ports to probe: the window just above the known port (shuffled) first, then random others."""
    span = HIGH_PORT - LOW_PORT + 1
    window = [LOW_PORT + (known - LOW_PORT + k) % span for k in range(1, count // 2 + 1)]
    rng.shuffle(window)
    chosen = set(window)
    while len(window) < min(count, span - 1):
        port = rng.randint(LOW_PORT, HIGH_PORT)
        if port != known and port not in chosen:
            chosen.add(port)
            window.append(port)
    return window
