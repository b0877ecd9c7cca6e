"""A node rebuilt from its log (after a crash) decides exactly as the node that never stopped.

Regression tests for two bugs the kill -9 test found in core/engine.py:

- a Tick served due peers in the order of their wake times; a wake time is
  clamped to "now + 1" when it is scheduled, which a rebuilt engine cannot
  know, so a restarted node decided the same things in a different order and
  `replay --verify` reported a divergence. Due peers are now served in key order.
- a PolicySet left the live engine's timers at the old policy's times, while an
  engine rebuilt after it computes them with the new policy.
"""

from __future__ import annotations

from natrelay.core.engine import Engine
from natrelay.core.events import (
    Event,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelayHealthMeasured,
    Tick,
)
from natrelay.core.policy import Policy
from tests.conftest import make_key

POLICY = Policy(mode="direct_first", attempt_timeout_ms=1_000, parallel_endpoints=1)


def keys_in_reverse_order() -> tuple[str, str]:
    first, second = make_key(1), make_key(2)
    return (first, second) if first > second else (second, first)


def run(history: list[Event], future: list[Event], *, restart: bool) -> list[Event]:
    """Feed `history`, optionally rebuild from what was logged, feed `future`; the decisions of `future`."""
    engine = Engine()
    logged: list[Event] = []
    for event in history:
        logged.append(event)
        logged.extend(engine.handle(event).decisions)
    if restart:
        engine = Engine.rebuilt(logged)
    decided: list[Event] = []
    for event in future:
        decided.extend(engine.handle(event).decisions)
    return decided


def test_a_tick_after_a_restart_serves_due_peers_in_the_same_order() -> None:
    later, earlier = keys_in_reverse_order()  # `later` is added first but sorts last
    history: list[Event] = [
        PolicySet(at=0, policy=POLICY),
        PeerAdded(at=0, peer=later, candidates=("198.51.100.1:51820",)),  # wakes at 1000
        PeerAdded(at=500, peer=earlier, candidates=("198.51.100.2:51820",)),  # wakes at 1500
        RelayAnnounced(at=2_000, relay="r1", region="eu"),
        RelayHealthMeasured(at=2_000, relay="r1", rtt_ms=10, load=1),  # killed before the tick at 2000
    ]
    future: list[Event] = [Tick(at=2_001), Tick(at=4_000), Tick(at=9_000)]
    live = run(history, future, restart=False)
    restarted = run(history, future, restart=True)
    assert live, "the tick has work to do"
    assert restarted == live


def test_a_snapshot_restore_decides_like_the_live_engine() -> None:
    later, earlier = keys_in_reverse_order()
    engine = Engine()
    for event in (
        PolicySet(at=0, policy=POLICY),
        PeerAdded(at=0, peer=later, candidates=("198.51.100.1:51820",)),
        PeerAdded(at=700, peer=earlier, candidates=("198.51.100.2:51820",)),
        RelayAnnounced(at=3_000, relay="r1", region="eu"),
    ):
        engine.handle(event)
    restored = Engine.from_state(engine.state())
    for tick in (Tick(at=3_001), Tick(at=5_000)):
        assert restored.handle(tick) == engine.handle(tick)


def test_a_policy_change_moves_the_live_timers_as_a_rebuild_does() -> None:
    peer = make_key(3)
    history: list[Event] = [
        PolicySet(at=0, policy=Policy(mode="direct_first", handshake_freshness_ms=180_000)),
        PeerAdded(at=0, peer=peer, candidates=("198.51.100.3:51820",)),
    ]
    from natrelay.core.events import HandshakeObserved

    history.append(HandshakeObserved(at=10, peer=peer, endpoint="198.51.100.3:51820"))
    history.append(PolicySet(at=20, policy=Policy(mode="direct_first", handshake_freshness_ms=30_000)))
    live = Engine()
    logged: list[Event] = []
    for event in history:
        logged.append(event)
        logged.extend(live.handle(event).decisions)
    rebuilt = Engine.rebuilt(logged)
    assert live.next_deadline() == rebuilt.next_deadline() == 30_010
    tick = Tick(at=30_010)
    assert live.handle(tick) == rebuilt.handle(tick)
