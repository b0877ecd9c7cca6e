"""Observation checks: why an observation cannot apply (unknown peer, late, contradictory).

Owns the one answer to "does this observation apply to the state?", asked
twice with the same state: by `evolve` (a rejected observation folds nothing)
and by `decide` (a rejected observation is answered with an
`ObservationRejected` decision). Asking one function keeps the fold and the
decision in agreement, live and on replay.

This module must never change state nor decide: each check reads the state
and returns a reason (a sentence) or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import lifecycle as lc
from .events import (
    KNOWN_CAPABILITIES,
    CandidatesUpdated,
    DirectAttemptTimedOut,
    Event,
    HandshakeObserved,
    HardNatPairMet,
    PathSilent,
    PeerRemoved,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
)
from .state import State

#: Announcements may not claim validity further ahead than this.
MAX_ANNOUNCEMENT_LIFETIME_MS = 86_400_000


def rejection(state: State, event: Event) -> str | None:
    """Why an observation cannot apply, or None. The fold and the decision agree on it."""
    check = CHECKS.get(type(event))
    return None if check is None else check(state, event)


def not_in_mesh(state: State, event: Any) -> str | None:
    return None if state._live(event.peer) else f"peer {event.peer} is not in the mesh"


def check_timeout(state: State, event: DirectAttemptTimedOut) -> str | None:
    if not state._live(event.peer):
        return f"peer {event.peer} is not in the mesh"
    round_ = state.attempts.open_round(event.peer)
    if round_ is None or round_.attempt != event.attempt or event.endpoint not in round_.outstanding:
        return f"no open attempt {event.attempt} on {event.endpoint}: late or duplicate"
    return None


def check_relay_known(state: State, event: Any) -> str | None:
    return None if state.registry.knows(event.relay) else f"relay {event.relay} is not announced"


def check_silent(state: State, event: PathSilent) -> str | None:
    record = state._live(event.peer)
    if record is None:
        return f"peer {event.peer} is not in the mesh"
    if record.state not in lc.CONNECTED_STATES:
        return f"the peer has no path to lose (it is {record.state})"
    return None


def check_announced(state: State, event: RelayAnnounced) -> str | None:
    unknown = event.capabilities & ~KNOWN_CAPABILITIES
    if unknown:
        return f"announcement of {event.relay} claims unknown capability bits {unknown:#x}"
    if event.expires_at is not None:
        if event.expires_at <= event.at:
            return f"announcement of {event.relay} expired at {event.expires_at}"
        if event.expires_at - event.at > MAX_ANNOUNCEMENT_LIFETIME_MS:
            return f"announcement of {event.relay} claims validity more than 24 h ahead"
    return None


def check_established(state: State, event: RelaySessionEstablished) -> str | None:
    record = state._live(event.peer)
    if record is None:
        return f"peer {event.peer} is not in the mesh"
    if record.state != lc.RELAY_ELIGIBLE or record.relay_pending != event.relay:
        return f"no connect through {event.relay} is pending (peer is {record.state})"
    return None


def check_failed(state: State, event: RelaySessionFailed) -> str | None:
    record = state._live(event.peer)
    if record is None:
        return f"peer {event.peer} is not in the mesh"
    if record.relay_pending != event.relay:
        return f"no connect through {event.relay} is pending: late or duplicate"
    return None


def check_closed(state: State, event: RelaySessionClosed) -> str | None:
    record = state._live(event.peer)
    if record is None:
        return f"peer {event.peer} is not in the mesh"
    if record.state != lc.RELAY_CONNECTED or (record.path, record.session) != (
        event.relay,
        event.session,
    ):
        return f"session {event.session} via {event.relay} is not the peer's path (already released)"
    return None


def check_pair_met(state: State, event: HardNatPairMet) -> str | None:
    """A hard-NAT meeting applies only to the open attempt of a peer in a state where the
    policy runs attempts: relayed, waiting for a relay, or in its first direct round (issue 16)."""
    record = state._live(event.peer)
    if record is None:
        return f"peer {event.peer} is not in the mesh"
    tried = state.hard_nat.open.get(event.peer)
    if tried is None or tried.attempt != event.attempt:
        return f"no hard-NAT attempt {event.attempt} is open: late or duplicate"
    if record.state not in lc.hard_nat_states(with_first_round=state.policy.hard_nat_with_first_round):
        return f"the peer is {record.state}: no hard-NAT attempt runs there"
    return None


#: The check of each observation type that has one (the others always apply).
CHECKS: dict[type, Callable[[State, Any], str | None]] = {
    PeerRemoved: not_in_mesh,
    CandidatesUpdated: not_in_mesh,
    HandshakeObserved: not_in_mesh,
    DirectAttemptTimedOut: check_timeout,
    RelayAnnounced: check_announced,
    RelayWithdrawn: check_relay_known,
    RelayHealthMeasured: check_relay_known,
    RelaySessionEstablished: check_established,
    RelaySessionFailed: check_failed,
    RelaySessionClosed: check_closed,
    PathSilent: check_silent,
    HardNatPairMet: check_pair_met,
}
