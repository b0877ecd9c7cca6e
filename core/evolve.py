"""evolve(state, event): the fold. How each logged event changes the peer records and projections.

Owns the one function that writes state, used live (after each observation
and each decision) and by replay (`Engine.rebuilt`, `eventlog.replay.rebuild`):
folding a log's events in order rebuilds exactly the state the live engine had.
It folds in place, no copy per event (replay folds millions of events over
100k peers), and returns nothing.

Rules of this module:
- evolve never decides: it emits no decision and no command, asks no policy
  question beyond the numbers an event's consequences need (backoff gaps),
  and does the same thing whether the event is replayed or live.
- an observation that `checks.rejection` refuses folds nothing (its recorded
  `ObservationRejected` decision is the only trace).
- `now` is the largest event time seen: a clock that jumps back moves nothing back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lifecycle as lc
from .checks import CHECKS
from .events import (
    CandidatesUpdated,
    DirectAttemptStarted,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    NatObserved,
    PathLost,
    PathUpgraded,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAbandoned,
    RelayChosen,
    RelayEligibilityReached,
    RelayPathSelected,
    RelaySessionFailed,
    RelayUnavailable,
)
from .jitter import unit_hash
from .peers import PeerRecord
from .state import State

Plan = tuple[Callable[[State, Any], str | None] | None, tuple[Callable[[Any], None], ...]]


def evolve(state: State, event: Event) -> None:
    """Fold one logged event (observation or decision) into the state, in place."""
    if event.at > state.now:
        state.now = event.at
    kind = type(event)
    check, steps = state._plans.get(kind) or plan(state, kind)
    if check is not None and check(state, event) is not None:
        return
    for step in steps:
        step(event)


def plan(state: State, kind: type) -> Plan:
    """Which projections fold events of this type: computed once per type and state (replay is hot)."""
    steps: list[Callable[[Any], None]] = [
        projection.apply
        for projection in (state.attempts, state.direct_cache, state.relay_cache, state.registry)
        if kind in projection.HANDLES
    ]
    fold = FOLDS.get(kind)
    if fold is not None:
        steps.append(fold.__get__(state))
    made: Plan = (CHECKS.get(kind), tuple(steps))
    state._plans[kind] = made
    return made


def transition(record: PeerRecord, event: Event) -> None:
    """Move the peer along the lifecycle as this event's trigger says (`since` marks the move)."""
    moved = lc.next_state(record.state, lc.TRIGGER_OF_EVENT[event.TYPE])
    if moved != record.state:
        record.state = moved
        record.since = event.at


def fold_peer_added(state: State, event: PeerAdded) -> None:
    record = state.peers.get(event.peer)
    if record is None:
        record = state.peers[event.peer] = PeerRecord(event.peer, event.at)
    elif record.state == lc.REMOVED:
        transition(record, event)
        record.reset_paths()
    record.candidates = event.candidates
    record.name = event.name
    record.access = event.access
    record.preferred_region = event.preferred_region
    record.nat_type = event.nat_type


def fold_peer_removed(state: State, event: PeerRemoved) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.reset_paths()


def fold_candidates(state: State, event: CandidatesUpdated) -> None:
    record = state.peers[event.peer]
    if event.nat_type is not None:
        record.nat_type = event.nat_type
    if event.candidates == record.candidates:
        return  # nothing new to try (a duplicate report changes nothing)
    record.candidates = event.candidates
    if record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
        if record.next_round_at is None or record.next_round_at > event.at:
            record.next_round_at = event.at
    elif record.state == lc.RELAY_CONNECTED:
        record.probes_done = 0
        record.next_probe_at = event.at


def fold_handshake(state: State, event: HandshakeObserved) -> None:
    record = state.peers[event.peer]
    # max(): a late or repeated report never makes what we know older
    if event.endpoint is not None:
        if record.direct_seen_at is None or event.at >= record.direct_seen_at:
            record.direct_seen = event.endpoint
            record.direct_seen_at = event.at
        if record.state == lc.DIRECT_CONNECTED and record.path == event.endpoint:
            record.last_handshake_at = max(record.last_handshake_at or 0, event.at)
    elif record.state == lc.RELAY_CONNECTED and record.path == event.relay:
        record.last_handshake_at = max(record.last_handshake_at or 0, event.at)


