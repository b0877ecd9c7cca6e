"""Following the log: catch up, then see each new commit; stop when asked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from natrelay.core import events as E
from natrelay.eventlog import EventLog, StoredEvent

from .helpers import sample_events


def _collect(
    log: EventLog, want: int, stop: threading.Event, **kwargs: object
) -> tuple[threading.Thread, list[StoredEvent]]:
    seen: list[StoredEvent] = []

    def run() -> None:
        for stored in log.follow(stop=stop, **kwargs):  # type: ignore[arg-type]
            seen.append(stored)
            if len(seen) >= want:
                stop.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


def test_follow_catches_up_then_sees_new_commits(log: EventLog) -> None:
    log.append(sample_events(5))
    stop = threading.Event()
    thread, seen = _collect(log, 15, stop, poll_interval=0.05)
    for i in range(10):
        log.append([("node/n1", E.Tick(at=10_000 + i))])
        time.sleep(0.01)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [s.seq for s in seen] == list(range(1, 16))


def test_follow_wakes_without_waiting_a_whole_poll_interval(log: EventLog) -> None:
    # The poll interval is long; on PostgreSQL NOTIFY wakes the follower, on
    # SQLite the test would take the full interval per event, so the interval is
    # only long for PostgreSQL.
    interval = 60.0 if log.dialect == "postgresql" else 0.05
    stop = threading.Event()
    thread, seen = _collect(log, 3, stop, poll_interval=interval)
    for i in range(3):
        time.sleep(0.1)
        log.append([("node/n1", E.Tick(at=i))])
    thread.join(timeout=30)
    assert not thread.is_alive(), "the follower did not wake on commit"
    assert [s.seq for s in seen] == [1, 2, 3]


def test_follow_with_a_stream_filter_yields_only_those_streams(log: EventLog) -> None:
    stop = threading.Event()
    thread, seen = _collect(log, 2, stop, poll_interval=0.05, stream_prefixes=["relay/"])
    log.append([("node/n1", E.Tick(at=1))])
    log.append([("relay/a", E.RelayWithdrawn(at=2, relay="a")), ("node/n1", E.Tick(at=3))])
    log.append([("relay/b", E.RelayWithdrawn(at=4, relay="b"))])
    thread.join(timeout=30)
    assert [s.stream for s in seen] == ["relay/a", "relay/b"]


def test_breaking_out_of_follow_releases_its_connection(
    open_log: Callable[..., EventLog],
) -> None:
    log = open_log()
    log.append(sample_events(3))
    for _ in range(20):  # more than the pool holds, if connections leaked
        for stored in log.follow(poll_interval=0.05):
            assert stored.seq == 1
            break
    assert log.last_seq() == 3


def test_stop_ends_an_idle_follower(log: EventLog) -> None:
    stop = threading.Event()
    thread, seen = _collect(log, 1, stop, poll_interval=0.05)
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and seen == []
