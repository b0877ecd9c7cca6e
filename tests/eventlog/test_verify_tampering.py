"""`verify` cannot be fooled: every way a recorded log can lie is a divergence naming its seq.

An honest log is recorded from a real engine (a direct-first peer, two
endpoints per round, two relays: rounds, a failed round, eligibility, a
relay choice, a failover), then copied batch by batch into a fresh log with
one lie told: the last batch lost a decision, a decision too many, two
decisions swapped, a decision with a changed field, an observation gone.
Each must fail `verify`, on SQLite and on PostgreSQL (an absent server fails
these tests, see conftest), with the divergence at the seq of the lie.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from natrelay.core import events as E
from natrelay.core.engine import Engine
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog, replay

from .helpers import public_key

NODE = "n1"
PEER = public_key(7)
Batch = list[E.Event]


def honest_batches() -> list[Batch]:
    """Each observation followed by the decisions the engine took for it."""
    engine = Engine(Policy(mode="direct_first", min_direct_attempts=1, parallel_endpoints=2))
    observations = [
        E.PolicySet(at=0, policy=engine.policy),
        E.RelayAnnounced(at=0, relay="relay-a", region="eu"),
        E.RelayAnnounced(at=0, relay="relay-b", region="us"),
        E.RelayHealthMeasured(at=10, relay="relay-b", rtt_ms=5, load=10),
        E.PeerAdded(at=100, peer=PEER, candidates=("10.0.0.1:51820", "10.0.0.2:51820")),
        E.Tick(at=1_100),
        E.Tick(at=6_100),
    ]
    return [[o, *engine.handle(o).decisions] for o in observations]


def record(log: EventLog, batches: list[Batch]) -> list[int]:
    """Append the batches; return the seq of every event, in order."""
    seqs = []
    for batch in batches:
        stored = log.append([(E.stream_of(event, NODE), event) for event in batch])
        seqs.extend(row.seq for row in stored)
    return seqs


def seq_of(batches: list[Batch], batch: int, index: int) -> int:
    """The seq event `index` of batch `batch` gets in a fresh log (seqs start at 1)."""
    return sum(len(b) for b in batches[:batch]) + index + 1


def test_the_honest_log_verifies_and_has_what_the_lies_need(log: EventLog) -> None:
    batches = honest_batches()
    record(log, batches)
    result = replay.verify(log, NODE)
    assert result.ok, result.divergence
    assert [d.TYPE for d in batches[-1][1:]] == [
        "direct_attempt_started",
        "direct_attempt_started",
        "relay_abandoned",
        "relay_chosen",
    ]
    assert result.decisions == sum(len(b) - 1 for b in batches)


def _lie(log: EventLog, tell: Callable[[list[Batch]], int]) -> tuple[int, str]:
    batches = honest_batches()
    expected_seq = tell(batches)
    record(log, batches)
    result = replay.verify(log, NODE)
    assert not result.ok, "verify passed a log that lies"
    assert result.divergence is not None
    assert result.divergence.seq == expected_seq, result.divergence
    assert f"seq {expected_seq}" in result.divergence.message
    return expected_seq, result.divergence.message


def test_the_last_batch_lost_its_last_decision(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        batches[-1].pop()
        return seq_of(batches, len(batches) - 1, 0)  # the observation whose decision is missing

    _, message = _lie(log, tell)
    assert "relay_chosen" in message


def test_the_last_batch_lost_its_only_decisions(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        del batches[-1][1:]
        return seq_of(batches, len(batches) - 1, 0)

    _lie(log, tell)


def test_a_decision_too_many(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        batches[5].append(batches[5][-1])  # relay_chosen recorded twice
        return seq_of(batches, 5, len(batches[5]) - 1)

    _, message = _lie(log, tell)
    assert "re-deciding gives nothing" in message


def test_a_decision_too_many_at_the_very_end(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        batches[-1].append(batches[-1][-1])
        return seq_of(batches, len(batches) - 1, len(batches[-1]) - 1)

    _lie(log, tell)


def test_two_decisions_swapped(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        batch = batches[5]  # direct_round_failed, relay_eligibility_reached, relay_chosen
        batch[2], batch[3] = batch[3], batch[2]
        return seq_of(batches, 5, 2)

    _lie(log, tell)


def test_two_endpoints_of_a_round_swapped(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        batch = batches[4]  # peer_added, then the two attempts of round 1
        batch[1], batch[2] = batch[2], batch[1]
        return seq_of(batches, 4, 1)

    _, message = _lie(log, tell)
    assert "endpoint" in message


@pytest.mark.parametrize(
    ("batch", "index", "change"),
    [
        (5, 3, {"relay": "relay-a"}),  # chose the other relay
        (5, 3, {"deadline": 99_999}),
        (5, 2, {"failed_attempts": 2}),
        (6, 1, {"endpoint": "10.0.0.9:51820"}),
        (6, 1, {"attempt": 9}),
    ],
)
def test_a_decision_with_a_changed_field(log: EventLog, batch: int, index: int, change: dict) -> None:
    def tell(batches: list[Batch]) -> int:
        batches[batch][index] = attrs.evolve(batches[batch][index], **change)
        return seq_of(batches, batch, index)

    _, message = _lie(log, tell)
    (field,) = change
    assert field in message


def test_an_observation_gone(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        del batches[5][0]  # the tick whose decisions follow the peer_added batch
        return seq_of(batches, 5, 0)  # its first decision now seems to answer peer_added

    _lie(log, tell)


def test_an_observation_without_decisions_gone(log: EventLog) -> None:
    def tell(batches: list[Batch]) -> int:
        del batches[3]  # relay-b's health: without it relay-a ranks first
        return seq_of(batches, 4, 3)  # relay_chosen of the first tick names relay-b

    _, message = _lie(log, tell)
    assert "relay_chosen" in message


def test_a_cut_past_the_end_still_checks_the_last_batch(log: EventLog) -> None:
    # mutant (cosmic-ray) replay.py `until_seq >= log.last_seq()` -> `==`
    batches = honest_batches()
    batches[-1].pop()
    record(log, batches)
    result = replay.verify(log, NODE, until_seq=log.last_seq() + 10)
    assert not result.ok
    assert result.divergence is not None and result.divergence.seq == seq_of(batches, len(batches) - 1, 0)


def test_an_earlier_snapshot_is_saved_beside_a_later_one(log: EventLog) -> None:
    # mutant (cosmic-ray) log.py: the existing-snapshot lookup `seq == seq` -> `seq >= seq`
    record(log, honest_batches())
    log.save_snapshot("engine:n1", 9, b'{"later": true}')
    log.save_snapshot("engine:n1", 5, b'{"earlier": true}')
    found = log.load_snapshot("engine:n1", 6)
    assert found is not None and (found.seq, found.state) == (5, b'{"earlier": true}')


def test_the_default_recorded_time_is_wall_clock_milliseconds() -> None:
    # mutant (cosmic-ray) log.py `time_ns() // 1_000_000` -> `+ 1_000_000`
    import time

    from natrelay.eventlog.log import wall_clock_ms

    before = time.time() * 1000
    now = wall_clock_ms()
    assert before - 1_000 <= now <= time.time() * 1000 + 1_000
