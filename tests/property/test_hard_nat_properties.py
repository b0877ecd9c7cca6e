"""Hard-NAT attempts under arbitrary interleavings (issue 16): bounded, closed, replayable.

Hypothesis drives one relayed peer behind a hopeless pairing through ticks, relay sessions
closing and coming back, reports of meetings (right, late or invented attempt numbers),
changes of this node's addresses and renewed handshakes, with the budget and retry knobs
drawn. Whatever happens: at most one attempt is open; every attempt ends (met or failed) no
later than its deadline plus the gap to the next observation; no more than the allowed
attempts between two address changes; every started attempt carries the policy's budget;
the peer leaves its relay for a hard-NAT path only after a meeting was reported; and the
log folds back into exactly the live state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.core.engine import Engine
from natrelay.core.events import (
    Event,
    HandshakeObserved,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    HardNatPairMet,
    LocalAddressesChanged,
    NatObserved,
    PathUpgraded,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelaySessionClosed,
    RelaySessionEstablished,
    Tick,
)
from natrelay.core.policy import Policy
from tests.conftest import make_key

P = make_key(1)
PUBLIC = "37.0.0.9:40000"

steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.sampled_from([1, 500, 3_000, 10_000, 60_000, 250_000])),
        st.tuples(st.just("met"), st.integers(0, 3)),  # 0: the open attempt's number, else made up
        st.tuples(st.just("relay_lost"), st.just(0)),
        st.tuples(st.just("relay_back"), st.just(0)),
        st.tuples(st.just("renew"), st.just(0)),
        st.tuples(st.just("moved"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=steps,
    max_attempts=st.integers(0, 3),
    timeout=st.sampled_from([2_000, 10_000]),
    retry=st.sampled_from([1_000, 60_000]),
    local=st.sampled_from(["symmetric", "firewall"]),
)
def test_attempts_stay_bounded_closed_and_replayable(
    steps: list[tuple[str, int]], max_attempts: int, timeout: int, retry: int, local: str
) -> None:
    policy = Policy(
        hard_nat_enabled=True,
        hard_nat_max_attempts=max_attempts,
        hard_nat_timeout_ms=timeout,
        hard_nat_retry_ms=retry,
    )
    engine = Engine()
    log: list[Event] = []
    now = 0
    session = 0

    def feed(event: Event) -> None:
        reaction = engine.handle(event)
        log.append(event)
        log.extend(reaction.decisions)

    def tick_until(end: int) -> None:
        while (deadline := engine.next_deadline()) is not None and deadline <= end:
            feed(Tick(at=deadline))

    feed(PolicySet(at=0, policy=policy))
    feed(NatObserved(at=0, nat_type=local))
    feed(RelayAnnounced(at=0, relay="r1", region="eu"))
    feed(
        PeerAdded(
            at=1, peer=P, candidates=(PUBLIC,), nat_type="symmetric" if local != "symmetric" else "firewall"
        )
    )
    feed(RelaySessionEstablished(at=2, peer=P, relay="r1", session="s0"))
    now = 2
    for kind, value in steps:
        record = engine.peers[P]
        if kind == "wait":
            tick_until(now + value)
            now = max(now + value, engine.now)
            continue
        now = max(now, engine.now) + 1
        if kind == "met":
            tried = engine.hard_nat.open.get(P)
            attempt = tried.attempt if tried is not None and value == 0 else 1 + value * 7
            feed(
                HardNatPairMet(at=now, peer=P, attempt=attempt, endpoint=PUBLIC, local_port=5, probes_sent=3)
            )
        elif kind == "relay_lost" and record.state == "relay_connected":
            feed(RelaySessionClosed(at=now, peer=P, relay="r1", session=record.session or ""))
        elif kind == "relay_back" and record.relay_pending is not None:
            session += 1
            feed(RelaySessionEstablished(at=now, peer=P, relay="r1", session=f"s{session}"))
        elif kind == "renew" and record.state == "relay_connected":
            feed(HandshakeObserved(at=now, peer=P, relay="r1"))
        elif kind == "moved":
            feed(LocalAddressesChanged(at=now, addresses=("37.0.0.1:51820",)))
    tick_until(now + 4 * timeout)
    _check(log, policy, engine.now)
    assert Engine.rebuilt(log).state() == engine.state()


def _check(log: list[Event], policy: Policy, end: int) -> None:
    open_: dict[int, HardNatAttemptStarted] = {}
    since_reset = 0
    met: set[int] = set()
    for event in log:
        if isinstance(event, LocalAddressesChanged):
            since_reset = 0
        elif isinstance(event, HardNatAttemptStarted):
            assert not open_, f"attempt {event.attempt} started while {list(open_)} is open"
            assert (event.sockets, event.probes) == (policy.hard_nat_sockets, policy.hard_nat_probes)
            assert event.deadline == event.at + policy.hard_nat_timeout_ms
            open_[event.attempt] = event
            since_reset += 1
            if policy.hard_nat_max_attempts:
                assert since_reset <= policy.hard_nat_max_attempts
        elif isinstance(event, HardNatAttemptFailed | HardNatAttemptSucceeded):
            started = open_.pop(event.attempt)
            assert event.at <= started.deadline or isinstance(event, HardNatAttemptFailed)
            if isinstance(event, HardNatAttemptSucceeded):
                met.add(event.attempt)
                since_reset = 0
        elif isinstance(event, Tick | HardNatPairMet | RelaySessionClosed) and open_:
            started = next(iter(open_.values()))
            # an attempt is ended at the first observation at or after its deadline
            assert event.at <= started.deadline or _ends_now(log, event, started)
        elif isinstance(event, PathUpgraded):
            assert met, "left the relay with no meeting and no plain direct answer"
    assert all(s.deadline > end for s in open_.values()), (
        f"attempts left open past their deadline: {list(open_)}"
    )


def _ends_now(log: list[Any], event: Event, started: HardNatAttemptStarted) -> bool:
    """The decisions right after `event` include the end of `started`."""
    index = next(i for i, item in enumerate(log) if item is event)
    for item in log[index + 1 :]:
        if item.KIND == "observation":
            return False
        if (
            isinstance(item, HardNatAttemptFailed | HardNatAttemptSucceeded)
            and item.attempt == started.attempt
        ):
            return True
    return False
