"""The reference model of the differential test (test_differential.py): the lifecycle, written from the docs.

Plain Python written from DESIGN.md, README.md and docs/policies.md; it shares
no code with core/ (not its transition table, its projections, its relay score
or its state names' constants) and imports only core's policy type. What it
covers, and what it leaves to the fuzzing machine, is listed in
test_differential.py. Commands are (kind, target) pairs: ("try", endpoint),
("connect", relay), ("switch", endpoint or relay), ("close", relay),
("forget", None).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from natrelay.core.policy import Policy

RELAYS = ("relay-a", "relay-b", "relay-c")
PEERS = tuple(base64.b64encode(bytes([i + 7]) * 32).decode() for i in range(2))
ENDPOINTS = {key: tuple(f"10.0.{i}.{j + 1}:51820" for j in range(3)) for i, key in enumerate(PEERS)}
RELIABILITY_KEEP = 0.8  # docs/policies.md: reliability EWMA, 0.8 old / 0.2 new
Command = tuple[str, str | None]


@dataclass
class RefPeer:
    state: str = "pending"
    failed: int = 0  # failed rounds since the last direct success
    attempt: int = 0  # number of the latest round
    round_deadline: int | None = None  # the open round, if any
    outstanding: list[str] = field(default_factory=list)  # its endpoints not yet timed out
    next_round_at: int | None = None
    pending: str | None = None  # the relay a connect is in flight to
    relay_deadline: int | None = None
    relays_failed: tuple[str, ...] = ()  # skipped by the ranking until none is left
    relay_retry_at: int | None = None
    last_handshake: int | None = None
    path: str | None = None  # endpoint or relay
    session: str | None = None


class Reference:
    """The lifecycle of DESIGN.md for the sub-policy above, one peer at a time."""

    def __init__(self, p: Policy, rtt: dict[str, int]) -> None:
        self.p, self.rtt = p, rtt
        self.peers: dict[str, RefPeer] = {}
        self.reliability = dict.fromkeys(RELAYS, 1.0)
        self.cache: dict[str, dict[str, tuple[int, int]]] = {k: {} for k in PEERS}  # ep -> (successes, last)
        self.track: dict[str, dict[str, list[int]]] = {k: {} for k in PEERS}  # relay -> [successes, failures]

    # --- the arithmetic of docs/policies.md

    def gap(self, failed: int) -> int:
        p = self.p
        base = min(float(p.backoff_cap_ms), p.step_interval_ms * p.backoff_factor ** min(failed - 1, 64))
        return max(1, int(base))

    def score(self, relay: str) -> float:
        w = self.p.weights
        latency = 1.0 - min(self.rtt[relay], w.latency_ceiling_ms) / w.latency_ceiling_ms
        total = w.latency * latency + w.load * 1.0 + w.capability * 1.0 + w.region * 0.0
        total += w.reliability * self.reliability[relay]
        return round(total * (1.0 - 0.0), 6)

    def ranking(self, key: str, peer: RefPeer) -> list[str]:
        worked = sorted((-s, f, r) for r, (s, f) in self.track[key].items() if s > 0)
        first = {r: i for i, (_, _, r) in enumerate(worked)}
        usable = [r for r in RELAYS if r not in peer.relays_failed]
        return sorted(usable, key=lambda r: (first.get(r, len(first)), -self.score(r), r))

    def endpoints(self, key: str) -> list[str]:
        cached = sorted(self.cache[key].items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return list(dict.fromkeys([ep for ep, _ in cached] + list(ENDPOINTS[key])))

    def outcome(self, key: str, relay: str, worked: bool) -> None:
        old = self.reliability[relay]
        self.reliability[relay] = RELIABILITY_KEEP * old + (1 - RELIABILITY_KEEP) * (1.0 if worked else 0.0)
        self.count(key, relay, worked)

    def count(self, key: str, relay: str, worked: bool) -> None:
        self.track[key].setdefault(relay, [0, 0])[0 if worked else 1] += 1

    def direct_success(self, key: str, endpoint: str, now: int) -> None:
        successes = self.cache[key].get(endpoint, (0, 0))[0]
        self.cache[key][endpoint] = (successes + 1, now)

    def refresh(self, key: str, endpoint: str, now: int) -> None:
        if endpoint in self.cache[key] and now > self.cache[key][endpoint][1]:
            self.cache[key][endpoint] = (self.cache[key][endpoint][0], now)

    # --- the lifecycle

    def _start_round(self, key: str, peer: RefPeer, now: int) -> list[Command]:
        ordered = self.endpoints(key)
        peer.attempt += 1
        width = min(self.p.parallel_endpoints, len(ordered))
        start = ((peer.attempt - 1) * width) % len(ordered)
        chosen = [ordered[(start + i) % len(ordered)] for i in range(width)]
        peer.round_deadline, peer.outstanding, peer.next_round_at = (
            now + self.p.attempt_timeout_ms,
            chosen,
            None,
        )
        return [("try", e) for e in chosen]

    def _eligible(self, peer: RefPeer, now: int) -> list[Command]:
        peer.state, peer.relays_failed, peer.relay_retry_at = "relay_eligible", (), now
        if peer.next_round_at is None:
            peer.next_round_at = now
        return []

    def _step(self, key: str, now: int) -> list[Command] | None:
        """One decision if one is due (its commands), else None."""
        p, peer = self.p, self.peers[key]
        if peer.round_deadline is not None and (peer.round_deadline <= now or not peer.outstanding):
            peer.round_deadline, peer.outstanding, peer.failed = None, [], peer.failed + 1
            peer.next_round_at = now + self.gap(peer.failed)
            return []
        if peer.state == "pending":
            if p.mode == "relay_first":
                return self._eligible(peer, now)
            peer.state = "direct_trying"
            return self._start_round(key, peer, now)
        if peer.state == "direct_trying" and peer.failed >= p.min_direct_attempts:
            return self._eligible(peer, now)
        waiting = peer.state in ("direct_trying", "relay_eligible") and peer.round_deadline is None
        if waiting and peer.next_round_at is not None and peer.next_round_at <= now:
            return self._start_round(key, peer, now)
        if peer.state == "relay_eligible":
            if peer.pending is not None:
                assert peer.relay_deadline is not None
                if peer.relay_deadline > now:
                    return None
                relay, peer.pending, peer.relay_deadline = peer.pending, None, None
                self.outcome(key, relay, worked=False)
                peer.relays_failed, peer.relay_retry_at = (*peer.relays_failed, relay), now
                return [("close", relay)]  # abandoned: no session in time
            if peer.relay_retry_at is None or peer.relay_retry_at > now:
                return None
            ranking = self.ranking(key, peer)
            if not ranking:  # every relay failed this peer: look again later
                peer.relays_failed, peer.relay_retry_at = (), now + p.relay_retry_ms
                return []
            peer.pending, peer.relay_deadline = ranking[0], now + p.relay_connect_timeout_ms
            peer.relay_retry_at = None
            return [("connect", ranking[0])]
        if peer.state in ("direct_connected", "relay_connected"):
            assert peer.last_handshake is not None
            if peer.last_handshake + p.handshake_freshness_ms <= now:
                relayed, path = peer.state == "relay_connected", peer.path
                peer.state = "relay_eligible" if relayed else "pending"
                peer.last_handshake, peer.session, peer.path, peer.next_round_at = None, None, None, now
                if relayed:
                    assert path is not None
                    peer.relays_failed, peer.relay_retry_at = (path,), now
                    return [("close", path)]
                peer.relays_failed = ()
                return []
        return None

    def advance(self, key: str, now: int, out: list[Command]) -> None:
        while self.peers[key].state != "removed" and (found := self._step(key, now)) is not None:
            out.extend(found)

    def next_deadline(self) -> int | None:
        times = []
        for peer in self.peers.values():
            if peer.state == "removed":
                continue
            if peer.round_deadline is not None:
                times.append(peer.round_deadline)
            elif peer.state in ("direct_trying", "relay_eligible") and peer.next_round_at is not None:
                times.append(peer.next_round_at)
            if peer.state == "relay_eligible":
                due = peer.relay_deadline if peer.pending is not None else peer.relay_retry_at
                times.extend(t for t in (due,) if t is not None)
            if peer.last_handshake is not None:
                times.append(peer.last_handshake + self.p.handshake_freshness_ms)
        return min(times, default=None)