def fold_session_failed(state: State, event: RelaySessionFailed) -> None:
    record = state.peers[event.peer]
    record.relay_pending = record.relay_deadline = None
    record.relays_failed += (event.relay,)
    record.relay_retry_at = event.at


def fold_nat(state: State, event: NatObserved) -> None:
    state.local_nat = event.nat_type


def fold_policy(state: State, event: PolicySet) -> None:
    state.policy = event.policy
    state.direct_cache.configure(event.policy.direct_cache_size, event.policy.direct_cache_max_age_ms)


def fold_attempt_started(state: State, event: DirectAttemptStarted) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    if event.purpose == "connect":
        record.next_round_at = None
    else:
        record.next_probe_at = None


def fold_round_failed(state: State, event: DirectRoundFailed) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    if event.purpose == "connect":
        failed = state.attempts.attempts(event.peer)
        jitter = unit_hash(event.peer, event.attempt)
        record.next_round_at = event.at + state.policy.round_gap_ms(failed - 1, jitter)
    else:
        record.probes_done += 1
        record.next_probe_at = event.at + state.policy.probe_gap_ms(record.probes_done)


def fold_eligible(state: State, event: RelayEligibilityReached) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.relays_failed = ()
    record.relay_retry_at = event.at
    if record.next_round_at is None:
        record.next_round_at = event.at


def fold_relay_chosen(state: State, event: RelayChosen) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.relay_pending = event.relay
    record.relay_deadline = event.deadline
    record.relay_retry_at = None


def fold_relay_abandoned(state: State, event: RelayAbandoned) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.relay_pending = record.relay_deadline = None
    record.relays_failed += (event.relay,)
    record.relay_retry_at = event.at


def fold_relay_unavailable(state: State, event: RelayUnavailable) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.relays_failed = ()
    record.relay_retry_at = event.retry_at


def fold_relay_path(state: State, event: RelayPathSelected) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.path, record.session = event.relay, event.session
    record.last_handshake_at = event.at
    record.relay_pending = record.relay_deadline = record.relay_retry_at = None
    record.next_round_at = None
    record.probes_done = 0
    on_relay = state.policy.upgrade_probe_on_relay
    record.next_probe_at = event.at if on_relay else event.at + state.policy.probe_gap_ms(0)


def fold_direct_path(state: State, event: DirectPathSelected | PathUpgraded) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    record.path, record.session = event.endpoint, None
    record.last_handshake_at = event.at
    record.relay_pending = record.relay_deadline = record.relay_retry_at = None
    record.relays_failed = ()
    record.next_round_at = record.next_probe_at = None
    record.probes_done = 0


def fold_path_lost(state: State, event: PathLost) -> None:
    record = state.peers[event.peer]
    transition(record, event)
    if event.path_kind == "direct":
        record.lost_endpoint, record.lost_at = event.path, event.at
        record.relays_failed = ()
    else:
        record.relays_failed = (event.path,)
        record.relay_retry_at = event.at
    record.path = record.session = record.last_handshake_at = None
    record.next_round_at = event.at


#: The peer-record fold of each event type that has one (projections fold their own HANDLES).
FOLDS: dict[type, Callable[[State, Any], None]] = {
    PeerAdded: fold_peer_added,
    PeerRemoved: fold_peer_removed,
    CandidatesUpdated: fold_candidates,
    HandshakeObserved: fold_handshake,
    RelaySessionFailed: fold_session_failed,
    PolicySet: fold_policy,
    NatObserved: fold_nat,
    DirectAttemptStarted: fold_attempt_started,
    DirectRoundFailed: fold_round_failed,
    RelayEligibilityReached: fold_eligible,
    RelayChosen: fold_relay_chosen,
    RelayAbandoned: fold_relay_abandoned,
    RelayUnavailable: fold_relay_unavailable,
    RelayPathSelected: fold_relay_path,
    DirectPathSelected: fold_direct_path,
    PathUpgraded: fold_direct_path,
    PathLost: fold_path_lost,
}
