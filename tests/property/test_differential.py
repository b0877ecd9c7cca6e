"""Differential test: the engine against a small reference model of the lifecycle, written here.

The reference model (`Reference`, in reference_model.py) is plain Python written from the
lifecycle described in DESIGN.md, README.md and docs/policies.md; it shares no
code with core/ (not its transition table, not its projections, not its relay
score, not its state names' constants): it imports only core's event, command
and policy types. Hypothesis draws a policy and a sequence of inputs (peers
added and removed, direct handshakes on any of a peer's endpoints, attempt
timeouts of single endpoints, relay sessions established, refused, closed,
relay keepalives, time passing to the next deadline or by a drawn amount);
both the engine and the model get the same observations at the same times, and
after each one they must agree on:

- every peer's lifecycle state;
- the commands each peer got, in order, with their TARGETS: which endpoint
  each TryDirectEndpoint and direct SwitchPath names, which relay each
  ConnectViaRelay, relay SwitchPath and CloseRelaySession names;
- the engine's next deadline (when the shell must feed the next Tick).

What the model covers:
- both modes: relay-first (natrelay's default: relay at once, direct rounds
  beside it) and direct-first after `min_direct_attempts` 1..3 failed rounds;
- three candidate endpoints per peer, `parallel_endpoints` 1..3, rounds
  rotating through the list; endpoints that worked before (the direct cache:
  most successes, then most recent) go first, and that memory outlives a
  removal of the peer;
- exponential backoff between rounds (factor 1 or 2, a cap), no jitter;
- three relays of drawn RTTs (ties included, one beyond the latency ceiling),
  ranked by the documented score (weights times latency, load, capability,
  region, reliability EWMA over session outcomes, times 1 - loss, rounded to
  6 digits), relays that carried the peer before first (most successes, then
  fewest failures), ties by id; relays that just failed the peer are skipped
  until none is left, then the peer waits `relay_retry_ms`;
- no upgrades (`upgrade_enabled=False`): a relayed peer stays relayed until its
  session closes or its path goes stale;
- every peer `auto`, no preferred region, relays never full, withdrawn or
  stale; only valid observations are fed (rejections are the fuzzing
  machine's business).

Each of these mutations of core/ makes this test fail (checked by hand): relays
ranked worst-first; the worked-before preference dropped (the `@example` below
exists for it); ties by reverse id; rounds rotating one endpoint late; the
second endpoint tried first; the direct cache ignored; the backoff exponent off
by one; failed relays not skipped; reliability not lowered by a failure.
"""

from __future__ import annotations

from hypothesis import example, given, settings
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

from .reference_model import ENDPOINTS, PEERS, RELAYS, Command, Reference, RefPeer


def _command(command: object) -> Command:
    if isinstance(command, TryDirectEndpoint):
        return ("try", command.endpoint)
    if isinstance(command, ConnectViaRelay):
        return ("connect", command.relay)
    if isinstance(command, SwitchPath):
        return ("switch", command.endpoint or command.relay)
    if isinstance(command, CloseRelaySession):
        return ("close", command.relay)
    assert isinstance(command, ForgetPeer), command
    return ("forget", None)


# ------------------------------------------------------------------ the driver


def _commands(reaction: object) -> dict[str, list[Command]]:
    found: dict[str, list[Command]] = {}
    for command in reaction.commands:  # type: ignore[attr-defined]
        found.setdefault(command.peer, []).append(_command(command))
    return found


def _applies(action: str, peer: RefPeer | None) -> bool:
    if action == "add":
        return peer is None or peer.state == "removed"
    if peer is None or peer.state == "removed":
        return False
    return {
        "timeout": bool(peer.outstanding),
        "relay_up": peer.pending is not None,
        "relay_fail": peer.pending is not None,
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
                "timeout",
                "relay_up",
                "relay_up",
                "relay_fail",
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
        st.integers(0, 2),  # which endpoint answers, which outstanding one times out
        st.sampled_from([1, 100, 1_000, 5_000, 30_000]),
    ),
    min_size=4,
    max_size=50,
)


# A relay that carried the peer leads the ranking even where another scores higher: relay-a
# (10 ms) refuses, relay-b (120 ms) carries the peer, which is removed and added again;
# relay-a still scores 0.825 to relay-b's 0.72, but relay-b is asked first.
WORKED_BEFORE = [("add", 0, 0, 1), ("relay_fail", 0, 0, 1), ("relay_up", 0, 0, 1)]
WORKED_BEFORE += [("remove", 0, 0, 1), ("add", 0, 0, 1)]


