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

import attrs

from . import lifecycle as lc
from .attempts import AttemptCounts
from .checks import CHECKS
from .events import (
    CandidatesUpdated,
    DirectAttemptStarted,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    LocalAddressesChanged,
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

#: Event fields no fold reads: replay may build events without them (`codec.compile_trusted`).
#: A fold that starts reading one must take it out of here (replay raises AttributeError).
UNREAD: frozenset[str] = frozenset({"reason", "ranking", "kinds"})

#: One event type's whole fold, bound to one state: its check, its projections, its peer fold.
Fold = Callable[[Any], None]


def evolve(state: State, event: Event) -> None:
    """Fold one logged event (observation or decision) into the state, in place."""
    if event.at > state.now:
        state.now = event.at
    kind = type(event)
    (state._plans.get(kind) or plan(state, kind))(event)


def holds(record: PeerRecord | None) -> tuple[str, ...]:
    """The relays a peer occupies a slot of: a connect in flight, the session it uses."""
    if record is None:
        return ()
    held: tuple[str, ...] = ()
    if record.relay_pending is not None:
        held = (record.relay_pending,)
    if record.state == lc.RELAY_CONNECTED and record.path is not None and record.path != record.relay_pending:
        held += (record.path,)
    return held


def count_holds(state: State, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    """Keep `state.relay_held` (this node's sessions and connects per relay) in step (issue 13).

    A slot freed on a relay that was full by this count is noted in `state._freed`
    (not state: `decide` offers it to the peers waiting for a relay).
    """
    held = state.relay_held
    for relay in before:
        left = held[relay] - 1
        if left:
            held[relay] = left
        else:
            del held[relay]  # as a restored engine counts it: only relays holding a slot
        if relay not in after and relay in state.registry.relays and state.relay_headroom(relay) == 1:
            state._freed.add(relay)
    for relay in after:
        held[relay] = held.get(relay, 0) + 1


def plan(state: State, kind: type) -> Fold:
    """This type's fold on this state, as one function: computed once per type and state
    (replay is hot). `evolve` calls it after moving `now`; so does `eventlog.replay.rebuild`,
    which folds many events in one loop."""
    steps: list[Callable[[Any], None]] = [
        projection.handler(kind) if isinstance(projection, AttemptCounts) else projection.apply
        for projection in (
            state.attempts,
            state.direct_cache,
            state.relay_cache,
            state.registry,
            state.hard_nat,
        )
        if kind in projection.HANDLES
    ]
    fold = FOLDS.get(kind)
    if fold is not None:
        steps.append(fold.__get__(state))
    made = _combined(state, CHECKS.get(kind), tuple(steps))
    if "peer" in attrs.fields_dict(kind):
        made = _counting_holds(state, made)
    state._plans[kind] = made
    return made


def _counting_holds(state: State, fold: Fold) -> Fold:
    """`fold`, keeping this node's count of relay slots per relay in step (see `count_holds`)."""
    peers = state.peers

    def counted(event: Any) -> None:
        before = holds(peers.get(event.peer))
        fold(event)
        after = holds(peers.get(event.peer))
        if after != before:
            count_holds(state, before, after)

    return counted


Check = Callable[[State, Any], str | None]


def _combined(state: State, check: Check | None, steps: tuple[Fold, ...]) -> Fold:
    """One function running `steps` in order, none when `check` rejects the event."""
    if check is None:
        if not steps:
            return _nothing
        if len(steps) == 1:
            return steps[0]
        if len(steps) == 2:
            first, second = steps

            def both(event: Any) -> None:
                first(event)
                second(event)

            return both

        def each(event: Any) -> None:
            for step in steps:
                step(event)

        return each

    def checked(event: Any) -> None:
        if check(state, event) is None:
            for step in steps:
                step(event)

    return checked


def _nothing(event: Any) -> None:
    """The fold of a type nothing folds (`now` moves, in `evolve`)."""


#: event TYPE -> {lifecycle state: the state its trigger moves to}, from `lifecycle.TABLE`.
_MOVES: dict[str, dict[str, str]] = {
    type_name: {source: dest for (source, fired), dest in lc.TABLE.items() if fired == trigger}
    for type_name, trigger in lc.TRIGGER_OF_EVENT.items()
}


def transition(record: PeerRecord, event: Event) -> None:
    """Move the peer along the lifecycle as this event's trigger says (`since` marks the move)."""
    current = record.state
    moved = _MOVES[event.TYPE].get(current)
    if moved is None:
        raise lc.InvalidTransition(current, lc.TRIGGER_OF_EVENT[event.TYPE])
    if moved != current:
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
    """New candidates, or a new NAT in front of the same ones, are probed at once: a NAT
    that changed (a router granting a port mapping turns a symmetric NAT into a full cone
    for WireGuard's port) may open an endpoint that failed before."""
    record = state.peers[event.peer]
    nat_changed = event.nat_type is not None and event.nat_type != record.nat_type
    if event.nat_type is not None:
        record.nat_type = event.nat_type
    if event.candidates == record.candidates and not nat_changed:
        return  # nothing new to try (a duplicate report changes nothing)
    record.candidates = event.candidates
    _try_again_now(record, event.at)


def fold_local_addresses(state: State, event: LocalAddressesChanged) -> None:
    """Our own addresses changed: every peer is probed again at once (issue 13)."""
    for record in state.peers.values():
        _try_again_now(record, event.at)


def _try_again_now(record: PeerRecord, at: int) -> None:
    """A peer's direct round is due now; a connected peer probes at once, beside its live path.

    A peer waiting to retry its relays retries them now too, and the relays that failed it
    are forgotten: its connects went unanswered while it (or we) had no network, and the
    change says that may be over (issue 13: a peer waking on a UDP-blocked network reported
    its candidates 5 s after waking and still waited 10 s for the relay retry). A connect
    in flight is started again by `decide.react_candidates`.
    """
    if record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
        if record.next_round_at is None or record.next_round_at > at:
            record.next_round_at = at
        record.relays_failed = ()
        if record.relay_pending is None and record.relay_retry_at is not None and record.relay_retry_at > at:
            record.relay_retry_at = at
    elif record.state in lc.CONNECTED_STATES:
        record.probes_done = 0
        record.next_probe_at = at
    record.relays_unanswered = 0  # the absence it counted may be over (`hard_nat.reporting_until`)


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
    record.relays_unanswered = 0  # the relay answered: refused, unreachable or down
    record.relay_retry_at = event.at


def fold_nat(state: State, event: NatObserved) -> None:
    state.local_nat = event.nat_type


def fold_policy(state: State, event: PolicySet) -> None:
    state.policy = event.policy
    state.direct_cache.configure(event.policy.direct_cache_size, event.policy.direct_cache_max_age_ms)


#: `transition` of the two most frequent decisions, inlined in their folds (replay is hot).
_STARTED = _MOVES[DirectAttemptStarted.TYPE]
_FAILED = _MOVES[DirectRoundFailed.TYPE]


def fold_attempt_started(state: State, event: DirectAttemptStarted) -> None:
    record = state.peers[event.peer]
    current = record.state
    moved = _STARTED.get(current)
    if moved is None:
        raise lc.InvalidTransition(current, lc.TRIGGER_OF_EVENT[event.TYPE])
    if moved != current:
        record.state = moved
        record.since = event.at
    if event.purpose == "connect":
        record.next_round_at = None
    else:
        record.next_probe_at = None


def fold_round_failed(state: State, event: DirectRoundFailed) -> None:
    record = state.peers[event.peer]
    current = record.state
    moved = _FAILED.get(current)
    if moved is None:
        raise lc.InvalidTransition(current, lc.TRIGGER_OF_EVENT[event.TYPE])
    if moved != current:
        record.state = moved
        record.since = event.at
    if event.purpose == "connect":
        failed = state.attempts.attempts(event.peer)
        jitter = unit_hash(event.peer, event.attempt)
        record.next_round_at = event.at + state.policy.round_gap_ms(failed - 1, jitter)
    elif record.state == lc.DIRECT_CONNECTED:
        record.next_probe_at = None  # the live path stays; nothing new answered
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
    """A connect given up. One abandoned at its deadline went unanswered (a relay that refuses
    says so, `RelaySessionFailed`): counted in `relays_unanswered`; any other abandon (the
    relay withdrawn, the peer moved: both before the deadline) ends the count."""
    record = state.peers[event.peer]
    deadline = record.relay_deadline
    timed_out = deadline is not None and event.at >= deadline
    record.relays_unanswered = record.relays_unanswered + 1 if timed_out else 0
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
    record.relays_unanswered = 0
    record.path = record.session = record.last_handshake_at = None
    record.next_round_at = event.at


def fold_hard_nat(state: State, event: Event) -> None:
    """A hard-NAT decision moves no lifecycle state (the transition checks it is allowed);
    a success counts as a direct handshake seen, which the upgrade needs (issue 16)."""
    record = state.peers[event.peer]  # type: ignore[attr-defined]
    transition(record, event)
    if type(event) is HardNatAttemptSucceeded and (
        record.direct_seen_at is None or event.at >= record.direct_seen_at
    ):
        record.direct_seen, record.direct_seen_at = event.endpoint, event.at


#: The peer-record fold of each event type that has one (projections fold their own HANDLES).
FOLDS: dict[type, Callable[[State, Any], None]] = {
    PeerAdded: fold_peer_added,
    PeerRemoved: fold_peer_removed,
    CandidatesUpdated: fold_candidates,
    HandshakeObserved: fold_handshake,
    RelaySessionFailed: fold_session_failed,
    PolicySet: fold_policy,
    NatObserved: fold_nat,
    LocalAddressesChanged: fold_local_addresses,
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
    HardNatAttemptStarted: fold_hard_nat,
    HardNatAttemptSucceeded: fold_hard_nat,
    HardNatAttemptFailed: fold_hard_nat,
}
