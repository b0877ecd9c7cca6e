"""Scheduling: when each peer next needs the engine, and the timer heap that answers next_deadline.

Owns the timer index: a heap of (wake time, peer) with lazy deletion (an entry
counts only while it equals the record's `wake_at`). The index is not state:
it is left out of `state()` and rebuilt from the folded state by
`reschedule_all` after replay or restore, so a rebuilt engine wakes when the
live one would.

This module must never change peer records or projections and never decides:
it computes times from the folded state and keeps only `wake_at` and the heap.
The engine never reads a clock: a wake time is at least `now + 1`.
"""

from __future__ import annotations

import heapq

from . import lifecycle as lc
from .hard_nat import wake_times as hard_nat_wake_times
from .peers import PeerRecord
from .state import State


def upgrade_ready_at(state: State, record: PeerRecord) -> int | None:
    """When a fresh direct handshake may replace the relay, or None if there is none."""
    seen, seen_at = record.direct_seen, record.direct_seen_at
    if seen is None or seen_at is None or record.since > seen_at:
        return None
    if seen_at + state.policy.handshake_freshness_ms <= state.now:
        return None
    if record.lost_endpoint == seen and record.lost_at is not None:
        return max(seen_at, record.lost_at + state.policy.switch_hysteresis_ms)
    return seen_at


def wake_time(state: State, record: PeerRecord, *, overdue_ok: bool = False) -> int | None:
    """The next time this peer needs the engine, from its folded state alone.

    A time already past is clamped to `now + 1` while deciding (the peer was just
    advanced: what is due was done), but to `now` when the whole index is rebuilt
    (`overdue_ok`): a timer that fell due while another peer's observation moved the
    clock must fire at the next Tick, as it does on the live engine that scheduled it.
    """
    key, lifecycle_state = record.key, record.state
    if lifecycle_state == lc.REMOVED:
        return None
    times: list[int] = []
    round_ = state.attempts.open_round(key)
    if round_ is not None:
        times.append(round_.deadline)
    if (
        lifecycle_state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE)
        and round_ is None
        and record.next_round_at is not None
        and state.direct_allowed(record)
        and state.endpoints_to_try(key)
    ):
        times.append(record.next_round_at)
    if lifecycle_state == lc.RELAY_ELIGIBLE:
        if record.relay_pending is not None:
            if record.relay_deadline is not None:
                times.append(record.relay_deadline)
        elif record.relay_retry_at is not None and state.relays_allowed(record):
            times.append(record.relay_retry_at)
    if lifecycle_state in lc.CONNECTED_STATES and record.last_handshake_at is not None:
        times.append(record.last_handshake_at + state.policy.handshake_freshness_ms)
    if (
        lifecycle_state == lc.DIRECT_CONNECTED
        and record.next_probe_at is not None
        and round_ is None
        and state.direct_allowed(record)
    ):
        times.append(record.next_probe_at)
    if lifecycle_state == lc.RELAY_CONNECTED and state.upgrades_allowed(record):
        if record.next_probe_at is not None and round_ is None and state.endpoints_to_try(key):
            times.append(record.next_probe_at)
        ready = upgrade_ready_at(state, record)
        if ready is not None:
            times.append(ready)
    times += hard_nat_wake_times(state, record)
    return max(min(times), state.now + (0 if overdue_ok else 1)) if times else None


def schedule(state: State, record: PeerRecord, *, overdue_ok: bool = False) -> None:
    """Set the peer's wake-up from its folded state (a heap entry only when it changes)."""
    wake = wake_time(state, record, overdue_ok=overdue_ok)
    if wake != record.wake_at:
        record.wake_at = wake
        if wake is not None:
            heapq.heappush(state._timers, (wake, record.key))


def reschedule_all(state: State) -> None:
    """Rebuild the timer index from the folded state (after replay or restore)."""
    state._timers = []
    for record in state.peers.values():
        record.wake_at = None
        schedule(state, record, overdue_ok=True)


def next_deadline(state: State) -> int | None:
    """When the shell should feed the next Tick, or None if nothing is scheduled."""
    timers = state._timers
    while timers:
        at, key = timers[0]
        record = state.peers.get(key)
        if record is not None and record.wake_at == at:
            return at
        heapq.heappop(timers)
    return None


def pop_due(state: State) -> list[PeerRecord]:
    """Take every peer whose wake-up is due by `now` off the heap (their `wake_at` cleared)."""
    timers = state._timers
    due: list[PeerRecord] = []
    while timers and timers[0][0] <= state.now:
        at, key = heapq.heappop(timers)
        record = state.peers.get(key)
        if record is not None and record.wake_at == at:
            record.wake_at = None
            due.append(record)
    return due
