"""Snapshots: saved at a seq, found at or before a seq, never replaced."""

from __future__ import annotations

import pytest

from natrelay.eventlog import EventLog, Snapshot, SnapshotError

from .helpers import sample_events


def test_latest_snapshot_at_or_before_a_seq(log: EventLog) -> None:
    log.append(sample_events(30))
    log.save_snapshot("status", 10, b"ten")
    log.save_snapshot("status", 20, b"twenty", state_format="pickle-free")
    log.save_snapshot("other", 25, b"x")
    latest = log.load_snapshot("status")
    assert isinstance(latest, Snapshot)
    assert (latest.seq, latest.state, latest.format) == (20, b"twenty", "pickle-free")
    assert log.load_snapshot("status", at_or_before_seq=19).state == b"ten"  # type: ignore[union-attr]
    assert log.load_snapshot("status", at_or_before_seq=9) is None
    assert log.load_snapshot("missing") is None


def test_snapshot_takes_its_time_from_the_clock(open_log) -> None:  # type: ignore[no-untyped-def]
    log = open_log(clock=lambda: 4242)
    log.append(sample_events(3))
    assert log.save_snapshot("s", 3, b"").created_at == 4242
    assert log.load_snapshot("s").created_at == 4242


def test_snapshot_past_the_end_is_refused(log: EventLog) -> None:
    log.append(sample_events(3))
    with pytest.raises(SnapshotError, match="seq 4: the log ends at seq 3"):
        log.save_snapshot("s", 4, b"")


def test_snapshot_is_never_replaced(log: EventLog) -> None:
    log.append(sample_events(3))
    log.save_snapshot("s", 2, b"first")
    with pytest.raises(SnapshotError, match="different state; snapshots are never replaced"):
        log.save_snapshot("s", 2, b"second")
    assert log.load_snapshot("s").state == b"first"  # type: ignore[union-attr]


def test_saving_the_same_snapshot_again_is_a_no_op(open_log) -> None:  # type: ignore[no-untyped-def]
    times = iter(range(100, 10**6))
    log = open_log(clock=lambda: next(times))
    log.append(sample_events(3))
    first = log.save_snapshot("s", 2, b"same")
    again = log.save_snapshot("s", 2, b"same")
    assert again == first and again.created_at == first.created_at


def test_empty_log_snapshot_at_zero(log: EventLog) -> None:
    log.save_snapshot("s", 0, b"empty")
    assert log.load_snapshot("s").seq == 0  # type: ignore[union-attr]
