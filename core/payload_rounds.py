"""Payload folds of a direct round: an attempt started, a round failed, a handshake observed.

Most of every log (about 80 % of the events of `natrelay bench`'s mesh): each function
here, bound to one state, folds one decoded payload dict exactly as `evolve` folds the
event built from it (see `payload_fold`, which also says when they are used). Each
reads and type-checks every field before it changes anything, raising `Untrusted`
for a payload of another shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lifecycle as lc
from .attempts import Round
from .codec import Untrusted
from .events import DirectAttemptStarted, DirectRoundFailed
from .evolve import _FAILED, _STARTED
from .jitter import unit_hash
from .state import State

#: A payload fold bound to one state: folds one decoded payload, or raises `Untrusted`.
PayloadFold = Callable[[dict[str, Any]], None]


def attempt_started(state: State) -> PayloadFold:
    """`evolve` of a `DirectAttemptStarted`: the attempts round, then `fold_attempt_started`.
    (It changes no relay slot: `holds` reads neither the state it may enter nor the timers.)"""
    rounds = state.attempts.rounds
    peers = state.peers
    started = _STARTED
    new = object.__new__
    trigger = lc.TRIGGER_OF_EVENT[DirectAttemptStarted.TYPE]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            endpoint = data["endpoint"]
            attempt = data["attempt"]
            deadline = data["deadline"]
            purpose = data["purpose"]
            reason = data["reason"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 7
            and type(at) is int
            and type(peer) is str
            and type(endpoint) is str
            and type(attempt) is int
            and type(deadline) is int
            and type(purpose) is str
            and type(reason) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        found = rounds.get(peer)
        if found is not None and found.is_open and found.attempt == attempt:
            found.endpoints += (endpoint,)
            found.outstanding += (endpoint,)
            if deadline > found.deadline:
                found.deadline = deadline
        else:
            # `Round(attempt, purpose, (endpoint,), (endpoint,), deadline)`, without the call
            made = new(Round)
            made.attempt = attempt
            made.purpose = purpose  # type: ignore[assignment]  # the row's own, not re-validated
            made.endpoints = made.outstanding = (endpoint,)
            made.deadline = deadline
            made.is_open = True
            rounds[peer] = made
        record = peers[peer]
        current = record.state
        moved = started.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        if purpose == "connect":
            record.next_round_at = None
        else:
            record.next_probe_at = None

    return fold


def round_failed(state: State) -> PayloadFold:
    """`evolve` of a `DirectRoundFailed`: the attempts round closes, then `fold_round_failed`.
    (It moves no peer to another state, so it changes no relay slot.)"""
    attempts = state.attempts
    rounds = attempts.rounds
    failed_rounds = attempts.failed
    peers = state.peers
    failed_moves = _FAILED
    trigger = lc.TRIGGER_OF_EVENT[DirectRoundFailed.TYPE]
    direct_connected = lc.DIRECT_CONNECTED
    join = "".join
    #: `policy.probe_gap_ms(n)` of the policy in force (a pure function of both): its power
    #: and float arithmetic cost more than the rest of the fold, for a handful of values of n
    probe_gaps: dict[int, int] = {}
    gaps_of: list[Any] = [None]

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            attempt = data["attempt"]
            endpoints = data["endpoints"]
            purpose = data["purpose"]
            reason = data["reason"]
            join(endpoints)  # every item a string (TypeError otherwise): 3x all(map(...))
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 6
            and type(at) is int
            and type(peer) is str
            and type(attempt) is int
            and type(endpoints) is list
            and type(purpose) is str
            and type(reason) is str
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        found = rounds.get(peer)
        if found is not None:
            found.is_open = False
            found.outstanding = ()
        connect = purpose == "connect"
        if connect:
            failed_rounds[peer] = failed_rounds.get(peer, 0) + 1
        record = peers[peer]
        current = record.state
        moved = failed_moves.get(current)
        if moved is None:
            raise lc.InvalidTransition(current, trigger)
        if moved != current:
            record.state = moved
            record.since = at
        if connect:
            failed = failed_rounds.get(peer, 0)
            record.next_round_at = at + state.policy.round_gap_ms(failed - 1, unit_hash(peer, attempt))
        elif record.state == direct_connected:
            record.next_probe_at = None  # the live path stays; nothing new answered
        else:
            done = record.probes_done = record.probes_done + 1
            policy = state.policy
            if policy is not gaps_of[0]:
                gaps_of[0] = policy
                probe_gaps.clear()
            gap = probe_gaps.get(done)
            if gap is None:
                gap = probe_gaps[done] = policy.probe_gap_ms(done)
            record.next_probe_at = at + gap

    return fold


def handshake(state: State) -> PayloadFold:
    """`evolve` of a `HandshakeObserved`: refused unless the peer is in the mesh, then the
    direct cache's refresh and `fold_handshake`. (It changes no relay slot.)"""
    peers = state.peers
    cache = state.direct_cache
    entries = cache.entries
    refresh = cache._refresh
    removed = lc.REMOVED
    relay_connected = lc.RELAY_CONNECTED
    direct_connected = lc.DIRECT_CONNECTED

    def fold(data: dict[str, Any]) -> None:
        try:
            at = data["at"]
            peer = data["peer"]
            endpoint = data["endpoint"]
            relay = data["relay"]
        except (KeyError, TypeError):
            raise Untrusted from None
        if not (
            len(data) == 4
            and type(at) is int
            and type(peer) is str
            and (endpoint is None or type(endpoint) is str)
            and (relay is None or type(relay) is str)
        ):
            raise Untrusted
        if at > state.now:
            state.now = at
        record = peers.get(peer)
        if record is None or record.state == removed:
            return  # `checks.not_in_mesh`: the observation folds nothing
        if endpoint is not None:
            if peer in entries:
                refresh(peer, endpoint, at)
            # max(): a late or repeated report never makes what we know older
            if record.direct_seen_at is None or at >= record.direct_seen_at:
                record.direct_seen = endpoint
                record.direct_seen_at = at
            if record.state == direct_connected and record.path == endpoint:
                previous = record.last_handshake_at or 0  # max(previous or 0, at)
                record.last_handshake_at = at if at > previous else previous
        elif record.state == relay_connected and record.path == relay:
            previous = record.last_handshake_at or 0
            record.last_handshake_at = at if at > previous else previous

    return fold
