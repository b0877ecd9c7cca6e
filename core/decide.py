"""decide(engine, observation) -> Reaction: the reactions, what each observation leads to.

Owns the observation-driven half of deciding: `decide` folds the observation
with `evolve`, answers one that does not apply (`checks.rejection`) with an
`ObservationRejected`, and otherwise runs the observation type's reaction,
which decides for the peers it concerns (a handshake selects a direct path,
a session selects a relay, a withdrawn relay loses its paths, a Tick advances
the peers that are due) and lets `stepping.advance` take whatever else is due.

Rules of this module:
- decide never changes state except through `evolve`: the observation, then
  each decision it emits (`reaction.emit`), in the order they are logged. So
  folding the observation and the returned decisions into a copy of the state
  gives exactly the state decide left behind (tests/unit/test_decider.py), and
  `eventlog.replay.verify` re-decides a log by calling decide on its recorded
  observations. The timer index (`schedule`) is not state.
- peers are visited in key order; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import hard_nat
from . import lifecycle as lc
from .checks import rejection
from .commands import CloseRelaySession, Command, ForgetPeer, StopHardNatAttempt, SwitchPath
from .events import (
    CandidatesUpdated,
    DirectAttemptTimedOut,
    DirectPathSelected,
    Event,
    HandshakeObserved,
    HardNatPairMet,
    LocalAddressesChanged,
    ObservationRejected,
    PathLost,
    PathSilent,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAbandoned,
    RelayAnnounced,
    RelayPathSelected,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
    StepRequested,
    Tick,
)
from .evolve import evolve
from .peers import PeerRecord
from .reaction import Reaction, emit
from .schedule import pop_due, reschedule_all, schedule
from .state import EngineError
from .stepping import advance, lose_path, start_round

if TYPE_CHECKING:
    from .engine import Engine


def decide(engine: Engine, observation: Event) -> Reaction:
    """Fold an observation, decide, and return the decisions and commands."""
    if observation.KIND != "observation":
        raise EngineError(f"handle() takes observations; {observation.TYPE} is a decision")
    reason = rejection(engine, observation)
    # what the peer holds is known only before its removal is folded
    releasing: tuple[Command, ...] = ()
    if reason is None and type(observation) is PeerRemoved:
        releasing = held_relays(engine.peers[observation.peer])
        tried = engine.hard_nat.open.get(observation.peer)
        if tried is not None:  # its sockets close with the peer (the book forgets the attempt)
            releasing += (StopHardNatAttempt(peer=observation.peer, attempt=tried.attempt),)
    engine._freed = set()
    engine._moved = reason is None and moved_candidates(engine, observation)
    evolve(engine, observation)
    engine._decisions, engine._commands = [], list(releasing)
    if reason is not None:
        reject(engine, observation, reason)
    else:
        react = REACTIONS.get(type(observation))
        if react is not None:
            react(engine, observation)
    if engine._freed:
        serve_waiting(engine)
    reaction = Reaction(tuple(engine._decisions), tuple(engine._commands))
    engine._decisions, engine._commands = [], []
    engine._moved = False
    return reaction


def reject(engine: Engine, observation: Event, reason: str) -> None:
    """Record why the observation did not apply; close a session nobody will use."""
    peer = getattr(observation, "peer", None)
    emit(engine, ObservationRejected(at=engine.now, observation=observation.TYPE, peer=peer, reason=reason))
    session = getattr(observation, "session", None)
    if (
        type(observation) is RelaySessionEstablished
        and session is not None
        and not in_use(engine, observation)
    ):
        engine._commands.append(
            CloseRelaySession(peer=observation.peer, relay=observation.relay, session=session)
        )


def in_use(engine: Engine, event: RelaySessionEstablished) -> bool:
    """A duplicated report of the session the peer uses now: closing it would cut the path."""
    record = engine._live(event.peer)
    return record is not None and (record.path, record.session) == (event.relay, event.session)


def held_relays(record: PeerRecord) -> tuple[CloseRelaySession, ...]:
    """The relay sessions a peer holds or is setting up (to release when it leaves)."""
    held = []
    if record.state == lc.RELAY_CONNECTED and record.path is not None:
        held.append(CloseRelaySession(peer=record.key, relay=record.path, session=record.session))
    if record.relay_pending is not None:
        held.append(CloseRelaySession(peer=record.key, relay=record.relay_pending))
    return tuple(held)


def react_to_peer(engine: Engine, event: Any) -> None:
    """A fact about one peer (added, candidates, a timeout, a failed session): decide what is due."""
    advance(engine, engine.peers[event.peer])


def moved_candidates(engine: Engine, observation: Event) -> bool:
    """The observation reports candidates a known peer did not have (it moved, or woke elsewhere)."""
    if type(observation) is not CandidatesUpdated:
        return False
    record = engine.peers.get(observation.peer)
    return record is not None and record.candidates != observation.candidates


def react_candidates(engine: Engine, event: CandidatesUpdated) -> None:
    """New candidates: probe them (the fold made the round due); a relay connect in flight is
    started again, on the next relay by rank: it was set up while the peer was elsewhere (a
    sleeping peer's relay connect is never answered; a TURN session binds the peer's old relayed
    address), so it would only time out (issue 13: a peer that woke waited out that connect and
    then relay_retry_ms, 15.6 s)."""
    record = engine.peers[event.peer]
    pending = record.relay_pending
    if engine._moved and pending is not None and record.state == lc.RELAY_ELIGIBLE:
        emit(
            engine,
            RelayAbandoned(
                at=engine.now,
                peer=record.key,
                relay=pending,
                reason="the peer reported new candidates: the connect in flight was set up before",
            ),
            CloseRelaySession(peer=record.key, relay=pending),
        )
    advance(engine, record)


def react_peer_removed(engine: Engine, event: PeerRemoved) -> None:
    # the sessions it held were put first in the reaction's commands by decide()
    engine._commands.append(ForgetPeer(peer=event.peer))
    schedule(engine, engine.peers[event.peer])


def react_handshake(engine: Engine, event: HandshakeObserved) -> None:
    record = engine.peers[event.peer]
    # A relay-only peer never takes a direct path, even one it opened itself.
    if event.endpoint is not None and engine.direct_allowed(record):
        endpoint = event.endpoint
        if record.state in (lc.PENDING, lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE):
            reason = f"a direct handshake answered on {endpoint}"
            round_ = engine.attempts.open_round(event.peer)
            if round_ is not None and endpoint in round_.outstanding:
                reason += f" (attempt {round_.attempt})"
            select_direct(engine, record, endpoint, reason)
        elif record.state == lc.DIRECT_CONNECTED and record.path != endpoint:
            emit(
                engine,
                DirectPathSelected(
                    at=engine.now,
                    peer=record.key,
                    endpoint=endpoint,
                    reason=f"the peer roamed from {record.path} to {endpoint}",
                ),
                SwitchPath(peer=record.key, endpoint=endpoint),
            )
    advance(engine, record)


def react_relay_announced(engine: Engine, event: RelayAnnounced) -> None:
    peers = engine.peers
    retry_now = engine._retry_relays_now
    for key in sorted(peers):
        record = peers[key]
        # Only peers that may use a relay: for them the retry due now leads to a decision
        # (chosen or unavailable) whose fold sets relay_retry_at, so replay agrees.
        if (
            record.state == lc.RELAY_ELIGIBLE
            and record.relay_pending is None
            and engine.relays_allowed(record)
        ):
            retry_now.add(key)
            try:
                advance(engine, record)
            finally:
                retry_now.discard(key)


def serve_waiting(engine: Engine) -> None:
    """A relay full by this node's count has a slot again: waiting peers try now, in key order.

    As for an announcement, each peer woken decides at once (chosen or unavailable),
    and that decision's fold sets relay_retry_at, so a replay agrees. Stops when the
    freed relays are full again (issue 13).
    """
    freed, engine._freed = engine._freed, set()
    retry_now = engine._retry_relays_now
    peers = engine.peers
    for key in sorted(peers):
        if not any(r in engine.registry.relays and engine.relay_headroom(r) > 0 for r in freed):
            return
        record = peers[key]
        if (
            record.state == lc.RELAY_ELIGIBLE
            and record.relay_pending is None
            and record.relay_retry_at is not None
            and record.relay_retry_at > engine.now
            and engine.relays_allowed(record)
        ):
            retry_now.add(key)
            try:
                advance(engine, record)
            finally:
                retry_now.discard(key)


def react_local_addresses(engine: Engine, event: LocalAddressesChanged) -> None:
    """Our addresses changed: every peer's probes were made due by the fold; take them."""
    peers = engine.peers
    for key in sorted(peers):
        advance(engine, peers[key])


