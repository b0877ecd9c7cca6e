"""Where a log lives: turning a path or URL into a configured SQLAlchemy engine.

Owns the accepted locations (a file path, `sqlite:///path`, `sqlite://` in
memory, `postgresql+psycopg://...`) and per-connection settings: SQLite in WAL
mode with synchronous=NORMAL, the file created 0600, transactions begun by
this package (BEGIN IMMEDIATE for writers). It never reads or writes rows.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from .errors import BadLogURL, LogNotFound

#: Seconds SQLite itself waits on a locked database before reporting it busy.
SQLITE_BUSY_TIMEOUT_S = 2.0

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
_PG_DRIVERS = {"postgresql", "postgresql+psycopg", "postgres"}


def parse_location(url_or_path: str) -> URL:
    """The SQLAlchemy URL for a path or URL, or `BadLogURL` saying why not."""
    if not isinstance(url_or_path, str) or not url_or_path.strip():
        raise BadLogURL(f"expected a file path or database URL, got {url_or_path!r}")
    if "://" not in url_or_path:
        if url_or_path == ":memory:":
            return URL.create("sqlite")
        return URL.create("sqlite", database=str(Path(url_or_path).expanduser()))
    try:
        url = make_url(url_or_path)
    except ArgumentError as exc:
        raise BadLogURL(f"cannot parse the log URL {url_or_path!r}: {exc}") from None
    if url.drivername in _SQLITE_DRIVERS:
        return url.set(drivername="sqlite")
    if url.drivername in _PG_DRIVERS:
        return url.set(drivername="postgresql+psycopg")
    raise BadLogURL(
        f"unsupported log URL scheme {url.drivername!r} in {url.render_as_string()!r}:"
        " use a file path, sqlite:///path or postgresql+psycopg://user@host/db"
    )


def describe(url: URL) -> str:
    """The location for messages, without a password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _create_sqlite_file(path: str, create: bool) -> None:
    if os.path.isdir(path):
        raise LogNotFound(f"no natrelay log at {path}: it is a directory, not a log file")
    if os.path.exists(path):
        return
    if not create:
        raise LogNotFound(f"no natrelay log at {path} (the file does not exist)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise LogNotFound(f"cannot create the log {path}: the directory {parent} does not exist")
    # 0600: the log holds the mesh's keys and addresses. SQLite gives the WAL
    # and shm files the database file's permissions.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _ensure_wal(dbapi_connection: Any) -> None:
    """Put the file in WAL mode once; later openers only read the mode, which takes no lock.

    Switching the mode needs the database to itself: two agents opening a new shared log
    at the same moment met "database is locked" here, past the busy timeout, and the one
    that lost stopped. So a locked switch is retried for a while, and skipped when another
    opener has switched the file meanwhile.
    """
    deadline = time.monotonic() + 5 * SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            (mode,) = dbapi_connection.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # This package begins transactions itself (pysqlite's implicit ones
        # would defer the write lock and break BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        if not memory:
            _ensure_wal(dbapi_connection)
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        writing = conn.get_execution_options().get("natrelay_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def create_log_engine(url: URL, *, create: bool) -> Engine:
    """An engine for the log at `url`, creating the SQLite file (0600) if allowed."""
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")
        if memory:
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            assert url.database is not None
            _create_sqlite_file(url.database, create)
            engine = create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                pool_size=8,
                max_overflow=32,
            )
        _configure_sqlite(engine, memory)
        return engine
    try:
        import psycopg  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installation
        raise BadLogURL("a PostgreSQL log needs psycopg 3: pip install 'natrelay[postgres]'") from None
    return create_engine(url, pool_size=8, max_overflow=32)
