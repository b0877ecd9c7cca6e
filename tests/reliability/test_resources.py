"""Concurrency and resources: racing writers, a locked log, a full disk, a read-only database.

Each failure is one clear `EventLogError`, the batch is not applied (nothing of
it is in the log), and a `Node`'s engine is not advanced past the log: it is
rebuilt from what was committed, and the same observation succeeds once the
cause is gone.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.events import PeerAdded, RelayAnnounced, Tick
from natrelay.core.policy import Policy
from natrelay.eventlog import ConcurrencyError, EventLog, EventLogError, LogBusy, LogWriteError
from natrelay.eventlog import location as log_location
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import rebuild, verify
from tests.conftest import make_key

STREAM = "relay/shared"


def announce(at: int) -> RelayAnnounced:
    return RelayAnnounced(at=at, relay="shared", region="eu")


def test_two_writers_on_one_stream_one_wins_the_other_retries_cleanly(tmp_path: Path) -> None:
    path = str(tmp_path / "race.sqlite")
    with EventLog.open(path) as first, EventLog.open(path) as second:
        first.append([(STREAM, announce(1))])
        seen_by_first = first.stream_versions([STREAM])[STREAM]
        seen_by_second = second.stream_versions([STREAM])[STREAM]
        first.append([(STREAM, announce(2))], expected_versions={STREAM: seen_by_first})
        before = second.last_seq()
        with pytest.raises(ConcurrencyError) as caught:
            second.append([(STREAM, announce(3))], expected_versions={STREAM: seen_by_second})
        assert caught.value.stream == STREAM and (caught.value.expected, caught.value.actual) == (1, 2)
        assert "nothing was appended" in str(caught.value)
        assert second.last_seq() == before
        # The loser reads again and retries: it lands right after the winner.
        fresh = second.stream_versions([STREAM])[STREAM]
        (stored,) = second.append([(STREAM, announce(3))], expected_versions={STREAM: fresh})
        assert stored.stream_version == 3 and stored.seq == before + 1


def test_racing_threads_with_retries_lose_no_write_and_leave_no_gap(tmp_path: Path) -> None:
    path = str(tmp_path / "threads.sqlite")
    EventLog.open(path).close()
    writers, each = 4, 15
    conflicts = [0] * writers

    def write(index: int) -> None:
        with EventLog.open(path) as log:
            for n in range(each):
                while True:
                    version = log.stream_versions([STREAM])[STREAM]
                    try:
                        log.append(
                            [(STREAM, announce(index * 1000 + n))], expected_versions={STREAM: version}
                        )
                        break
                    except ConcurrencyError:
                        conflicts[index] += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with EventLog.open(path) as log:
        assert log.stream_versions([STREAM])[STREAM] == writers * each
        result = check_log(log)
        assert result.ok and result.rows == writers * each


@pytest.fixture
def quick_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite waits 50 ms per try instead of 2 s, so bounded retries end quickly."""
    monkeypatch.setattr(log_location, "SQLITE_BUSY_TIMEOUT_S", 0.05)


def hold_write_lock(path: str) -> sqlite3.Connection:
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_locked_log_gives_bounded_retries_then_log_busy_and_the_node_recovers(
    tmp_path: Path, quick_busy_timeout: None
) -> None:
    path = str(tmp_path / "busy.sqlite")
    peer = make_key(1)
    with EventLog.open(path) as log:
        node = Node(log, MemoryNetwork(), node="n1", policy=Policy(mode="direct_first"))
        state, last = node.engine.state(), node.last_seq
        blocker = hold_write_lock(path)
        try:
            with pytest.raises(LogBusy, match=r"stayed locked by another writer \(5 tries\)"):
                node.observe(PeerAdded(at=5, peer=peer, candidates=("198.51.100.1:51820",)))
        finally:
            blocker.rollback()
            blocker.close()
        # Not applied, and the engine is no further than the log.
        assert log.last_seq() == last
        assert node.engine.state() == state and peer not in node.engine.peers
        # The lock is gone: the same observation goes through.
        node.observe(PeerAdded(at=5, peer=peer, candidates=("198.51.100.1:51820",)))
        assert peer in node.engine.peers
        assert verify(log, "n1").ok


@pytest.fixture
def page_limit() -> Iterator[Any]:
    """Install a `max_page_count` on every new connection of a log: a disk that is full."""
    installed: list[tuple[EventLog, Any]] = []

    def limit(log: EventLog, pages: int) -> None:
        def on_connect(dbapi: sqlite3.Connection, _record: Any) -> None:
            dbapi.execute(f"PRAGMA max_page_count = {pages}")

        log.engine.dispose()  # pooled connections would not have the pragma
        event.listen(log.engine, "connect", on_connect)
        installed.append((log, on_connect))

    yield limit
    for log, on_connect in installed:
        event.remove(log.engine, "connect", on_connect)


def test_a_full_disk_is_a_clear_error_and_the_engine_stays_at_the_log(
    tmp_path: Path, page_limit: Any
) -> None:
    path = str(tmp_path / "full.sqlite")
    with EventLog.open(path) as log:
        node = Node(log, MemoryNetwork(), node="n1", policy=Policy(mode="direct_first"))
        pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
        page_limit(log, pages + 2)
        error: LogWriteError | None = None
        at = 0
        for index in range(2_000):
            at += 10
            state, last = node.engine.state(), log.last_seq()
            try:
                node.observe(
                    PeerAdded(at=at, peer=make_key(index), name="x" * 900, candidates=("198.51.100.1:51820",))
                )
            except LogWriteError as exc:
                error = exc
                break
        assert error is not None, "the page limit was never reached"
        assert "database or disk is full" in str(error) and "nothing was appended" in str(error)
        assert path in str(error)
        assert log.last_seq() == last
        assert node.engine.state() == state
        assert make_key(index) not in node.engine.peers
        assert check_log(log).ok and verify(log, "n1").ok
        engine, _ = rebuild(log, "n1")
        assert engine.state() == node.engine.state()


def test_a_read_only_database_is_a_clear_error_and_nothing_is_applied(tmp_path: Path) -> None:
    path = str(tmp_path / "ro.sqlite")
    with EventLog.open(path) as log:
        node = Node(log, MemoryNetwork(), node="n1", policy=Policy(mode="direct_first"))
        node.observe(RelayAnnounced(at=1, relay="r1", region="eu"))

        def read_only(dbapi: sqlite3.Connection, _record: Any) -> None:
            dbapi.execute("PRAGMA query_only = ON")  # as a read-only file or mount answers

        log.engine.dispose()
        event.listen(log.engine, "connect", read_only)
        state, last = node.engine.state(), log.last_seq()
        with pytest.raises(LogWriteError, match=r"readonly database.*nothing was appended") as caught:
            node.observe(Tick(at=10_000))
        assert isinstance(caught.value, EventLogError)
        assert log.last_seq() == last and node.engine.state() == state
        event.remove(log.engine, "connect", read_only)
        log.engine.dispose()
        node.observe(Tick(at=10_000))
        assert log.last_seq() == last + 1
