"""The engine: observations in, decisions and commands out. Sans-I/O.

Rules of this module:
- `handle(observation)` is the only way the engine learns anything new. It
  folds the observation into the projections (`apply`), decides, folds each
  decision it takes, and returns them with the commands to execute.
- `apply(event)` is the pure fold used both live and by replay: applying a
  log's events in order rebuilds exactly the state the live engine had.
- The engine never reads a clock: `now` is the largest event time seen, so a
  clock that jumps backwards cannot move timers back. `next_deadline()` says
  when to feed the next `Tick`.
- Every choice is deterministic: peers are visited in key order, relays are
  ranked with ties broken by id, jitter is a hash of (peer, round).
- An observation that does not apply (unknown peer, late or contradictory) is
  answered with an `ObservationRejected` decision, never silently dropped.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from . import lifecycle as lc
from .attempts import AttemptCounts
from .commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from .direct_cache import DirectCache
from .events import (
    KNOWN_CAPABILITIES,
    CandidatesUpdated,
    DirectAttemptStarted,
    DirectAttemptTimedOut,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    LocalAddressesChanged,
    NatObserved,
    ObservationRejected,
    PathLost,
    PathSilent,
    PathUpgraded,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAbandoned,
    RelayAnnounced,
    RelayChosen,
    RelayEligibilityReached,
    RelayHealthMeasured,
    RelayPathSelected,
    RelayScore,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayUnavailable,
    RelayWithdrawn,
    StepRequested,
    Tick,
)
from .jitter import unit_hash
from .peers import PeerRecord
from .policy import Policy
from .relay_cache import RelayCache
from .relay_registry import RelayRegistry

#: Announcements may not claim validity further ahead than this.
MAX_ANNOUNCEMENT_LIFETIME_MS = 86_400_000
SNAPSHOT_FORMAT = 1


@attrs.frozen
class Reaction:
    """What one observation led to: decisions to append, commands to execute."""

    decisions: tuple[Event, ...]
    commands: tuple[Command, ...]


class EngineError(Exception):
    """The engine was asked something impossible (e.g. an event it cannot handle)."""


class Engine:
    """The NAT-traversal decision engine for one node."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.now = 0
        #: This node's NAT as its agent last measured it (statistics, never a decision input).
        self.local_nat = "unknown"
        self.peers: dict[str, PeerRecord] = {}
        self.attempts = AttemptCounts()
        self.direct_cache = DirectCache(self.policy.direct_cache_size, self.policy.direct_cache_max_age_ms)
        self.relay_cache = RelayCache()
        self.registry = RelayRegistry()
        self._timers: list[tuple[int, str]] = []
        self._decisions: list[Event] = []
        self._commands: list[Command] = []
        self._releasing: tuple[CloseRelaySession, ...] = ()
        self._plans: dict[type, Any] = {}
        #: relay -> sessions this node holds or is connecting through it (issue 13: capacity).
        self.relay_held: dict[str, int] = {}
        #: Relays that were full by this node's count and had a slot freed while handling.
        self._freed: set[str] = set()
        #: peer -> (candidates, cache entries, policy, valid until, endpoints): see endpoints_to_try.
        self._endpoints_memo: dict[str, tuple[Any, Any, Any, int, tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ fold

    def apply(self, event: Event) -> None:
        """Fold one logged event (observation or decision) into the state."""
        if event.at > self.now:
            self.now = event.at
        kind = type(event)
        plan = self._plans.get(kind) or self._plan(kind)
        check, steps = plan
        if check is not None and check(self, event) is not None:
            return
        peer = getattr(event, "peer", None)
        record = self.peers.get(peer) if peer is not None else None
        before = _holds(record)
        for step in steps:
            step(event)
        if peer is not None:
            after = _holds(self.peers.get(peer))
            if after != before:
                held = self.relay_held
                for relay in before:
                    held[relay] -= 1
                    if (
                        relay not in after
                        and relay in self.registry.relays
                        and self.relay_headroom(relay) == 1
                    ):
                        self._freed.add(relay)
                for relay in after:
                    held[relay] = held.get(relay, 0) + 1

    def _plan(self, kind: type) -> tuple[Callable[[Engine, Any], str | None] | None, tuple[Any, ...]]:
        """Which projections fold events of this type: computed once per type (replay is hot)."""
        steps: list[Any] = [
            projection.apply
            for projection in (self.attempts, self.direct_cache, self.relay_cache, self.registry)
            if kind in projection.HANDLES
        ]
        fold = _FOLDS.get(kind)
        if fold is not None:
            steps.append(fold.__get__(self))
        plan = (_CHECKS.get(kind), tuple(steps))
        self._plans[kind] = plan
        return plan

    def _transition(self, record: PeerRecord, event: Event) -> None:
        state = lc.next_state(record.state, lc.TRIGGER_OF_EVENT[event.TYPE])
        if state != record.state:
            record.state = state
            record.since = event.at

    def _fold_peer_added(self, event: PeerAdded) -> None:
        record = self.peers.get(event.peer)
        if record is None:
            record = self.peers[event.peer] = PeerRecord(event.peer, event.at)
        elif record.state == lc.REMOVED:
            self._transition(record, event)
            record.reset_paths()
        record.candidates = event.candidates
        record.name = event.name
        record.access = event.access
        record.preferred_region = event.preferred_region
        record.nat_type = event.nat_type

    def _fold_peer_removed(self, event: PeerRemoved) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.reset_paths()

    def _fold_candidates(self, event: CandidatesUpdated) -> None:
        record = self.peers[event.peer]
        if event.nat_type is not None:
            record.nat_type = event.nat_type
        if event.candidates == record.candidates:
            return  # nothing new to try (a duplicate report changes nothing)
        record.candidates = event.candidates
        if record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
            if record.next_round_at is None or record.next_round_at > event.at:
                record.next_round_at = event.at
        elif record.state in lc.CONNECTED_STATES:
            # probe the new candidates at once, beside the live path (issue 13)
            record.probes_done = 0
            record.next_probe_at = event.at

    def _fold_local_addresses(self, event: LocalAddressesChanged) -> None:
        """Our own addresses changed: every peer is probed again at once (issue 13)."""
        for record in self.peers.values():
            if record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
                if record.next_round_at is None or record.next_round_at > event.at:
                    record.next_round_at = event.at
            elif record.state in lc.CONNECTED_STATES:
                record.probes_done = 0
                record.next_probe_at = event.at

    def _fold_handshake(self, event: HandshakeObserved) -> None:
        record = self.peers[event.peer]
        # max(): a late or repeated report never makes what we know older
        if event.endpoint is not None:
            if record.direct_seen_at is None or event.at >= record.direct_seen_at:
                record.direct_seen = event.endpoint
                record.direct_seen_at = event.at
            if record.state == lc.DIRECT_CONNECTED and record.path == event.endpoint:
                record.last_handshake_at = max(record.last_handshake_at or 0, event.at)
        elif record.state == lc.RELAY_CONNECTED and record.path == event.relay:
            record.last_handshake_at = max(record.last_handshake_at or 0, event.at)

    def _fold_session_failed(self, event: RelaySessionFailed) -> None:
        record = self.peers[event.peer]
        record.relay_pending = record.relay_deadline = None
        record.relays_failed += (event.relay,)
        record.relay_retry_at = event.at

    def _fold_nat(self, event: NatObserved) -> None:
        self.local_nat = event.nat_type

    def _fold_policy(self, event: PolicySet) -> None:
        self.policy = event.policy
        self.direct_cache.configure(event.policy.direct_cache_size, event.policy.direct_cache_max_age_ms)

    def _fold_attempt_started(self, event: DirectAttemptStarted) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        if event.purpose == "connect":
            record.next_round_at = None
        else:
            record.next_probe_at = None

    def _fold_round_failed(self, event: DirectRoundFailed) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        if event.purpose == "connect":
            failed = self.attempts.attempts(event.peer)
            jitter = unit_hash(event.peer, event.attempt)
            record.next_round_at = event.at + self.policy.round_gap_ms(failed - 1, jitter)
        elif record.state == lc.DIRECT_CONNECTED:
            record.next_probe_at = None  # the live path stays; nothing new answered
        else:
            record.probes_done += 1
            record.next_probe_at = event.at + self.policy.probe_gap_ms(record.probes_done)

    def _fold_eligible(self, event: RelayEligibilityReached) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.relays_failed = ()
        record.relay_retry_at = event.at
        if record.next_round_at is None:
            record.next_round_at = event.at

    def _fold_relay_chosen(self, event: RelayChosen) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.relay_pending = event.relay
        record.relay_deadline = event.deadline
        record.relay_retry_at = None

    def _fold_relay_abandoned(self, event: RelayAbandoned) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.relay_pending = record.relay_deadline = None
        record.relays_failed += (event.relay,)
        record.relay_retry_at = event.at

    def _fold_relay_unavailable(self, event: RelayUnavailable) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.relays_failed = ()
        record.relay_retry_at = event.retry_at

    def _fold_relay_path(self, event: RelayPathSelected) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.path, record.session = event.relay, event.session
        record.last_handshake_at = event.at
        record.relay_pending = record.relay_deadline = record.relay_retry_at = None
        record.next_round_at = None
        record.probes_done = 0
        on_relay = self.policy.upgrade_probe_on_relay
        record.next_probe_at = event.at if on_relay else event.at + self.policy.probe_gap_ms(0)

    def _fold_direct_path(self, event: DirectPathSelected | PathUpgraded) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        record.path, record.session = event.endpoint, None
        record.last_handshake_at = event.at
        record.relay_pending = record.relay_deadline = record.relay_retry_at = None
        record.relays_failed = ()
        record.next_round_at = record.next_probe_at = None
        record.probes_done = 0

    def _fold_path_lost(self, event: PathLost) -> None:
        record = self.peers[event.peer]
        self._transition(record, event)
        if event.path_kind == "direct":
            record.lost_endpoint, record.lost_at = event.path, event.at
            record.relays_failed = ()
        else:
            record.relays_failed = (event.path,)
            record.relay_retry_at = event.at
        record.path = record.session = record.last_handshake_at = None
        record.next_round_at = event.at

    # ------------------------------------------------------------ rejections

    def _rejection(self, event: Event) -> str | None:
        """Why an observation cannot apply, or None. The fold and the decision agree on it."""
        check = _CHECKS.get(type(event))
        return None if check is None else check(self, event)

    def _live(self, peer: str) -> PeerRecord | None:
        record = self.peers.get(peer)
        return record if record is not None and record.state != lc.REMOVED else None

    def _not_in_mesh(self, event: Any) -> str | None:
        return None if self._live(event.peer) else f"peer {event.peer} is not in the mesh"

    def _check_timeout(self, event: DirectAttemptTimedOut) -> str | None:
        if not self._live(event.peer):
            return f"peer {event.peer} is not in the mesh"
        round_ = self.attempts.open_round(event.peer)
        if round_ is None or round_.attempt != event.attempt or event.endpoint not in round_.outstanding:
            return f"no open attempt {event.attempt} on {event.endpoint}: late or duplicate"
        return None

    def _check_relay_known(self, event: Any) -> str | None:
        return None if self.registry.knows(event.relay) else f"relay {event.relay} is not announced"

    def _check_silent(self, event: PathSilent) -> str | None:
        record = self._live(event.peer)
        if record is None:
            return f"peer {event.peer} is not in the mesh"
        if record.state not in lc.CONNECTED_STATES:
            return f"the peer has no path to lose (it is {record.state})"
        return None

    def _check_announced(self, event: RelayAnnounced) -> str | None:
        unknown = event.capabilities & ~KNOWN_CAPABILITIES
        if unknown:
            return f"announcement of {event.relay} claims unknown capability bits {unknown:#x}"
        if event.expires_at is not None:
            if event.expires_at <= event.at:
                return f"announcement of {event.relay} expired at {event.expires_at}"
            if event.expires_at - event.at > MAX_ANNOUNCEMENT_LIFETIME_MS:
                return f"announcement of {event.relay} claims validity more than 24 h ahead"
        return None

    def _check_established(self, event: RelaySessionEstablished) -> str | None:
        record = self._live(event.peer)
        if record is None:
            return f"peer {event.peer} is not in the mesh"
        if record.state != lc.RELAY_ELIGIBLE or record.relay_pending != event.relay:
            return f"no connect through {event.relay} is pending (peer is {record.state})"
        return None

    def _check_failed(self, event: RelaySessionFailed) -> str | None:
        record = self._live(event.peer)
        if record is None:
            return f"peer {event.peer} is not in the mesh"
        if record.relay_pending != event.relay:
            return f"no connect through {event.relay} is pending: late or duplicate"
        return None

    def _check_closed(self, event: RelaySessionClosed) -> str | None:
        record = self._live(event.peer)
        if record is None:
            return f"peer {event.peer} is not in the mesh"
        if record.state != lc.RELAY_CONNECTED or (record.path, record.session) != (
            event.relay,
            event.session,
        ):
            return f"session {event.session} via {event.relay} is not the peer's path (already released)"
        return None

    # --------------------------------------------------------------- decide

    def handle(self, observation: Event) -> Reaction:
        """Fold an observation, decide, and return the decisions and commands."""
        if observation.KIND != "observation":
            raise EngineError(f"handle() takes observations; {observation.TYPE} is a decision")
        reason = self._rejection(observation)
        if reason is None and type(observation) is PeerRemoved:
            self._releasing = self._held_relays(self.peers[observation.peer])
        self._freed = set()
        self.apply(observation)
        self._decisions, self._commands = [], []
        if reason is not None:
            self._reject(observation, reason)
        else:
            react = _REACTIONS.get(type(observation))
            if react is not None:
                react(self, observation)
        if self._freed:
            self._serve_waiting()
        reaction = Reaction(tuple(self._decisions), tuple(self._commands))
        self._decisions, self._commands = [], []
        return reaction

    def _decide(self, decision: Event, *commands: Command) -> None:
        self.apply(decision)
        self._decisions.append(decision)
        self._commands.extend(commands)

    def _reject(self, observation: Event, reason: str) -> None:
        peer = getattr(observation, "peer", None)
        self._decide(ObservationRejected(at=self.now, observation=observation.TYPE, peer=peer, reason=reason))
        session = getattr(observation, "session", None)
        if (
            type(observation) is RelaySessionEstablished
            and session is not None
            and not self._in_use(observation)
        ):
            self._commands.append(
                CloseRelaySession(peer=observation.peer, relay=observation.relay, session=session)
            )

    def _in_use(self, event: RelaySessionEstablished) -> bool:
        """A duplicated report of the session the peer uses now: closing it would cut the path."""
        record = self._live(event.peer)
        return record is not None and (record.path, record.session) == (event.relay, event.session)

    def _react_peer_added(self, event: PeerAdded) -> None:
        self._advance(self.peers[event.peer])

    @staticmethod
    def _held_relays(record: PeerRecord) -> tuple[CloseRelaySession, ...]:
        held = []
        if record.state == lc.RELAY_CONNECTED and record.path is not None:
            held.append(CloseRelaySession(peer=record.key, relay=record.path, session=record.session))
        if record.relay_pending is not None:
            held.append(CloseRelaySession(peer=record.key, relay=record.relay_pending))
        return tuple(held)

    def _react_peer_removed(self, event: PeerRemoved) -> None:
        self._commands.extend(self._releasing)
        self._releasing = ()
        self._commands.append(ForgetPeer(peer=event.peer))
        self._schedule(self.peers[event.peer])

    def _react_to_peer(self, event: Any) -> None:
        self._advance(self.peers[event.peer])

    def _react_handshake(self, event: HandshakeObserved) -> None:
        record = self.peers[event.peer]
        # A relay-only peer never takes a direct path, even one it opened itself.
        if event.endpoint is not None and self.direct_allowed(record):
            endpoint = event.endpoint
            if record.state in (lc.PENDING, lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
                pending = record.relay_pending
                reason = f"a direct handshake answered on {endpoint}"
                round_ = self.attempts.open_round(event.peer)
                if round_ is not None and endpoint in round_.outstanding:
                    reason += f" (attempt {round_.attempt})"
                closes = [CloseRelaySession(peer=record.key, relay=pending)] if pending else []
                self._decide(
                    DirectPathSelected(at=self.now, peer=record.key, endpoint=endpoint, reason=reason),
                    SwitchPath(peer=record.key, endpoint=endpoint),
                    *closes,
                )
            elif record.state == lc.DIRECT_CONNECTED and record.path != endpoint:
                self._decide(
                    DirectPathSelected(
                        at=self.now,
                        peer=record.key,
                        endpoint=endpoint,
                        reason=f"the peer roamed from {record.path} to {endpoint}",
                    ),
                    SwitchPath(peer=record.key, endpoint=endpoint),
                )
        self._advance(record)

    def _react_relay_announced(self, event: RelayAnnounced) -> None:
        for key in sorted(self.peers):
            record = self.peers[key]
            # Only peers that may use a relay: for them the retry leads to a decision
            # (chosen or unavailable) whose fold sets relay_retry_at again, so replay agrees.
            if (
                record.state == lc.RELAY_ELIGIBLE
                and record.relay_pending is None
                and self.relays_allowed(record)
            ):
                record.relay_retry_at = self.now
                self._advance(record)

    def _serve_waiting(self) -> None:
        """A full relay has a slot again: peers waiting for a relay try now, in key order.

        As for an announcement, each one woken decides at once (chosen or unavailable),
        and that decision's fold sets relay_retry_at again, so a replay agrees. Stops
        when the freed relays are full again.
        """
        freed, self._freed = self._freed, set()
        for key in sorted(self.peers):
            if not any(r in self.registry.relays and self.relay_headroom(r) > 0 for r in freed):
                return
            record = self.peers[key]
            if (
                record.state == lc.RELAY_ELIGIBLE
                and record.relay_pending is None
                and record.relay_retry_at is not None
                and record.relay_retry_at > self.now
                and self.relays_allowed(record)
            ):
                record.relay_retry_at = self.now
                self._advance(record)

    def _react_relay_withdrawn(self, event: RelayWithdrawn) -> None:
        for key in sorted(self.peers):
            record = self.peers[key]
            if record.state == lc.RELAY_CONNECTED and record.path == event.relay:
                self._decide(
                    PathLost(
                        at=self.now,
                        peer=key,
                        path_kind="relay",
                        path=event.relay,
                        reason=f"relay {event.relay} was withdrawn",
                    ),
                    CloseRelaySession(peer=key, relay=event.relay, session=record.session),
                )
                self._advance(record)
            elif record.relay_pending == event.relay:
                self._decide(
                    RelayAbandoned(
                        at=self.now, peer=key, relay=event.relay, reason="the relay was withdrawn"
                    ),
                    CloseRelaySession(peer=key, relay=event.relay),
                )
                self._advance(record)

    def _react_established(self, event: RelaySessionEstablished) -> None:
        record = self.peers[event.peer]
        self._decide(
            RelayPathSelected(
                at=self.now,
                peer=record.key,
                relay=event.relay,
                session=event.session,
                reason=f"relay {event.relay} established session {event.session}",
            ),
            SwitchPath(peer=record.key, relay=event.relay),
        )
        self._advance(record)

    def _react_session_closed(self, event: RelaySessionClosed) -> None:
        record = self.peers[event.peer]
        why = f": {event.reason}" if event.reason else ""
        self._decide(
            PathLost(
                at=self.now,
                peer=record.key,
                path_kind="relay",
                path=event.relay,
                reason=f"session {event.session} via {event.relay} closed{why}",
            )
        )
        self._advance(record)

    def _react_path_silent(self, event: PathSilent) -> None:
        record = self.peers[event.peer]
        self._lose_path(
            record, f"nothing received on {record.path} for {event.silent_ms // 1000} s (transfer counters)"
        )
        self._advance(record)

    def _react_tick(self, event: Tick) -> None:
        timers = self._timers
        due: list[PeerRecord] = []
        while timers and timers[0][0] <= self.now:
            at, key = heapq.heappop(timers)
            record = self.peers.get(key)
            if record is not None and record.wake_at == at:
                record.wake_at = None
                due.append(record)
        # Key order, not wake order: a wake time is clamped to "now + 1" when it was
        # scheduled, which an engine rebuilt from the log (after a crash) cannot know;
        # which peers are due it does know, so both decide in the same order.
        for record in sorted(due, key=_record_key):
            self._advance(record)

    def _react_local_addresses(self, event: LocalAddressesChanged) -> None:
        for key in sorted(self.peers):
            self._advance(self.peers[key])

    def _react_policy(self, event: PolicySet) -> None:
        # Timers depend on the policy (freshness, relays and upgrades allowed): recompute
        # them as a rebuilt engine does, or the live one keeps waking at the old times.
        self.reschedule_all()

    def _react_step(self, event: StepRequested) -> None:
        for key in sorted(self.peers):
            record = self.peers[key]
            if (
                record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE)
                and self.attempts.open_round(key) is None
                and self.direct_allowed(record)
                and self.endpoints_to_try(key)
            ):
                self._start_round(record, "connect", "a step was requested (step_with_relay)")
            self._advance(record)

    # ---------------------------------------------------------- the policy

    def relays_allowed(self, record: PeerRecord) -> bool:
        return self.policy.relays_enabled and record.access != "direct_only"

    def direct_allowed(self, record: PeerRecord) -> bool:
        return record.access != "relay_only"

    def upgrades_allowed(self, record: PeerRecord) -> bool:
        return self.policy.upgrade_enabled and self.direct_allowed(record)

    def endpoints_to_try(self, peer: str) -> tuple[str, ...]:
        """Cached working endpoints first (best first), then the candidates in order.

        With `private_candidates_first`, private addresses go before public ones (stable).
        Memoised per peer (the engine asks several times per decision) until the
        candidates, the cache entries or the policy change, or a cached entry ages out.
        """
        record = self.peers[peer]
        entries = self.direct_cache.entries.get(peer, ())
        memo = self._endpoints_memo.get(peer)
        if (
            memo is not None
            and memo[0] is record.candidates
            and memo[1] is entries
            and memo[2] is self.policy
            and self.now <= memo[3]
        ):
            return memo[4]
        best = self.direct_cache.best(peer, self.now)
        ordered = tuple(dict.fromkeys(tuple(entry.endpoint for entry in best) + record.candidates))
        if self.policy.private_candidates_first:
            ordered = tuple(sorted(ordered, key=_is_public))
        max_age = self.direct_cache.max_age_ms
        valid_until = min((entry.last_success_at + max_age for entry in best), default=_FOREVER)
        self._endpoints_memo[peer] = (record.candidates, entries, self.policy, valid_until, ordered)
        return ordered

    def _advance(self, record: PeerRecord) -> None:
        """Take every decision that is due for this peer now, then set its next wake-up."""
        for _ in range(32):
            if not self._step(record):
                break
        else:  # pragma: no cover - a loop here is a bug in _step
            raise EngineError(f"peer {record.key} keeps deciding without settling")
        self._schedule(record)

    def _step(self, record: PeerRecord) -> bool:
        """One decision for this peer if one is due; False when nothing is."""
        now, key, state, policy = self.now, record.key, record.state, self.policy
        if state == lc.REMOVED:
            return False
        round_ = self.attempts.open_round(key)
        if round_ is not None and (round_.deadline <= now or not round_.outstanding):
            waited = policy.attempt_timeout_ms
            tried = ", ".join(round_.endpoints)
            self._decide(
                DirectRoundFailed(
                    at=now,
                    peer=key,
                    attempt=round_.attempt,
                    endpoints=round_.endpoints,
                    purpose=round_.purpose,
                    reason=f"no handshake from {tried} within {waited} ms",
                )
            )
            return True
        if state == lc.PENDING:
            return self._step_pending(record)
        if state == lc.DIRECT_TRYING:
            failed = self.attempts.attempts(key)
            if failed >= policy.min_direct_attempts and self.relays_allowed(record):
                self._decide(
                    RelayEligibilityReached(
                        at=now,
                        peer=key,
                        failed_attempts=failed,
                        threshold=policy.min_direct_attempts,
                        reason=f"{failed} direct rounds failed; the threshold is "
                        f"{policy.min_direct_attempts}",
                    )
                )
                return True
            return self._maybe_round(record, round_)
        if state == lc.RELAY_ELIGIBLE:
            if self._maybe_round(record, round_):
                return True
            return self._step_relay(record)
        if state == lc.RELAY_CONNECTED:
            if self._path_stale(record):
                return True
            if (
                round_ is not None
                and round_.purpose == "connect"
                and policy.upgrade_probe_on_relay
                and self.upgrades_allowed(record)
                and record.next_probe_at is not None
                and record.next_probe_at <= now
            ):
                self._decide(
                    DirectRoundFailed(
                        at=now,
                        peer=key,
                        attempt=round_.attempt,
                        endpoints=round_.endpoints,
                        purpose="connect",
                        reason="no handshake yet, and the peer is relayed now: "
                        "a probe over the session replaces this round",
                    )
                )
                return True
            if (
                self.upgrades_allowed(record)
                and round_ is None
                and record.next_probe_at is not None
                and record.next_probe_at <= now
                and self.endpoints_to_try(key)
            ):
                self._start_round(record, "upgrade_probe", "probing for a direct path while relayed")
                return True
            return self._maybe_upgrade(record)
        if state == lc.DIRECT_CONNECTED:
            if self._path_stale(record):
                return True
            if (
                round_ is None
                and record.next_probe_at is not None
                and record.next_probe_at <= now
                and self.direct_allowed(record)
                and self.endpoints_to_try(key)
            ):
                self._start_round(record, "upgrade_probe", "new addresses: probing beside the live path")
                return True
            return False
        return False

    def _step_pending(self, record: PeerRecord) -> bool:
        key, policy = record.key, self.policy
        if self.relays_allowed(record):
            why = None
            if record.access == "relay_only":
                why = "the peer is relay-only"
            elif policy.mode == "relay_first":
                why = "the policy connects through a relay first and probes direct meanwhile"
            elif not self.endpoints_to_try(key):
                why = "the peer has no direct candidate endpoints"
            if why is not None:
                self._decide(
                    RelayEligibilityReached(
                        at=self.now,
                        peer=key,
                        failed_attempts=self.attempts.attempts(key),
                        threshold=policy.min_direct_attempts,
                        reason=why,
                    )
                )
                return True
        if self.direct_allowed(record) and self.endpoints_to_try(key):
            reason = "connecting"
            if record.lost_endpoint is not None and record.lost_at == self.now:
                reason = f"reconnecting after losing {record.lost_endpoint}"
            self._start_round(record, "connect", reason)
            return True
        return False

    def _maybe_round(self, record: PeerRecord, round_: Any) -> bool:
        if (
            round_ is None
            and record.next_round_at is not None
            and record.next_round_at <= self.now
            and self.direct_allowed(record)
            and self.endpoints_to_try(record.key)
        ):
            self._start_round(record, "connect", "the next direct round is due")
            return True
        return False

    def _start_round(self, record: PeerRecord, purpose: str, why: str) -> None:
        key, now = record.key, self.now
        ordered = self.endpoints_to_try(key)
        attempt = self.attempts.next_attempt_number(key)
        width = min(self.policy.parallel_endpoints, len(ordered))
        start = ((attempt - 1) * width) % len(ordered)
        chosen = [ordered[(start + i) % len(ordered)] for i in range(width)]
        deadline = now + self.policy.attempt_timeout_ms
        cached = {entry.endpoint: entry for entry in self.direct_cache.best(key, now)}
        for endpoint in chosen:
            reason = f"{why}: round {attempt}, endpoint {ordered.index(endpoint) + 1} of {len(ordered)}"
            entry = cached.get(endpoint)
            if entry is not None:
                reason += f" (cached: worked {entry.successes}x, last at {entry.last_success_at} ms)"
            self._decide(
                DirectAttemptStarted(
                    at=now,
                    peer=key,
                    endpoint=endpoint,
                    attempt=attempt,
                    deadline=deadline,
                    purpose=purpose,  # type: ignore[arg-type]
                    reason=reason,
                ),
                TryDirectEndpoint(
                    peer=key,
                    endpoint=endpoint,
                    attempt=attempt,
                    deadline=deadline,
                    purpose=purpose,  # type: ignore[arg-type]
                ),
            )

    def relay_ranking(self, record: PeerRecord) -> tuple[RelayScore, ...]:
        """The relays this peer may use now, best first, excluding those that just failed it.

        A relay is left out while it has no room by what this node knows: its announced
        capacity minus the larger of the sessions this node holds or is connecting through
        it and the load its last health report gave (issue 13).
        """
        ranked = self.registry.rank(
            self.policy,
            self.now,
            preferred_region=record.preferred_region,
            worked_before=self.relay_cache.worked_before(record.key),
            exclude=record.relays_failed,
        )
        return tuple(score for score in ranked if self.relay_headroom(score.relay) > 0)

    def relay_headroom(self, relay: str) -> int:
        """Sessions the relay can still take by what this node knows (see relay_ranking)."""
        info = self.registry.relays[relay]
        reported = info.load * info.capacity // 100
        return info.capacity - max(self.relay_held.get(relay, 0), reported)

    def _step_relay(self, record: PeerRecord) -> bool:
        key, now = record.key, self.now
        if record.relay_pending is not None:
            if record.relay_deadline is not None and record.relay_deadline <= now:
                self._decide(
                    RelayAbandoned(
                        at=now,
                        peer=key,
                        relay=record.relay_pending,
                        reason=f"no session within {self.policy.relay_connect_timeout_ms} ms",
                    ),
                    CloseRelaySession(peer=key, relay=record.relay_pending),
                )
                return True
            return False
        if not self.relays_allowed(record):
            return False
        if record.relay_retry_at is None or record.relay_retry_at > now:
            return False
        ranking = self.relay_ranking(record)
        if not ranking:
            # jittered like the direct rounds (backoff_jitter), so peers turned away together
            # do not all come back at the same millisecond
            spread = self.policy.relay_retry_ms * self.policy.backoff_jitter * (2 * unit_hash(key, now) - 1)
            retry_at = now + max(1, int(self.policy.relay_retry_ms + spread))
            tried = f" (failed: {', '.join(record.relays_failed)})" if record.relays_failed else ""
            self._decide(
                RelayUnavailable(at=now, peer=key, retry_at=retry_at, reason=f"no usable relay{tried}")
            )
            return True
        best = ranking[0]
        if record.relays_failed:
            reason = f"failover after {', '.join(record.relays_failed)}: {best.relay} ranks best"
        else:
            reason = f"{best.relay} ranks best of {len(ranking)}"
        if best.relay in self.relay_cache.worked_before(key):
            reason += " (it carried this peer before)"
        deadline = now + self.policy.relay_connect_timeout_ms
        self._decide(
            RelayChosen(
                at=now, peer=key, relay=best.relay, ranking=ranking[:8], deadline=deadline, reason=reason
            ),
            ConnectViaRelay(peer=key, relay=best.relay, deadline=deadline),
        )
        return True

    def _path_stale(self, record: PeerRecord) -> bool:
        last = record.last_handshake_at
        limit = self.policy.handshake_freshness_ms
        if last is None or last + limit > self.now:
            return False
        path = record.path or ""
        self._lose_path(
            record, f"no handshake on {path} for {(self.now - last) // 1000} s (limit {limit // 1000} s)"
        )
        return True

    def _lose_path(self, record: PeerRecord, reason: str) -> None:
        """The connected peer's path stopped working: record it, release a relay session."""
        kind = "direct" if record.state == lc.DIRECT_CONNECTED else "relay"
        path = record.path or ""
        commands: list[Command] = []
        if kind == "relay":
            commands.append(CloseRelaySession(peer=record.key, relay=path, session=record.session))
        self._decide(
            PathLost(
                at=self.now,
                peer=record.key,
                path_kind=kind,  # type: ignore[arg-type]
                path=path,
                reason=reason,
            ),
            *commands,
        )

    def _upgrade_ready_at(self, record: PeerRecord) -> int | None:
        """When a fresh direct handshake may replace the relay, or None if there is none."""
        seen, seen_at = record.direct_seen, record.direct_seen_at
        if seen is None or seen_at is None or record.since > seen_at:
            return None
        if seen_at + self.policy.handshake_freshness_ms <= self.now:
            return None
        if record.lost_endpoint == seen and record.lost_at is not None:
            return max(seen_at, record.lost_at + self.policy.switch_hysteresis_ms)
        return seen_at

    def _maybe_upgrade(self, record: PeerRecord) -> bool:
        if not self.upgrades_allowed(record):
            return False
        ready = self._upgrade_ready_at(record)
        if ready is None or ready > self.now:
            return False
        endpoint = record.direct_seen or ""
        relay = record.path or ""
        reason = f"a direct handshake answered on {endpoint} while relayed through {relay}"
        if ready != record.direct_seen_at:
            reason += f" (held {self.policy.switch_hysteresis_ms} ms after that path was lost)"
        self._decide(
            PathUpgraded(at=self.now, peer=record.key, endpoint=endpoint, relay=relay, reason=reason),
            SwitchPath(peer=record.key, endpoint=endpoint),
            CloseRelaySession(peer=record.key, relay=relay, session=record.session),
        )
        return True

    # --------------------------------------------------------------- timers

    def wake_time(self, record: PeerRecord) -> int | None:
        """The next time this peer needs the engine, from its folded state alone."""
        key, state = record.key, record.state
        if state == lc.REMOVED:
            return None
        times: list[int] = []
        round_ = self.attempts.open_round(key)
        if round_ is not None:
            times.append(round_.deadline)
        if (
            state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE)
            and round_ is None
            and record.next_round_at is not None
            and self.direct_allowed(record)
            and self.endpoints_to_try(key)
        ):
            times.append(record.next_round_at)
        if state == lc.RELAY_ELIGIBLE:
            if record.relay_pending is not None:
                if record.relay_deadline is not None:
                    times.append(record.relay_deadline)
            elif record.relay_retry_at is not None and self.relays_allowed(record):
                times.append(record.relay_retry_at)
        if state in lc.CONNECTED_STATES and record.last_handshake_at is not None:
            times.append(record.last_handshake_at + self.policy.handshake_freshness_ms)
        if (
            state == lc.DIRECT_CONNECTED
            and record.next_probe_at is not None
            and round_ is None
            and self.direct_allowed(record)
        ):
            times.append(record.next_probe_at)
        if state == lc.RELAY_CONNECTED and self.upgrades_allowed(record):
            if record.next_probe_at is not None and round_ is None and self.endpoints_to_try(key):
                times.append(record.next_probe_at)
            ready = self._upgrade_ready_at(record)
            if ready is not None:
                times.append(ready)
        return max(min(times), self.now + 1) if times else None

    def _schedule(self, record: PeerRecord) -> None:
        wake = self.wake_time(record)
        if wake != record.wake_at:
            record.wake_at = wake
            if wake is not None:
                heapq.heappush(self._timers, (wake, record.key))

    def reschedule_all(self) -> None:
        """Rebuild the timer index from the folded state (after replay or restore)."""
        self._timers = []
        for record in self.peers.values():
            record.wake_at = None
            self._schedule(record)

    def next_deadline(self) -> int | None:
        """When the shell should feed the next Tick, or None if nothing is scheduled."""
        timers = self._timers
        while timers:
            at, key = timers[0]
            record = self.peers.get(key)
            if record is not None and record.wake_at == at:
                return at
            heapq.heappop(timers)
        return None

    # ------------------------------------------------------- the seed's API

    def should_attempt_relay(self, peer: str, attempts: int | None = None) -> bool:
        """Would the engine use a relay for `peer` after `attempts` failed rounds?"""
        record = self._live(peer)
        if record is None or not self.relays_allowed(record):
            return False
        if record.access == "relay_only" or self.policy.mode == "relay_first":
            return True
        count = self.attempts.attempts(peer) if attempts is None else attempts
        return count >= self.policy.min_direct_attempts

    def get_relay_candidates(self, peer: str) -> list[RelayScore]:
        """Ranked relays for `peer` now (relays that worked for it first)."""
        record = self._live(peer)
        return [] if record is None else list(self.relay_ranking(record))

    def remaining_peers(self) -> list[str]:
        """Peers in the mesh without a working path, in key order (the seed's lost list)."""
        return sorted(
            key
            for key, record in self.peers.items()
            if record.state not in lc.CONNECTED_STATES and record.state != lc.REMOVED
        )

    def remaining(self) -> int:
        return len(self.remaining_peers())

    def is_finished(self) -> bool:
        return self.remaining() == 0

    def step_with_relay(self, now: int) -> Reaction:
        """One direct round for every remaining peer, then relays for those past the threshold."""
        return self.handle(StepRequested(at=max(now, self.now)))

    # ------------------------------------------------- snapshots and state

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, as plain data (snapshots, equality in tests)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "now": self.now,
            "local_nat": self.local_nat,
            "policy": self.policy.to_dict(),
            "peers": {key: record.to_state() for key, record in sorted(self.peers.items())},
            "attempts": self.attempts.to_state(),
            "direct_cache": self.direct_cache.to_state(),
            "relay_cache": self.relay_cache.to_state(),
            "registry": self.registry.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Engine:
        if state.get("format") != SNAPSHOT_FORMAT:
            raise EngineError(f"unsupported snapshot format {state.get('format')!r}")
        engine = cls(Policy.from_dict(state["policy"]))
        engine.now = state["now"]
        engine.local_nat = state["local_nat"]
        engine.peers = {key: PeerRecord.from_state(item) for key, item in state["peers"].items()}
        engine.attempts = AttemptCounts.from_state(state["attempts"])
        engine.direct_cache = DirectCache.from_state(state["direct_cache"])
        engine.relay_cache = RelayCache.from_state(state["relay_cache"])
        engine.registry = RelayRegistry.from_state(state["registry"])
        for record in engine.peers.values():
            for relay in _holds(record):
                engine.relay_held[relay] = engine.relay_held.get(relay, 0) + 1
        engine._plans = {}
        engine.reschedule_all()
        return engine

    @classmethod
    def rebuilt(cls, events: Iterable[Event], policy: Policy | None = None) -> Engine:
        """An engine folded from logged events (replay without re-deciding)."""
        engine = cls(policy)
        for event in events:
            engine.apply(event)
        engine.reschedule_all()
        return engine


_FOREVER = 2**63


@functools.lru_cache(maxsize=1 << 16)
def _is_public(endpoint: str) -> bool:
    """False for private, loopback and link-local endpoints (sorts them first)."""
    host = endpoint[1:].partition("]")[0] if endpoint.startswith("[") else endpoint.rpartition(":")[0]
    return not ipaddress.ip_address(host).is_private


def _holds(record: PeerRecord | None) -> tuple[str, ...]:
    """The relays a peer occupies a slot of: a connect in flight, the session it uses."""
    if record is None:
        return ()
    held: tuple[str, ...] = ()
    if record.relay_pending is not None:
        held = (record.relay_pending,)
    if record.state == lc.RELAY_CONNECTED and record.path is not None and record.path != record.relay_pending:
        held += (record.path,)
    return held


def _record_key(record: PeerRecord) -> str:
    return record.key


_FOLDS: dict[type, Callable[[Engine, Any], None]] = {
    PeerAdded: Engine._fold_peer_added,
    PeerRemoved: Engine._fold_peer_removed,
    CandidatesUpdated: Engine._fold_candidates,
    HandshakeObserved: Engine._fold_handshake,
    RelaySessionFailed: Engine._fold_session_failed,
    PolicySet: Engine._fold_policy,
    NatObserved: Engine._fold_nat,
    LocalAddressesChanged: Engine._fold_local_addresses,
    DirectAttemptStarted: Engine._fold_attempt_started,
    DirectRoundFailed: Engine._fold_round_failed,
    RelayEligibilityReached: Engine._fold_eligible,
    RelayChosen: Engine._fold_relay_chosen,
    RelayAbandoned: Engine._fold_relay_abandoned,
    RelayUnavailable: Engine._fold_relay_unavailable,
    RelayPathSelected: Engine._fold_relay_path,
    DirectPathSelected: Engine._fold_direct_path,
    PathUpgraded: Engine._fold_direct_path,
    PathLost: Engine._fold_path_lost,
}

_CHECKS: dict[type, Callable[[Engine, Any], str | None]] = {
    PeerRemoved: Engine._not_in_mesh,
    CandidatesUpdated: Engine._not_in_mesh,
    HandshakeObserved: Engine._not_in_mesh,
    DirectAttemptTimedOut: Engine._check_timeout,
    RelayAnnounced: Engine._check_announced,
    RelayWithdrawn: Engine._check_relay_known,
    RelayHealthMeasured: Engine._check_relay_known,
    RelaySessionEstablished: Engine._check_established,
    RelaySessionFailed: Engine._check_failed,
    RelaySessionClosed: Engine._check_closed,
    PathSilent: Engine._check_silent,
}

_REACTIONS: dict[type, Callable[[Engine, Any], None]] = {
    PeerAdded: Engine._react_peer_added,
    PeerRemoved: Engine._react_peer_removed,
    CandidatesUpdated: Engine._react_to_peer,
    HandshakeObserved: Engine._react_handshake,
    DirectAttemptTimedOut: Engine._react_to_peer,
    RelayAnnounced: Engine._react_relay_announced,
    RelayWithdrawn: Engine._react_relay_withdrawn,
    RelaySessionEstablished: Engine._react_established,
    RelaySessionFailed: Engine._react_to_peer,
    RelaySessionClosed: Engine._react_session_closed,
    PathSilent: Engine._react_path_silent,
    Tick: Engine._react_tick,
    StepRequested: Engine._react_step,
    PolicySet: Engine._react_policy,
    LocalAddressesChanged: Engine._react_local_addresses,
}