def react_relay_withdrawn(engine: Engine, event: RelayWithdrawn) -> None:
    peers = engine.peers
    for key in sorted(peers):
        record = peers[key]
        if record.state == lc.RELAY_CONNECTED and record.path == event.relay:
            emit(
                engine,
                PathLost(
                    at=engine.now,
                    peer=key,
                    path_kind="relay",
                    path=event.relay,
                    reason=f"relay {event.relay} was withdrawn",
                ),
                CloseRelaySession(peer=key, relay=event.relay, session=record.session),
            )
            advance(engine, record)
        elif record.relay_pending == event.relay:
            emit(
                engine,
                RelayAbandoned(at=engine.now, peer=key, relay=event.relay, reason="the relay was withdrawn"),
                CloseRelaySession(peer=key, relay=event.relay),
            )
            advance(engine, record)


def react_established(engine: Engine, event: RelaySessionEstablished) -> None:
    record = engine.peers[event.peer]
    emit(
        engine,
        RelayPathSelected(
            at=engine.now,
            peer=record.key,
            relay=event.relay,
            session=event.session,
            reason=f"relay {event.relay} established session {event.session}",
        ),
        SwitchPath(peer=record.key, relay=event.relay),
    )
    advance(engine, record)


def react_session_closed(engine: Engine, event: RelaySessionClosed) -> None:
    record = engine.peers[event.peer]
    why = f": {event.reason}" if event.reason else ""
    emit(
        engine,
        PathLost(
            at=engine.now,
            peer=record.key,
            path_kind="relay",
            path=event.relay,
            reason=f"session {event.session} via {event.relay} closed{why}",
        ),
    )
    advance(engine, record)


