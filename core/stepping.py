"""Stepping: the decisions due for one peer now, by lifecycle state (the time-driven half of decide).

Owns `advance(engine, record)`: take every decision that is due for a peer
(one `step` at a time, each folded before the next is considered), then set
its next wake-up. One step per lifecycle state: a pending peer starts a round
or goes to relays at once, a trying peer fails rounds until the relay
threshold, a relay-eligible peer chooses, abandons and fails over relays, a
relayed peer probes and upgrades, a connected peer loses a stale path.

Rules of this module:
- it never changes state except through `emit`, which folds each decision
  with `evolve` (exactly what a replay folds); the timer index is set by
  `schedule` and is not state.
- every choice is deterministic: relays are ranked with ties broken by id,
  endpoints rotate by round number, jitter is a hash of (peer, round).
- `engine._step` and `engine._maybe_upgrade` are called through the engine,
  so a test may patch a deliberately broken step onto `Engine`
  (tests/property/mutants.py); everything else is a direct call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hard_nat
from . import lifecycle as lc
from .commands import CloseRelaySession, Command, ConnectViaRelay, SwitchPath, TryDirectEndpoint
from .events import (
    DirectAttemptStarted,
    DirectRoundFailed,
    PathLost,
    PathUpgraded,
    RelayAbandoned,
    RelayChosen,
    RelayEligibilityReached,
    RelayUnavailable,
)
from .jitter import unit_hash
from .peers import PeerRecord
from .reaction import emit
from .schedule import schedule, upgrade_ready_at
from .state import EngineError

if TYPE_CHECKING:
    from .engine import Engine

#: More decisions than this for one peer at one instant is a loop, i.e. a bug in a step.
MAX_STEPS = 32


def advance(engine: Engine, record: PeerRecord) -> None:
    """Take every decision that is due for this peer now, then set its next wake-up."""
    step = engine._step
    for _ in range(MAX_STEPS):
        if not step(record):
            break
    else:  # pragma: no cover - a loop here is a bug in step()
        raise EngineError(f"peer {record.key} keeps deciding without settling")
    schedule(engine, record)


def step(engine: Engine, record: PeerRecord) -> bool:
    """One decision for this peer if one is due; False when nothing is."""
    now, key, state, policy = engine.now, record.key, record.state, engine.policy
    if state == lc.REMOVED:
        return False
    round_ = engine.attempts.open_round(key)
    if round_ is not None and (round_.deadline <= now or not round_.outstanding):
        waited = policy.attempt_timeout_ms
        tried = ", ".join(round_.endpoints)
        emit(
            engine,
            DirectRoundFailed(
                at=now,
                peer=key,
                attempt=round_.attempt,
                endpoints=round_.endpoints,
                purpose=round_.purpose,
                reason=f"no handshake from {tried} within {waited} ms",
            ),
        )
        return True
    if hard_nat.maybe_end(engine, record):
        return True
    if state == lc.PENDING:
        return step_pending(engine, record)
    if state == lc.DIRECT_TRYING:
        failed = engine.attempts.attempts(key)
        if failed >= policy.min_direct_attempts and engine.relays_allowed(record):
            emit(
                engine,
                RelayEligibilityReached(
                    at=now,
                    peer=key,
                    failed_attempts=failed,
                    threshold=policy.min_direct_attempts,
                    reason=f"{failed} direct rounds failed; the threshold is {policy.min_direct_attempts}",
                ),
            )
            return True
        return maybe_round(engine, record, round_) or hard_nat.maybe_start(engine, record)
    if state == lc.RELAY_ELIGIBLE:
        if maybe_round(engine, record, round_):
            return True
        return step_relay(engine, record) or hard_nat.maybe_start(engine, record)
    if state == lc.RELAY_CONNECTED:
        return step_relayed(engine, record, round_)
    if state == lc.DIRECT_CONNECTED:
        if path_stale(engine, record):
            return True
        if (
            round_ is None
            and record.next_probe_at is not None
            and record.next_probe_at <= now
            and engine.direct_allowed(record)
            and engine.endpoints_to_try(key)
        ):
            start_round(engine, record, "upgrade_probe", "new addresses: probing beside the live path")
            return True
        return False
    return False


def step_pending(engine: Engine, record: PeerRecord) -> bool:
    """A new (or reconnecting) peer: relays at once when nothing else makes sense, else a round."""
    key, policy = record.key, engine.policy
    if engine.relays_allowed(record):
        why = None
        if record.access == "relay_only":
            why = "the peer is relay-only"
        elif policy.mode == "relay_first":
            why = "the policy connects through a relay first and probes direct meanwhile"
        elif not engine.endpoints_to_try(key):
            why = "the peer has no direct candidate endpoints"
        if why is not None:
            emit(
                engine,
                RelayEligibilityReached(
                    at=engine.now,
                    peer=key,
                    failed_attempts=engine.attempts.attempts(key),
                    threshold=policy.min_direct_attempts,
                    reason=why,
                ),
            )
            return True
    if engine.direct_allowed(record) and engine.endpoints_to_try(key):
        reason = "connecting"
        if record.lost_endpoint is not None and record.lost_at == engine.now:
            reason = f"reconnecting after losing {record.lost_endpoint}"
        start_round(engine, record, "connect", reason)
        return True
    return False


def step_relayed(engine: Engine, record: PeerRecord, round_: Any) -> bool:
    """A relayed peer: lose a stale session, replace a connect round by probes, probe, upgrade."""
    now, key, policy = engine.now, record.key, engine.policy
    if path_stale(engine, record):
        return True
    if (
        round_ is not None
        and round_.purpose == "connect"
        and policy.upgrade_probe_on_relay
        and engine.upgrades_allowed(record)
        and record.next_probe_at is not None
        and record.next_probe_at <= now
    ):
        emit(
            engine,
            DirectRoundFailed(
                at=now,
                peer=key,
                attempt=round_.attempt,
                endpoints=round_.endpoints,
                purpose="connect",
                reason="no handshake yet, and the peer is relayed now: "
                "a probe over the session replaces this round",
            ),
        )
        return True
    if (
        engine.upgrades_allowed(record)
        and round_ is None
        and record.next_probe_at is not None
        and record.next_probe_at <= now
        and engine.endpoints_to_try(key)
    ):
        start_round(engine, record, "upgrade_probe", "probing for a direct path while relayed")
        return True
    return engine._maybe_upgrade(record) or hard_nat.maybe_start(engine, record)


def maybe_round(engine: Engine, record: PeerRecord, round_: Any) -> bool:
    """Start the next connect round if one is due and none is open."""
    if (
        round_ is None
        and record.next_round_at is not None
        and record.next_round_at <= engine.now
        and engine.direct_allowed(record)
        and engine.endpoints_to_try(record.key)
    ):
        start_round(engine, record, "connect", "the next direct round is due")
        return True
    return False


def start_round(engine: Engine, record: PeerRecord, purpose: str, why: str) -> None:
    """Try the next `parallel_endpoints` endpoints (rotating by round number) at once."""
    key, now, policy = record.key, engine.now, engine.policy
    ordered = engine.endpoints_to_try(key)
    attempt = engine.attempts.next_attempt_number(key)
    width = min(policy.parallel_endpoints, len(ordered))
    start = ((attempt - 1) * width) % len(ordered)
    chosen = [ordered[(start + i) % len(ordered)] for i in range(width)]
    deadline = now + policy.attempt_timeout_ms
    cached = {entry.endpoint: entry for entry in engine.direct_cache.best(key, now)}
    for endpoint in chosen:
        reason = f"{why}: round {attempt}, endpoint {ordered.index(endpoint) + 1} of {len(ordered)}"
        entry = cached.get(endpoint)
        if entry is not None:
            reason += f" (cached: worked {entry.successes}x, last at {entry.last_success_at} ms)"
        emit(
            engine,
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


def step_relay(engine: Engine, record: PeerRecord) -> bool:
    """A relay-eligible peer: abandon a slow connect, or choose the best relay, or say none is usable."""
    key, now, policy = record.key, engine.now, engine.policy
    if record.relay_pending is not None:
        if record.relay_deadline is not None and record.relay_deadline <= now:
            emit(
                engine,
                RelayAbandoned(
                    at=now,
                    peer=key,
                    relay=record.relay_pending,
                    reason=f"no session within {policy.relay_connect_timeout_ms} ms",
                ),
                CloseRelaySession(peer=key, relay=record.relay_pending),
            )
            return True
        return False
    if not engine.relays_allowed(record):
        return False
    retry_at = record.relay_retry_at
    # a relay announced just now makes the retry due whatever relay_retry_at says (decide.py)
    if key not in engine._retry_relays_now and (retry_at is None or retry_at > now):
        return False
    # The announcement's "retry now" is used once: the decision below folds a new
    # relay_retry_at, and the next step must read that (or the peer never settles).
    engine._retry_relays_now.discard(key)
    ranking = engine.relay_ranking(record)
    if not ranking:
        tried = f" (failed: {', '.join(record.relays_failed)})" if record.relays_failed else ""
        retry_at = now + policy.relay_retry_ms
        if engine.relays_full(record):
            # full relays (by this node's count): jittered like the direct rounds, so the
            # peers turned away together do not all come back at the same millisecond; a
            # slot that frees wakes them sooner (decide.serve_waiting)
            tried += " (full)"
            spread = policy.relay_retry_ms * policy.backoff_jitter * (2 * unit_hash(key, now) - 1)
            retry_at = now + max(1, int(policy.relay_retry_ms + spread))
        elif unanswered_round(engine, record):
            # every relay tried took the connect and the peer never answered (asleep, offline):
            # only a fresh connect notices it back before its new candidates are reported
            waited = record.relays_unanswered * policy.relay_connect_timeout_ms // 1000
            tried += f" (unanswered for {waited} s: trying again at once)"
            retry_at = now
        emit(
            engine,
            RelayUnavailable(at=now, peer=key, retry_at=retry_at, reason=f"no usable relay{tried}"),
        )
        return True
    best = ranking[0]
    if record.relays_failed:
        reason = f"failover after {', '.join(record.relays_failed)}: {best.relay} ranks best"
    else:
        reason = f"{best.relay} ranks best of {len(ranking)}"
    if best.relay in engine.relay_cache.worked_before(key):
        reason += " (it carried this peer before)"
    deadline = now + policy.relay_connect_timeout_ms
    emit(
        engine,
        RelayChosen(
            at=now, peer=key, relay=best.relay, ranking=ranking[:8], deadline=deadline, reason=reason
        ),
        ConnectViaRelay(peer=key, relay=best.relay, deadline=deadline),
    )
    return True


def unanswered_round(engine: Engine, record: PeerRecord) -> bool:
    """The relays this peer just failed on all took the connect unanswered (`relays_unanswered`
    counts them in a row, `relays_failed` holds this round's), for less than the policy's
    `relay_unanswered_window_ms` in all."""
    policy = engine.policy
    failed, unanswered = len(record.relays_failed), record.relays_unanswered
    return (
        failed > 0
        and unanswered >= failed
        and unanswered * policy.relay_connect_timeout_ms < policy.relay_unanswered_window_ms
    )


def path_stale(engine: Engine, record: PeerRecord) -> bool:
    """Lose the path if no handshake came within the freshness limit."""
    last = record.last_handshake_at
    limit = engine.policy.handshake_freshness_ms
    if last is None or last + limit > engine.now:
        return False
    path = record.path or ""
    lose_path(
        engine,
        record,
        f"no handshake on {path} for {(engine.now - last) // 1000} s (limit {limit // 1000} s)",
    )
    return True


def lose_path(engine: Engine, record: PeerRecord, reason: str) -> None:
    """The connected peer's path stopped working: record it, release a relay session."""
    kind = "direct" if record.state == lc.DIRECT_CONNECTED else "relay"
    path = record.path or ""
    commands: list[Command] = []
    if kind == "relay":
        commands.append(CloseRelaySession(peer=record.key, relay=path, session=record.session))
    emit(
        engine,
        PathLost(
            at=engine.now,
            peer=record.key,
            path_kind=kind,  # type: ignore[arg-type]
            path=path,
            reason=reason,
        ),
        *commands,
    )


def maybe_upgrade(engine: Engine, record: PeerRecord) -> bool:
    """Move a relayed peer to the direct endpoint that answered, once the hysteresis allows."""
    if not engine.upgrades_allowed(record):
        return False
    ready = upgrade_ready_at(engine, record)
    if ready is None or ready > engine.now:
        return False
    endpoint = record.direct_seen or ""
    relay = record.path or ""
    reason = f"a direct handshake answered on {endpoint} while relayed through {relay}"
    if ready != record.direct_seen_at:
        reason += f" (held {engine.policy.switch_hysteresis_ms} ms after that path was lost)"
    emit(
        engine,
        PathUpgraded(at=engine.now, peer=record.key, endpoint=endpoint, relay=relay, reason=reason),
        SwitchPath(peer=record.key, endpoint=endpoint),
        CloseRelaySession(peer=record.key, relay=relay, session=record.session),
    )
    return True
