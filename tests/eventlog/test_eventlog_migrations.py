"""Migrations: an older log is brought up to date on open; a busy SQLite log fails clearly."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, text

from natrelay.eventlog import EventLog, LogBusy, location, migrations
from natrelay.eventlog.backends import SqliteBackend

from .helpers import sample_events


def _add_an_index(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX events_time_idx ON events (event_time)"))


def test_opening_an_older_log_applies_the_missing_migrations(
    new_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = new_url()
    with EventLog.open(url) as log:
        log.append(sample_events(5))
    after = migrations.FORMAT_VERSION + 1
    step = migrations.Migration(after, "index events by time", _add_an_index)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    monkeypatch.setattr(migrations, "FORMAT_VERSION", after)
    with EventLog.open(url, create=False) as log:
        with log.engine.connect() as conn:
            version = conn.execute(text("SELECT value FROM meta WHERE key = 'format_version'")).scalar()
            indexes = {index["name"] for index in inspect(conn).get_indexes("events")}
        assert version == str(after)
        assert "events_time_idx" in indexes
        assert log.last_seq() == 5  # the events are untouched
    with EventLog.open(url, create=False) as log:  # applied once only
        assert log.last_seq() == 5


def test_a_log_of_format_1_gets_the_view_indexes(new_url: Callable[[], str]) -> None:
    url = new_url()
    with EventLog.open(url) as log:
        log.append(sample_events(5))
        with log.engine.begin() as conn:  # as a natrelay of format 1 left it
            conn.execute(text("DROP INDEX events_stream_seq"))
            conn.execute(text("DROP INDEX events_type_seq"))
            conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'format_version'"))
    with EventLog.open(url, create=False) as log, log.engine.connect() as conn:
        indexes = {index["name"] for index in inspect(conn).get_indexes("events")}
        assert {"events_stream_seq", "events_type_seq"} <= indexes
        assert conn.execute(text("SELECT value FROM meta WHERE key = 'format_version'")).scalar() == "2"


def test_a_log_locked_by_another_writer_fails_with_log_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "busy.db"
    monkeypatch.setattr(location, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(SqliteBackend, "attempts", 2)
    with EventLog.open(str(path)) as log:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LogBusy, match=r"busy\.db stayed locked by another writer"):
                log.append(sample_events(1))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        log.append(sample_events(1))
        assert log.last_seq() == 1
