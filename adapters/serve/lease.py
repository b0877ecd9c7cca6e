"""One `natrelay serve` per log: an exclusive lease held for the life of the service.

Owns the rule that a log has at most one service: the service decides for
every node of its log, so a second one would decide twice. On SQLite the lease
is an `flock` on a lock file beside the log (`<log>.serve-lock`, holding the
pid); on PostgreSQL a session advisory lock keyed by the log's schema, held on
a connection of its own. Both vanish with the process, so a crashed service
never leaves its log locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from sqlalchemy import text

from natrelay.eventlog import EventLog


class LogServed(Exception):
    """Another `natrelay serve` holds this log."""


@contextlib.contextmanager
def exclusive(log: EventLog) -> Iterator[None]:
    """Hold the log's service lease until the block ends; `LogServed` if taken."""
    if log.dialect == "sqlite":
        database = log.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        path = f"{database}.serve-lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise LogServed(f"{log.location} is already served (pid {holder}; lock {path})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)
        return
    with log.engine.connect() as conn:
        key = "SELECT hashtext('natrelay serve ' || current_database() || '.' || current_schema())"
        lock_id = conn.execute(text(key)).scalar()
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar():
            raise LogServed(f"{log.location} is already served by another natrelay serve")
        conn.commit()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
