"""The seed's API: the questions and the step the original relay prototype exposed, on today's engine.

Owns `should_attempt_relay`, `get_relay_candidates`, `remaining_peers`,
`remaining`, `is_finished` and `step_with_relay`, which `Engine` exposes as
methods with the seed's names and signatures.

This module must never change state nor decide by itself: the questions only
read the state, and `step_with_relay` is one `StepRequested` observation
handed to `decide` like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import lifecycle as lc
from .decide import decide
from .events import RelayScore, StepRequested
from .reaction import Reaction
from .state import State

if TYPE_CHECKING:
    from .engine import Engine


def should_attempt_relay(state: State, peer: str, attempts: int | None = None) -> bool:
    """Would the engine use a relay for `peer` after `attempts` failed rounds?"""
    record = state._live(peer)
    if record is None or not state.relays_allowed(record):
        return False
    if record.access == "relay_only" or state.policy.mode == "relay_first":
        return True
    count = state.attempts.attempts(peer) if attempts is None else attempts
    return count >= state.policy.min_direct_attempts


def get_relay_candidates(state: State, peer: str) -> list[RelayScore]:
    """Ranked relays for `peer` now (relays that worked for it first)."""
    record = state._live(peer)
    return [] if record is None else list(state.relay_ranking(record))


def remaining_peers(state: State) -> list[str]:
    """Peers in the mesh without a working path, in key order (the seed's lost list)."""
    return sorted(
        key
        for key, record in state.peers.items()
        if record.state not in lc.CONNECTED_STATES and record.state != lc.REMOVED
    )


def remaining(state: State) -> int:
    return len(remaining_peers(state))


def is_finished(state: State) -> bool:
    return remaining(state) == 0


def step_with_relay(engine: Engine, now: int) -> Reaction:
    """One direct round for every remaining peer, then relays for those past the threshold."""
    return decide(engine, StepRequested(at=max(now, engine.now)))