@settings(max_examples=400, deadline=None)
@example(
    mode="relay_first",
    threshold=1,
    width=1,
    gap=100,
    factor=1.0,
    cap=1_500,
    timeout=300,
    connect_timeout=500,
    retry=2_000,
    freshness=20_000,
    rtts=(10, 120, 250),
    steps=WORKED_BEFORE,
)
@given(
    mode=st.sampled_from(["relay_first", "direct_first"]),
    threshold=st.integers(1, 3),
    width=st.integers(1, 3),
    gap=st.sampled_from([100, 1_000]),
    factor=st.sampled_from([1.0, 2.0]),
    cap=st.sampled_from([1_500, 30_000]),
    timeout=st.sampled_from([300, 1_000]),
    connect_timeout=st.sampled_from([500, 5_000]),
    retry=st.sampled_from([2_000, 10_000]),
    freshness=st.sampled_from([20_000, 180_000]),
    rtts=st.tuples(*[st.sampled_from([10, 50, 50, 120, 250])] * len(RELAYS)),
    steps=actions,
)
def test_the_engine_agrees_with_the_reference_model(
    mode: str,
    threshold: int,
    width: int,
    gap: int,
    factor: float,
    cap: int,
    timeout: int,
    connect_timeout: int,
    retry: int,
    freshness: int,
    rtts: tuple[int, ...],
    steps: list[tuple[str, int, int, int]],
) -> None:
    policy = Policy(
        mode=mode,  # type: ignore[arg-type]
        min_direct_attempts=threshold,
        parallel_endpoints=width,
        step_interval_ms=gap,
        backoff_factor=factor,
        backoff_cap_ms=cap,
        backoff_jitter=0.0,
        attempt_timeout_ms=timeout,
        relay_connect_timeout_ms=connect_timeout,
        relay_retry_ms=retry,
        handshake_freshness_ms=freshness,
        upgrade_enabled=False,
        relay_stale_after_ms=10**12,
    )
    rtt = dict(zip(RELAYS, rtts, strict=True))
    engine, model = Engine(policy), Reference(policy, rtt)
    for relay in RELAYS:
        engine.handle(E.RelayAnnounced(at=0, relay=relay, region="eu"))
        engine.handle(E.RelayHealthMeasured(at=0, relay=relay, rtt_ms=rtt[relay], load=0))
    now, sessions = 0, 0
    for index, (action, which, pick, wait) in enumerate(steps):
        # The drawn peer, or the next one the action applies to (answers need something asked).
        rotated = PEERS[which:] + PEERS[:which]
        key = next((k for k in rotated if _applies(action, model.peers.get(k))), PEERS[which])
        peer = model.peers.get(key)
        live = peer is not None and peer.state != "removed"
        expected: dict[str, list[Command]] = {}
        out = expected.setdefault(key, [])
        event: E.Event | None = None
        if action == "add" and not live:
            event = E.PeerAdded(at=now, peer=key, candidates=ENDPOINTS[key])
            model.peers[key] = RefPeer()
            model.advance(key, now, out)
        elif action == "remove" and live:
            assert peer is not None
            event = E.PeerRemoved(at=now, peer=key)
            if peer.state == "relay_connected":
                out.append(("close", peer.path))
            if peer.pending is not None:
                out.append(("close", peer.pending))
            out.append(("forget", None))
            model.peers[key] = RefPeer(state="removed")
        elif action == "answer" and live:
            assert peer is not None
            endpoint = ENDPOINTS[key][pick]
            event = E.HandshakeObserved(at=now, peer=key, endpoint=endpoint)
            model.refresh(key, endpoint, now)
            if peer.state in ("pending", "direct_trying", "relay_eligible"):
                out.append(("switch", endpoint))
                if peer.pending is not None:
                    out.append(("close", peer.pending))
                model.direct_success(key, endpoint, now)
                model.peers[key] = RefPeer(state="direct_connected", last_handshake=now, path=endpoint)
            elif peer.state == "direct_connected":
                if peer.path != endpoint:  # the peer roamed
                    out.append(("switch", endpoint))
                    model.direct_success(key, endpoint, now)
                    peer.path = endpoint
                peer.last_handshake = now
            model.advance(key, now, out)
        elif action == "timeout" and live and peer is not None and peer.outstanding:
            endpoint = peer.outstanding.pop(pick % len(peer.outstanding))
            event = E.DirectAttemptTimedOut(at=now, peer=key, endpoint=endpoint, attempt=peer.attempt)
            model.advance(key, now, out)
        elif action in ("relay_up", "relay_fail") and peer is not None and peer.pending is not None:
            relay, peer.pending, peer.relay_deadline = peer.pending, None, None
            if action == "relay_up":
                sessions += 1
                event = E.RelaySessionEstablished(at=now, peer=key, relay=relay, session=f"s{sessions}")
                model.outcome(key, relay, worked=True)
                peer.state, peer.path, peer.session, peer.last_handshake = (
                    "relay_connected",
                    relay,
                    f"s{sessions}",
                    now,
                )
                peer.relay_retry_at = peer.next_round_at = None
                out.append(("switch", relay))
            else:
                event = E.RelaySessionFailed(at=now, peer=key, relay=relay, reason="refused")
                model.outcome(key, relay, worked=False)
                peer.relays_failed, peer.relay_retry_at = (*peer.relays_failed, relay), now
            model.advance(key, now, out)
        elif action == "relay_close" and peer is not None and peer.state == "relay_connected":
            assert peer.path is not None
            event = E.RelaySessionClosed(
                at=now, peer=key, relay=peer.path, session=peer.session, reason="gone"
            )
            model.count(key, peer.path, worked=False)  # the peer's track record, not the relay's health
            peer.relays_failed, peer.relay_retry_at, peer.next_round_at = (peer.path,), now, now
            peer.state, peer.path, peer.session, peer.last_handshake = "relay_eligible", None, None, None
            model.advance(key, now, out)
        elif action == "keepalive" and peer is not None and peer.state == "relay_connected":
            event = E.HandshakeObserved(at=now, peer=key, relay=peer.path)
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
        got = _commands(reaction)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}, where
        for each, ref in model.peers.items():
            assert engine.peers[each].state == ref.state, f"{where}: peer {each[:6]}"
        assert engine.next_deadline() == model.next_deadline(), where