def react_path_silent(engine: Engine, event: PathSilent) -> None:
    record = engine.peers[event.peer]
    lose_path(
        engine,
        record,
        f"nothing received on {record.path} for {event.silent_ms // 1000} s (transfer counters)",
    )
    advance(engine, record)


def react_tick(engine: Engine, event: Tick) -> None:
    # Key order, not wake order: a wake time is clamped to "now + 1" when it was
    # scheduled, which an engine rebuilt from the log (after a crash) cannot know;
    # which peers are due it does know, so both decide in the same order.
    for record in sorted(pop_due(engine), key=_record_key):
        advance(engine, record)


def react_policy(engine: Engine, event: PolicySet) -> None:
    # Timers depend on the policy (freshness, relays and upgrades allowed): recompute
    # them as a rebuilt engine does, or the live one keeps waking at the old times.
    reschedule_all(engine)


def react_step(engine: Engine, event: StepRequested) -> None:
    peers = engine.peers
    for key in sorted(peers):
        record = peers[key]
        if (
            record.state in (lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE)
            and engine.attempts.open_round(key) is None
            and engine.direct_allowed(record)
            and engine.endpoints_to_try(key)
        ):
            start_round(engine, record, "connect", "a step was requested (step_with_relay)")
        advance(engine, record)


def react_hard_nat_met(engine: Engine, event: HardNatPairMet) -> None:
    """A birthday punch met: record the success; a relayed peer upgrades as for any direct
    answer (hitless, in stepping), a peer no relay carries takes the found path at once."""
    hard_nat.succeed(engine, event)
    record = engine.peers[event.peer]
    if record.state in (lc.RELAY_ELIGIBLE, lc.DIRECT_TRYING):
        why = f"a hard-NAT attempt met on {event.endpoint}, and no relay carries the peer"
        select_direct(engine, record, event.endpoint, why)
    advance(engine, record)


def select_direct(engine: Engine, record: PeerRecord, endpoint: str, reason: str) -> None:
    """Take the direct endpoint that answered (a peer with no path yet, or none but a relay
    connect in flight, which is closed)."""
    pending = record.relay_pending
    closes = [CloseRelaySession(peer=record.key, relay=pending)] if pending else []
    emit(
        engine,
        DirectPathSelected(at=engine.now, peer=record.key, endpoint=endpoint, reason=reason),
        SwitchPath(peer=record.key, endpoint=endpoint),
        *closes,
    )


def _record_key(record: PeerRecord) -> str:
    return record.key


#: The reaction of each observation type (NatObserved and RelayHealthMeasured only fold).
REACTIONS: dict[type, Callable[[Engine, Any], None]] = {
    PeerAdded: react_to_peer,
    PeerRemoved: react_peer_removed,
    CandidatesUpdated: react_candidates,
    HandshakeObserved: react_handshake,
    DirectAttemptTimedOut: react_to_peer,
    RelayAnnounced: react_relay_announced,
    RelayWithdrawn: react_relay_withdrawn,
    RelaySessionEstablished: react_established,
    RelaySessionFailed: react_to_peer,
    RelaySessionClosed: react_session_closed,
    PathSilent: react_path_silent,
    Tick: react_tick,
    StepRequested: react_step,
    PolicySet: react_policy,
    LocalAddressesChanged: react_local_addresses,
    HardNatPairMet: react_hard_nat_met,
}
