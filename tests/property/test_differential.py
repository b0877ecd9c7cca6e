"""Differential test: the engine against a small reference model of the lifecycle, written here.

The reference model (`Reference`, below) is plain Python written from the
lifecycle described in DESIGN.md and README.md; it shares no code with core/
(not its transition table, not its projections, not its state names' constants).
Hypothesis draws a sequence of inputs (peers added and removed, direct
handshakes, attempt timeouts, relay sessions established, refused, closed,
relay keepalives, time passing to the next deadline or by a drawn amount); both
the engine and the model get the same observations at the same times, and after
each one they must agree on:

- every peer's lifecycle state;
- the commands each peer got, by kind and in order (try direct, connect relay,
  switch path, close relay, forget);
- the engine's next deadline (when the shell must feed the next Tick).

The model covers a clear sub-policy, not all of the engine:
- direct-first, `min_direct_attempts` 1..3, one endpoint per round
  (`parallel_endpoints=1`) and one candidate endpoint per peer, so which
  endpoint a round tries is never in question;
- constant gap between rounds (`backoff_factor=1`, no jitter);
- exactly one relay, announced at time 0, never withdrawn or measured, never
  stale (`relay_stale_after_ms` very large);
- no upgrades (`upgrade_enabled=False`): a relayed peer stays relayed until its
  session closes or its path goes stale;
- every peer `auto`, no preferred region; only valid observations are fed
  (rejections are the fuzzing machine's business).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.core import events as E
from natrelay.core.commands import (
    CloseRelaySession,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.engine import Engine
from natrelay.core.policy import Policy

RELAY = "relay-a"
PEERS = tuple(base64.b64encode(bytes([i + 7]) * 32).decode() for i in range(2))
ENDPOINT = {key: f"10.0.0.{i + 1}:51820" for i, key in enumerate(PEERS)}
KIND = {
    TryDirectEndpoint: "try",
    ConnectViaRelay: "connect",
    SwitchPath: "switch",
    CloseRelaySession: "close",
    ForgetPeer: "forget",
}


# ------------------------------------------------------------------ the reference model


@dataclass
class RefPeer:
    state: str = "pending"
    failed: int = 0  # failed rounds since the last direct success
    attempt: int = 0  # number of the latest round
    round_deadline: int | None = None  # the open round, if any
    round_answered_no: bool = False  # its only endpoint timed out
    next_round_at: int | None = None
    relay_pending_until: int | None = None  # a connect in flight, until then
    relay_excluded: bool = False  # the relay just failed this peer
    relay_retry_at: int | None = None
    last_handshake: int | None = None
    session: str | None = None


class Reference:
    """The lifecycle of DESIGN.md for the sub-policy above, one peer at a time."""

    def __init__(self, p: Policy) -> None:
        self.p = p
        self.peers: dict[str, RefPeer] = {}

    def _start_round(self, peer: RefPeer, now: int) -> list[str]:
        peer.attempt += 1
        peer.round_deadline, peer.round_answered_no, peer.next_round_at = (
            now + self.p.attempt_timeout_ms,
            False,
            None,
        )
        return ["try"]

    def _step(self, peer: RefPeer, now: int) -> list[str] | None:
        """One decision if one is due (its commands), else None."""
        p = self.p
        if peer.round_deadline is not None and (peer.round_deadline <= now or peer.round_answered_no):
            peer.round_deadline, peer.failed = None, peer.failed + 1
            peer.next_round_at = now + p.step_interval_ms
            return []
        if peer.state == "pending":
            peer.state = "direct_trying"
            return self._start_round(peer, now)
        if peer.state == "direct_trying" and peer.failed >= p.min_direct_attempts:
            peer.state, peer.relay_excluded, peer.relay_retry_at = "relay_eligible", False, now
            return []
        waiting = peer.state in ("direct_trying", "relay_eligible") and peer.round_deadline is None
        if waiting and peer.next_round_at is not None and peer.next_round_at <= now:
            return self._start_round(peer, now)
        if peer.state == "relay_eligible":
            if peer.relay_pending_until is not None:
                if peer.relay_pending_until > now:
                    return None
                peer.relay_pending_until, peer.relay_excluded, peer.relay_retry_at = None, True, now
                return ["close"]  # abandoned: no session in time
            if peer.relay_retry_at is None or peer.relay_retry_at > now:
                return None
            if peer.relay_excluded:  # no other relay: look again later
                peer.relay_excluded, peer.relay_retry_at = False, now + p.relay_retry_ms
                return []
            peer.relay_pending_until, peer.relay_retry_at = now + p.relay_connect_timeout_ms, None
            return ["connect"]
        if peer.state in ("direct_connected", "relay_connected"):
            assert peer.last_handshake is not None
            if peer.last_handshake + p.handshake_freshness_ms <= now:
                relayed = peer.state == "relay_connected"
                peer.state = "relay_eligible" if relayed else "pending"
                peer.last_handshake, peer.session, peer.next_round_at = None, None, now
                if relayed:
                    peer.relay_excluded, peer.relay_retry_at = True, now
                return ["close"] if relayed else []
        return None

    def advance(self, key: str, now: int, out: list[str]) -> None:
        peer = self.peers[key]
        while peer.state != "removed" and (found := self._step(peer, now)) is not None:
            out.extend(found)

    def next_deadline(self) -> int | None:
        times = []
        for peer in self.peers.values():
            if peer.state == "removed":
                continue
            if peer.round_deadline is not None:
                times.append(peer.round_deadline)
            elif peer.state in ("direct_trying", "relay_eligible") and peer.next_round_at is not None:
                times.append(peer.next_round_at)
            if peer.state == "relay_eligible":
                pending = peer.relay_pending_until
                times.extend(t for t in (pending if pending is not None else peer.relay_retry_at,) if t)
            if peer.last_handshake is not None:
                times.append(peer.last_handshake + self.p.handshake_freshness_ms)
        return min(times, default=None)


# ------------------------------------------------------------------ the driver


def _kinds(reaction: object) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for command in reaction.commands:  # type: ignore[attr-defined]
        found.setdefault(command.peer, []).append(KIND[type(command)])
    return found


def _applies(action: str, peer: RefPeer | None) -> bool:
    if action == "add":
        return peer is None or peer.state == "removed"
    if peer is None or peer.state == "removed":
        return False
    return {
        "timeout": peer.round_deadline is not None,
        "relay_up": peer.relay_pending_until is not None,
        "relay_fail": peer.relay_pending_until is not None,
        "relay_close": peer.state == "relay_connected",
        "keepalive": peer.state == "relay_connected",
    }.get(action, True)


actions = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "add",
                "add",
                "remove",
                "answer",
                "timeout",
                "timeout",
                "relay_up",
                "relay_up",
                "relay_fail",
                "relay_close",
                "keepalive",
                "tick",
                "tick",
                "tick",
                "tick",
                "wait",
            ]
        ),
        st.integers(0, len(PEERS) - 1),
        st.sampled_from([1, 100, 1_000, 5_000, 30_000]),
    ),
    min_size=4,
    max_size=40,
)


@settings(max_examples=300)
@given(
    threshold=st.integers(1, 3),
    gap=st.sampled_from([100, 1_000]),
    timeout=st.sampled_from([300, 1_000]),
    connect_timeout=st.sampled_from([500, 5_000]),
    retry=st.sampled_from([2_000, 10_000]),
    freshness=st.sampled_from([20_000, 180_000]),
    steps=actions,
)
def test_the_engine_agrees_with_the_reference_model(
    threshold: int,
    gap: int,
    timeout: int,
    connect_timeout: int,
    retry: int,
    freshness: int,
    steps: list[tuple[str, int, int]],
) -> None:
    policy = Policy(
        mode="direct_first",
        min_direct_attempts=threshold,
        parallel_endpoints=1,
        step_interval_ms=gap,
        backoff_factor=1.0,
        backoff_jitter=0.0,
        attempt_timeout_ms=timeout,
        relay_connect_timeout_ms=connect_timeout,
        relay_retry_ms=retry,
        handshake_freshness_ms=freshness,
        upgrade_enabled=False,
        relay_stale_after_ms=10**12,
    )
    engine, model = Engine(policy), Reference(policy)
    engine.handle(E.RelayAnnounced(at=0, relay=RELAY, region="eu"))
    now, sessions = 0, 0
    for index, (action, which, wait) in enumerate(steps):
        # The drawn peer, or the next one the action applies to (answers need something asked).
        rotated = PEERS[which:] + PEERS[:which]
        key = next((k for k in rotated if _applies(action, model.peers.get(k))), PEERS[which])
        peer = model.peers.get(key)
        live = peer is not None and peer.state != "removed"
        expected: dict[str, list[str]] = {}
        out = expected.setdefault(key, [])
        event: E.Event | None = None
        if action == "add" and not live:
            event = E.PeerAdded(at=now, peer=key, candidates=(ENDPOINT[key],))
            model.peers[key] = RefPeer()
            model.advance(key, now, out)
        elif action == "remove" and live:
            assert peer is not None
            event = E.PeerRemoved(at=now, peer=key)
            if peer.state == "relay_connected":
                out.append("close")
            if peer.relay_pending_until is not None:
                out.append("close")
            out.append("forget")
            model.peers[key] = RefPeer(state="removed")
        elif action == "answer" and live:
            assert peer is not None
            event = E.HandshakeObserved(at=now, peer=key, endpoint=ENDPOINT[key])
            if peer.state in ("pending", "direct_trying", "relay_eligible"):
                out.extend(["switch", "close"] if peer.relay_pending_until is not None else ["switch"])
                model.peers[key] = peer = RefPeer(state="direct_connected", last_handshake=now)
            elif peer.state == "direct_connected":
                peer.last_handshake = now
            model.advance(key, now, out)
        elif action == "timeout" and live and peer is not None and peer.round_deadline is not None:
            event = E.DirectAttemptTimedOut(at=now, peer=key, endpoint=ENDPOINT[key], attempt=peer.attempt)
            peer.round_answered_no = True
            model.advance(key, now, out)
        elif (
            action in ("relay_up", "relay_fail") and peer is not None and peer.relay_pending_until is not None
        ):
            peer.relay_pending_until = None
            if action == "relay_up":
                sessions += 1
                event = E.RelaySessionEstablished(at=now, peer=key, relay=RELAY, session=f"s{sessions}")
                peer.state, peer.session, peer.last_handshake = "relay_connected", f"s{sessions}", now
                peer.relay_retry_at = peer.next_round_at = None
                out.append("switch")
            else:
                event = E.RelaySessionFailed(at=now, peer=key, relay=RELAY, reason="refused")
                peer.relay_excluded, peer.relay_retry_at = True, now
            model.advance(key, now, out)
        elif action == "relay_close" and peer is not None and peer.state == "relay_connected":
            event = E.RelaySessionClosed(at=now, peer=key, relay=RELAY, session=peer.session, reason="gone")
            peer.state, peer.session, peer.last_handshake = "relay_eligible", None, None
            peer.relay_excluded, peer.relay_retry_at, peer.next_round_at = True, now, now
            model.advance(key, now, out)
        elif action == "keepalive" and peer is not None and peer.state == "relay_connected":
            event = E.HandshakeObserved(at=now, peer=key, relay=RELAY)
            peer.last_handshake = now
            model.advance(key, now, out)
        elif action in ("tick", "wait"):
            due = model.next_deadline()
            now = max(now, due) if action == "tick" and due is not None else now + wait
            if due is not None and due <= now:
                event = E.Tick(at=now)
                expected = {}
                for each in sorted(model.peers):
                    model.advance(each, now, expected.setdefault(each, []))
        if event is None:
            continue
        reaction = engine.handle(event)
        where = f"step {index} ({action} {key[:6]} at {now})"
        got = _kinds(reaction)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}, where
        for each, ref in model.peers.items():
            assert engine.peers[each].state == ref.state, f"{where}: peer {each[:6]}"
        assert engine.next_deadline() == model.next_deadline(), where
