"""Payload folds of paths and membership: eligibility, a relay chosen, a session established,
a relay or direct path selected, a peer added; and of the types nothing folds (a tick, a
rejection).

Each function here, bound to one state, folds one decoded payload dict exactly as
`evolve` folds the event built from it (see `payload_fold`, which also says when they
are used). Each reads and type-checks every field before it changes anything, raising
`Untrusted` for a payload of another shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lifecycle as lc
from .codec import Untrusted
from .events import DirectPathSelected, PeerAdded, RelayChosen, RelayEligibilityReached, RelayPathSelected
from .evolve import _MOVES, count_holds, holds
from .payload_rounds import PayloadFold
from .peers import PeerRecord
from .state import State

_is_str = str.__instancecheck__


def session_established(state: State) -> PayloadFold:
    """`evolve` of a `RelaySessionEstablished`: refused unless that connect is pending
    (`checks.check_established`), then the registry's outcome; no peer fold, no slot moves."""
    peers = state.peers
    outcome = state.registry._outcome
    eligible = lc.RELAY_ELIGIBLE

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            relay = data["relay"]
            session = data["session"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 4
            and type(at) is int
            and type(peer) is str
            and type(relay) is str
            and type(session) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        if record is not None and record.state == eligible and record.relay_pending == relay:
            outcome(relay, 1.0)

    return fold


def eligible(state: State) -> PayloadFold:
    """`evolve` of a `RelayEligibilityReached`: `fold_eligible` (from pending or direct_trying,
    never from relay_connected, so no relay slot moves)."""
    peers = state.peers
    moves = _MOVES[RelayEligibilityReached.TYPE]
    trigger = lc.TRIGGER_OF_EVENT[RelayEligibilityReached.TYPE]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            reason = data["reason"]
            failed_attempts = data["failed_attempts"]
            threshold = data["threshold"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 5
            and type(at) is int
            and type(peer) is str
            and type(reason) is str
            and type(failed_attempts) is int
            and type(threshold) is int
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers[peer]
        current = record.state
        moved = moves.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        record.relays_failed = ()
        record.relay_retry_at = at
        if record.next_round_at is None:
            record.next_round_at = at

    return fold


def relay_chosen(state: State) -> PayloadFold:
    """`evolve` of a `RelayChosen`: `fold_relay_chosen`, counting the slot it takes."""
    peers = state.peers
    moves = _MOVES[RelayChosen.TYPE]
    trigger = lc.TRIGGER_OF_EVENT[RelayChosen.TYPE]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            reason = data["reason"]
            relay = data["relay"]
            ranking = data["ranking"]
            deadline = data["deadline"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 6
            and type(at) is int
            and type(peer) is str
            and type(reason) is str
            and type(relay) is str
            and type(ranking) is list
            and type(deadline) is int
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        before = holds(record)
        if record is None:
            raise KeyError(peer)  # what `fold_relay_chosen` raises
        current = record.state
        moved = moves.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        record.relay_pending = relay
        record.relay_deadline = deadline
        record.relay_retry_at = None
        after = holds(record)
        if after != before:
            count_holds(state, before, after)

    return fold


def relay_path(state: State) -> PayloadFold:
    """`evolve` of a `RelayPathSelected`: the relay cache's session and count, then
    `fold_relay_path`, counting the slot that moves from the connect to the session."""
    peers = state.peers
    relay_cache = state.relay_cache
    moves = _MOVES[RelayPathSelected.TYPE]
    trigger = lc.TRIGGER_OF_EVENT[RelayPathSelected.TYPE]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            reason = data["reason"]
            relay = data["relay"]
            session = data["session"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 5
            and type(at) is int
            and type(peer) is str
            and type(reason) is str
            and type(relay) is str
            and type(session) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        before = holds(record)
        entry = relay_cache._peer(peer)
        entry.relay, entry.session, entry.since = relay, session, at
        entry.count(relay, 0)
        if record is None:
            raise KeyError(peer)  # what `fold_relay_path` raises
        current = record.state
        moved = moves.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        record.path, record.session = relay, session
        record.last_handshake_at = at
        record.relay_pending = record.relay_deadline = record.relay_retry_at = None
        record.next_round_at = None
        record.probes_done = 0
        policy = state.policy
        record.next_probe_at = at if policy.upgrade_probe_on_relay else at + policy.probe_gap_ms(0)
        after = holds(record)
        if after != before:
            count_holds(state, before, after)

    return fold


def direct_path(state: State) -> PayloadFold:
    """`evolve` of a `DirectPathSelected`: the peer's round and failures forgotten, the
    direct cache's success, then `fold_direct_path`, counting the slot a connect frees."""
    peers = state.peers
    attempts = state.attempts
    record_success = state.direct_cache._record_success
    moves = _MOVES[DirectPathSelected.TYPE]
    trigger = lc.TRIGGER_OF_EVENT[DirectPathSelected.TYPE]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            reason = data["reason"]
            endpoint = data["endpoint"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 4
            and type(at) is int
            and type(peer) is str
            and type(reason) is str
            and type(endpoint) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        before = holds(record)
        attempts.rounds.pop(peer, None)
        attempts.failed.pop(peer, None)
        record_success(peer, endpoint, at)
        if record is None:
            raise KeyError(peer)  # what `fold_direct_path` raises
        current = record.state
        moved = moves.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        record.path, record.session = endpoint, None
        record.last_handshake_at = at
        record.relay_pending = record.relay_deadline = record.relay_retry_at = None
        record.relays_failed = ()
        record.next_round_at = record.next_probe_at = None
        record.probes_done = 0
        after = holds(record)
        if after != before:
            count_holds(state, before, after)

    return fold


def peer_added(state: State) -> PayloadFold:
    """`evolve` of a `PeerAdded`: `fold_peer_added` (a new or re-added peer holds no slot)."""
    peers = state.peers
    moves = _MOVES[PeerAdded.TYPE]
    trigger = lc.TRIGGER_OF_EVENT[PeerAdded.TYPE]
    removed = lc.REMOVED

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            candidates = data["candidates"]
            kinds = data["kinds"]
            name = data["name"]
            access = data["access"]
            preferred_region = data["preferred_region"]
            nat_type = data["nat_type"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 8
            and type(at) is int
            and type(peer) is str
            and type(candidates) is list
            and all(map(_is_str, candidates))
            and type(kinds) is list
            and all(map(_is_str, kinds))
            and type(name) is str
            and type(access) is str
            and (preferred_region is None or type(preferred_region) is str)
            and type(nat_type) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        before = holds(record)
        if record is None:
            record = peers[peer] = PeerRecord(peer, at)
        elif record.state == removed:
            current = record.state
            moved = moves.get(current)
            if moved is None:
                raise lc.InvalidTransition(current, trigger)
            record.state = moved
            record.since = at
            record.reset_paths()
        record.candidates = tuple(candidates)
        record.name = name
        record.access = access
        record.preferred_region = preferred_region
        record.nat_type = nat_type
        after = holds(record)
        if after != before:
            count_holds(state, before, after)

    return fold


def time_only(fields: tuple[str, ...]) -> Callable[[State], PayloadFold]:
    """`evolve` of a type nothing folds (a `Tick`, an `ObservationRejected`): `now` moves.
    `fields`: its payload's fields after `at`, each a string or null."""
    count = len(fields) + 1

    def make(state: State) -> PayloadFold:
        def fold(data: dict[str, Any]) -> None:
            try:
                at = data["at"]
                values = [data[name] for name in fields]
            except (KeyError, TypeError):
                raise Untrusted from None
            if not (
                len(data) == count and type(at) is int and all(v is None or type(v) is str for v in values)
            ):
                raise Untrusted
            if at > state.now:
                state.now = at

        return fold

    return make
