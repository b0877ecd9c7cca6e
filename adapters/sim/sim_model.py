"""The simulator's world: its timing constants, the peers and relays as they really are, and the accounts.

Owns the values the simulated network (`simulated_network`), its event handlers
(`sim_handlers`) and the oracle (`sim_oracle`) share: WireGuard's and the
relays' timing constants, `SimPeer` (a remote peer's true addresses, NAT and
data plane), `Relay` (its sessions and whether it is up) and `Account` (the
ground truth of one peer integrated over time, which the metrics read).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random

from natrelay.adapters.sim.nat_model import NAT_TYPES, NatBehaviour
from natrelay.adapters.sim.scenario import RelaySpec

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
#: When the agent reports a dead path (PathSilent) is `adapters.liveness`: the data plane's
#: heartbeat for a direct path with traffic (2.5 s), the counter watch otherwise (4-5 s).
#: What a direct probe of a peer whose path works costs the data plane:
#: "hitless": the probe goes beside the live path (a second socket or a disco-style ping);
#: "blackout": today's agent, which points WireGuard at the candidate, so the live path is
#: dark until the probe answers or its attempt times out.
PROBE_COSTS = ("hitless", "blackout")


def handshake_lost(seed: int, index: int, anchor: int, slot: int, loss: float) -> bool:
    """Whether a handshake try of peer `index` in REKEY_TIMEOUT slot `slot` after `anchor` is lost.

    WireGuard sends one initiation per peer per REKEY_TIMEOUT (wireguard-go
    `SendHandshakeInitiation` returns early within 5 s of the last one, whatever the
    endpoint), so a lost initiation or response costs every agent 5 s, the oracle too.
    The fate is a hash of the slot, counted from `anchor` (when a path last became
    possible after a network change: the world's truth, the same in every run), not a
    draw from a stream each run consumes differently: every run that tries in the same
    slot meets the same loss, and the oracle, which tries from the anchor on, is never
    unluckier than a policy (it stays the bound).
    """
    digest = hashlib.blake2b(f"{seed}/handshake/{index}/{anchor}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 >= (1.0 - loss) ** 2


def peer_key(seed: int, vantage: int, index: int) -> str:
    """A deterministic WireGuard-shaped public key for a simulated peer."""
    digest = hashlib.blake2b(f"{seed}/{vantage}/{index}".encode(), digest_size=32).digest()
    return base64.b64encode(digest).decode()


class Account:
    """Ground truth and path use of one peer, integrated over time (what the metrics read).

    `working` is the truth of the peer's data plane (its path carries traffic now);
    `on_plane` says the data plane points somewhere at all. A *switch* is a change
    of the working path: another endpoint, another relay, or a new session on the
    same relay after the old one died (a reconnection); a path that resumes after
    the peer slept, unchanged, is not one. A *recovery* starts when a network change
    (rebinding, waking on another network, a relay going down or coming back) leaves
    the peer's path not working; it lasts the time some path existed until the
    peer's path works again.
    """

    __slots__ = (
        "blackout_ms",
        "connected_possible_ms",
        "direct_possible",
        "direct_possible_ms",
        "failovers",
        "first_direct_at",
        "first_direct_possible_at",
        "first_join_at",
        "first_path_at",
        "hard_attempts",
        "hard_direct_at",
        "hard_first_start",
        "hard_last_start",
        "hard_met",
        "hard_met_10s",
        "hard_pair",
        "hard_probes",
        "last_t",
        "last_working",
        "on_plane",
        "possible",
        "possible_at_join",
        "possible_ms",
        "present",
        "present_ms",
        "recoveries",
        "recovering",
        "recovery_cause",
        "recovery_ms",
        "recovery_since",
        "relayed",
        "relayed_ms",
        "relayed_while_direct_ms",
        "switches",
        "working",
    )

    def __init__(self) -> None:
        self.last_t = 0
        self.present = self.possible = self.direct_possible = self.working = self.relayed = False
        self.on_plane = False
        self.present_ms = self.possible_ms = self.connected_possible_ms = 0
        self.direct_possible_ms = self.relayed_while_direct_ms = self.relayed_ms = 0
        self.blackout_ms = 0
        self.first_join_at: int | None = None
        self.first_path_at: int | None = None
        self.first_direct_at: int | None = None
        self.first_direct_possible_at: int | None = None
        self.possible_at_join = False
        self.switches = 0
        #: (path, session) the peer's traffic last worked on.
        self.last_working: tuple[str, ...] | None = None
        self.recovering = False
        self.recovery_ms = 0
        #: What left the path dead: "remote" (the peer's own network changed: a rebinding,
        #: waking elsewhere) or "relay" (its relay went down).
        self.recovery_cause = "remote"
        self.recovery_since = 0
        #: Finished recoveries after a remote change, and failovers after a relay went down:
        #: (when the change came, ms of possible time until the path worked; math.inf: never).
        self.recoveries: list[tuple[int, float]] = []
        self.failovers: list[tuple[int, float]] = []
        #: Hard NATs (issue 16): the pairing defeats a plain punch; attempts, meetings (within
        #: 10 s of their start), probes sent, the first attempt and the first direct path after it.
        self.hard_pair = False
        self.hard_attempts = self.hard_met = self.hard_met_10s = self.hard_probes = 0
        self.hard_first_start: int | None = None
        self.hard_last_start: int | None = None
        self.hard_direct_at: int | None = None

    def advance(self, now: int) -> None:
        span = now - self.last_t
        if span > 0:
            if self.present:
                self.present_ms += span
            if self.possible:
                self.possible_ms += span
                if self.working:
                    self.connected_possible_ms += span
                elif self.on_plane:
                    self.blackout_ms += span
                if self.recovering and not self.working:
                    self.recovery_ms += span
            if self.direct_possible:
                self.direct_possible_ms += span
                if self.relayed:
                    self.relayed_while_direct_ms += span
            if self.relayed:
                self.relayed_ms += span
        self.last_t = now

    def close(self) -> None:
        """End of the run: a recovery still open that had a path to recover to never ended."""
        if self.recovering and self.recovery_ms > 0:
            self.finish_recovery(math.inf)
        self.recovering = False

    def finish_recovery(self, ms: float) -> None:
        """A recovery ended after `ms` of possible time (inf: never): count it by its cause."""
        found = (self.recovery_since, ms)
        (self.failovers if self.recovery_cause == "relay" else self.recoveries).append(found)
        self.recovering = False


class SimPeer:
    """One remote peer as the simulator knows it (the truth, not what the engine believes)."""

    __slots__ = (
        "account",
        "awake",
        "dedicated_port",
        "hard_endpoint",
        "hard_token",
        "hard_unshaken",
        "hard_where",
        "index",
        "key",
        "known_reflexive",
        "lan",
        "lan_addr",
        "loss",
        "loss_anchor",
        "name",
        "nat",
        "nat_name",
        "plane",
        "plane_since",
        "plane_token",
        "port",
        "present",
        "probe_saved",
        "public_ip",
        "rtt_ms",
        "silence_gen",
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
        #: When a path last became possible after a network change (see `handshake_lost`).
        self.loss_anchor = 0
        self.present = False
        self.awake = True
        #: What the data plane uses: ("direct", endpoint) or ("relay", relay id), or None.
        self.plane: tuple[str, str] | None = None
        self.plane_token = 0
        #: When the data plane was last pointed at `plane` (the agent's silence clocks start there).
        self.plane_since = 0
        #: Where the data plane pointed before a blacking-out probe moved it (see PROBE_COSTS).
        self.probe_saved: tuple[str, str] | None = None
        #: Bumped when the agent learns of a dead path another way (a TURN error): no PathSilent then.
        self.silence_gen = 0
        #: A direct endpoint a hard-NAT attempt found; it works while the peer keeps the
        #: address and port it had then (`hard_where`). `hard_token` voids meetings in flight.
        self.hard_endpoint: str | None = None
        #: The endpoint of a meeting that came while no WireGuard session was up: the path
        #: taken to it carries the first handshake (`HardNatSim.switch_direct`).
        self.hard_unshaken: str | None = None
        self.hard_where: tuple[str, int] | None = None
        self.hard_token = 0
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

    __slots__ = ("capacity", "id", "loss", "region", "reserved", "rtt_ms", "sessions", "up")

    def __init__(self, spec: RelaySpec) -> None:
        self.id, self.region, self.rtt_ms = spec.id, spec.region, spec.rtt_ms
        self.capacity, self.loss = spec.capacity, spec.loss
        self.up = True
        #: peer key -> session id, established sessions only.
        self.sessions: dict[str, str] = {}
        #: Peers the oracle is setting a session up for (for a check, not counted as load:
        #: like any relay, it counts sessions when they open).
        self.reserved: set[str] = set()

    def has_room(self, peer: str = "") -> bool:
        """A session for `peer` fits now (it already holds one, or one is free)."""
        return peer in self.sessions or len(self.sessions) < self.capacity

    def setup_ms(self) -> int:
        """TURN allocate, channel bind, first handshake through it: about three round trips."""
        return 3 * self.rtt_ms


def sleep_length(bounds: tuple[int, int], seed: int, index: int) -> int:
    """How long peer `index` sleeps (ms), drawn in `bounds` from its own stream: the run's
    other draws stay what they were, and an exact length (low == high) draws nothing."""
    low, high = bounds
    return low if low == high else random.Random(f"sleep:{seed}:{index}").randint(low, high)
