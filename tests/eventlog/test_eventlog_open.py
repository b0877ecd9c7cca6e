"""Opening a log: locations, creation, the format check, SQLite file settings."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from natrelay.eventlog import (
    FORMAT_VERSION,
    BadLogURL,
    EventLog,
    LogFormatError,
    LogNotFound,
)

from .helpers import libpq_url, sample_events


@pytest.mark.parametrize(
    "url", ["mysql://root@localhost/db", "http://example.com/log", "", "postgresql+asyncpg://x/y"]
)
def test_unsupported_location_is_a_clear_error(url: str) -> None:
    with pytest.raises(BadLogURL, match=r"log URL|file path"):
        EventLog.open(url)


def test_missing_file_without_create_is_not_found(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(LogNotFound, match=r"absent\.db"):
        EventLog.open(str(path), create=False)
    assert not path.exists()


def test_missing_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(LogNotFound, match="does not exist"):
        EventLog.open(str(tmp_path / "no" / "such" / "dir.db"))


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    with EventLog.open(str(path)) as log:
        log.append(sample_events(3))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_url_and_plain_path_open_the_same_log(tmp_path: Path) -> None:
    path = tmp_path / "same.db"
    with EventLog.open(str(path)) as log:
        log.append(sample_events(2))
    with EventLog.open(f"sqlite:///{path}", create=False) as log:
        assert log.last_seq() == 2


def test_in_memory_sqlite_log_works() -> None:
    with EventLog.open(":memory:") as log:
        log.append(sample_events(5))
        assert [s.seq for s in log.read()] == [1, 2, 3, 4, 5]


def test_reopening_keeps_the_events(new_url: Callable[[], str]) -> None:
    url = new_url()
    with EventLog.open(url) as log:
        log.append(sample_events(10))
    with EventLog.open(url, create=False) as log:
        assert log.last_seq() == 10
        assert len(list(log.read())) == 10


def test_empty_database_without_create_is_not_found(backend: str, new_url: Callable[[], str]) -> None:
    url = new_url()
    if backend == "sqlite":
        sqlite3.connect(url).close()  # an empty file is not a log
    with pytest.raises(LogNotFound, match="no natrelay log"):
        EventLog.open(url, create=False)


def test_newer_format_is_refused_with_both_versions(new_url: Callable[[], str]) -> None:
    url = new_url()
    with EventLog.open(url) as log, log.engine.begin() as conn:
        conn.execute(
            text("UPDATE meta SET value = :v WHERE key = 'format_version'"),
            {"v": str(FORMAT_VERSION + 1)},
        )
    with pytest.raises(LogFormatError, match=rf"format version {FORMAT_VERSION + 1}.*upgrade"):
        EventLog.open(url)


def test_foreign_events_table_is_not_taken_for_a_log(backend: str, new_url: Callable[[], str]) -> None:
    url = new_url()
    if backend == "sqlite":
        conn = sqlite3.connect(url)
        conn.execute("CREATE TABLE events (id INTEGER)")
        conn.commit()
        conn.close()
    else:
        schema = url.rsplit("%3D", 1)[1]
        with psycopg.connect(libpq_url(url.split("?")[0]), autocommit=True) as conn:
            conn.execute(f'CREATE TABLE "{schema}".events (id INTEGER)')
    with pytest.raises(LogFormatError, match="not a natrelay log"):
        EventLog.open(url)


def test_meta_records_the_format_version(log: EventLog) -> None:
    with log.engine.connect() as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE key = 'format_version'")).scalar()
    assert value == str(FORMAT_VERSION)


def test_closed_log_refuses_work(log: EventLog) -> None:
    log.close()
    with pytest.raises(Exception, match="closed"):
        log.last_seq()
