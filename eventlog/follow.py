"""Following the log as it grows: catch up, then wait for the next commit.

Owns how a follower waits: LISTEN/NOTIFY on PostgreSQL (every append notifies
at commit; a timeout of `poll_interval` guards against a lost notification),
a sleep of `poll_interval` on SQLite. Which events to yield is `EventLog.read`'s
business; the gap rule (see `backends`) makes "everything after the last seq I
saw" complete.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

import sqlalchemy

from .backends import CHANNEL
from .records import StoredEvent


class FollowedLog(Protocol):
    """What following needs of a log; `EventLog` is one. Keeps follow.py below log.py (no cycle)."""

    @property
    def dialect(self) -> str: ...

    @property
    def engine(self) -> sqlalchemy.Engine: ...

    def last_seq(self) -> int: ...

    def read(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
    ) -> Iterator[StoredEvent]: ...


def follow(
    log: FollowedLog,
    from_seq: int,
    poll_interval: float,
    streams: Collection[str] | None,
    stream_prefixes: Collection[str] | None,
    stop: threading.Event | None,
) -> Iterator[StoredEvent]:
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    stopped = stop or threading.Event()
    with _waiter(log, poll_interval) as wait:
        after = from_seq - 1
        while not stopped.is_set():
            # Everything up to the log's last seq is committed and visible (the
            # gap rule), so after reading up to `top` no row <= top can appear;
            # with stream filters this also keeps a poll from rescanning
            # unrelated events. A commit after last_seq() (LISTEN is already in
            # place) leaves a notification that ends the next wait at once.
            top = log.last_seq()
            if top <= after:
                wait(stopped)
                continue
            for stored in log.read(after + 1, top, streams, stream_prefixes):
                yield stored
                if stopped.is_set():
                    return
            after = top


@contextlib.contextmanager
def _waiter(log: FollowedLog, poll_interval: float) -> Iterator[Callable[[threading.Event], None]]:
    if log.dialect != "postgresql":

        def sleep(stopped: threading.Event) -> None:
            stopped.wait(poll_interval)

        yield sleep
        return

    raw = log.engine.raw_connection()
    conn: Any = raw.driver_connection
    try:
        conn.rollback()
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")

        def listen(stopped: threading.Event) -> None:
            # Wake at a notification, or at the poll interval, or soon after stop.
            deadline = time.monotonic() + poll_interval
            while not stopped.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if _notified(conn, min(left, 0.1)):
                    # Drain what else queued up (one read serves them all).
                    while _notified(conn, 0.0):
                        pass
                    return

        yield listen
    finally:
        try:
            conn.execute(f"UNLISTEN {CHANNEL}")
            conn.autocommit = False
        finally:
            raw.close()


def _notified(conn: Any, timeout: float) -> bool:
    """Whether a notification arrived within `timeout` seconds."""
    # psycopg's generator holds the connection's lock while suspended: close it.
    notifications = conn.notifies(timeout=timeout, stop_after=1)
    try:
        return next(notifications, None) is not None
    finally:
        notifications.close()
