"""The SQL each database needs on the hot paths, run on the raw DBAPI connection.

Owns the write lock and the gap rule, the insert, and the keyset page query,
per dialect. Appends and reads go through the DBAPI cursor of a connection
from SQLAlchemy's pool, because SQLAlchemy's per-statement work would cost more
than the database does at these batch sizes; schema work stays in SQLAlchemy Core.

The gap rule: a reader that has seen seq n must be able to ask for seq > n
forever after, and never miss a row that commits later with a smaller seq. Both
backends get it the same way: one writer at a time takes the log's write lock
(SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE events IN EXCLUSIVE MODE, which
still lets readers in), then reads max(seq) and numbers its rows from there. So
rows commit in seq order, and seq has no holes: a rolled-back append leaves none.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import LogBusy

COLUMNS = "seq, stream, stream_version, type, schema_version, event_time, recorded_time, payload"
#: What a fold reads of a row (`EventLog.fold_pages`): a third of the columns' bytes and objects.
FOLD_COLUMNS = "seq, type, schema_version, payload"
#: Name of the PostgreSQL NOTIFY channel that wakes followers.
CHANNEL = "natrelay_events"

Row = tuple[int, str, int, str, int, int, int, bytes]


class Backend:
    """The dialect-specific statements; one instance per log."""

    name: str
    param: str

    def __init__(self, location: str) -> None:
        self.location = location

    @contextlib.contextmanager
    def writing(self, dbapi: Any) -> Iterator[Any]:
        """A cursor inside a transaction holding the log's write lock."""
        raise NotImplementedError

    def locked_last_seq(self, cursor: Any) -> int:
        """Inside `writing`: make sure the write lock is held, and return max(seq)."""
        return self.last_seq(cursor)

    def insert(self, cursor: Any, rows: Sequence[Row]) -> None:
        """Insert `rows` and tell followers (at commit) that the log grew."""
        raise NotImplementedError

    def stream_filter(self, streams: Sequence[str]) -> tuple[str, list[Any]]:
        raise NotImplementedError

    def last_seq(self, cursor: Any) -> int:
        cursor.execute("SELECT max(seq) FROM events")
        value = cursor.fetchone()[0]
        return int(value) if value is not None else 0

    def versions(self, cursor: Any, streams: Sequence[str]) -> dict[str, int]:
        """Current version (0 when empty) of each stream that has events."""
        found: dict[str, int] = {}
        for start in range(0, len(streams), 500):
            clause, params = self.stream_filter(streams[start : start + 500])
            cursor.execute(
                f"SELECT stream, max(stream_version) FROM events WHERE {clause} GROUP BY stream",
                params,
            )
            found.update(cursor.fetchall())
        return found

    def next_stream(self, cursor: Any, after: str, inclusive: bool) -> str | None:
        """The first stream name after `after` in byte order (one index seek), or None."""
        op = ">=" if inclusive else ">"
        cursor.execute(f"SELECT min(stream) FROM events WHERE stream {op} {self.param}", [after])
        value = cursor.fetchone()[0]
        return None if value is None else str(value)

    def fetch_page(self, sql: str, params: list[Any]) -> Callable[[Any], list[Row]]:
        """A function of a cursor returning the rows of one page."""

        def fetch(cursor: Any) -> list[Row]:
            cursor.execute(sql, params)
            rows: list[Row] = cursor.fetchall()
            return rows

        return fetch

    def page_query(
        self,
        to_seq: int | None,
        streams: Sequence[str] | None,
        prefixes: Sequence[str] | None,
        types: Sequence[str] | None = None,
        columns: str = COLUMNS,
    ) -> tuple[str, list[Any]]:
        """SQL and fixed parameters of one keyset page; the caller adds `after` before them and
        the page size after them. `columns`: what each row holds (seq first), all by default."""
        p = self.param
        where: list[str] = []
        params: list[Any] = []
        if to_seq is not None:
            where.append(f"seq <= {p}")
            params.append(to_seq)
        alternatives: list[str] = []
        if streams:
            clause, more = self.stream_filter(list(streams))
            alternatives.append(clause)
            params.extend(more)
        for prefix in prefixes or ():
            alternatives.append(f"substr(stream, 1, {len(prefix)}) = {p}")
            params.append(prefix)
        if streams is not None or prefixes is not None:
            where.append("(" + (" OR ".join(alternatives) or "1 = 0") + ")")
        if types is not None:
            # one type: the (type, seq) index gives its rows in seq order without a scan
            where.append(f"type IN ({', '.join([p] * len(types))})" if types else "1 = 0")
            params.extend(types)
        extra = "".join(f" AND {w}" for w in where)
        sql = f"SELECT {columns} FROM events WHERE seq > {p}{extra} ORDER BY seq LIMIT {p}"
        return sql, params


class SqliteBackend(Backend):
    name = "sqlite"
    param = "?"
    #: Attempts at taking the write lock, each waiting SQLite's busy timeout.
    attempts = 5

    @contextlib.contextmanager
    def writing(self, dbapi: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
        for attempt in range(1, self.attempts + 1):
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == self.attempts:
                    raise LogBusy(
                        f"the log {self.location} stayed locked by another writer"
                        f" ({self.attempts} tries); is a process holding a write transaction?"
                    ) from exc
                time.sleep(0.01 * attempt)
        cursor = dbapi.cursor()
        try:
            yield cursor
            dbapi.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (disk full, I/O): a second
            # ROLLBACK would hide the cause. A failed COMMIT leaves the transaction open:
            # end it here, or a later COMMIT on this pooled connection would apply the batch.
            if dbapi.in_transaction:
                dbapi.execute("ROLLBACK")
            raise
        finally:
            cursor.close()

    def insert(self, cursor: sqlite3.Cursor, rows: Sequence[Row]) -> None:  # SQLite followers poll
        cursor.executemany(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def stream_filter(self, streams: Sequence[str]) -> tuple[str, list[Any]]:
        return f"stream IN ({', '.join('?' * len(streams))})", list(streams)


class PostgresBackend(Backend):
    name = "postgresql"
    param = "%s"
    #: Below this many rows a multi-row INSERT beats COPY's extra round trip.
    copy_threshold = 64

    @contextlib.contextmanager
    def writing(self, dbapi: Any) -> Iterator[Any]:
        cursor = dbapi.cursor()
        try:
            yield cursor
        except BaseException:
            dbapi.rollback()
            raise
        else:
            dbapi.commit()
        finally:
            cursor.close()

    def fetch_page(self, sql: str, params: list[Any]) -> Callable[[Any], list[Row]]:
        def fetch(cursor: Any) -> list[Row]:
            # Binary results: bytea arrives as is, not hex-encoded.
            cursor.execute(sql, params, binary=True)
            rows: list[Row] = cursor.fetchall()
            return rows

        return fetch

    def locked_last_seq(self, cursor: Any) -> int:
        # One round trip: EXCLUSIVE blocks other writers (ROW EXCLUSIVE) but
        # not readers; max(seq) is read after the lock is granted.
        cursor.execute("LOCK TABLE events IN EXCLUSIVE MODE; SELECT coalesce(max(seq), 0) FROM events")
        cursor.nextset()
        return int(cursor.fetchone()[0])

    def insert(self, cursor: Any, rows: Sequence[Row]) -> None:
        notify = f"NOTIFY {CHANNEL}, '{int(rows[-1][0])}'"
        if len(rows) >= self.copy_threshold:
            with cursor.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(notify)
            return
        values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
        cursor.execute(
            f"INSERT INTO events ({COLUMNS}) VALUES {values}",
            [value for row in rows for value in row],
        )
        cursor.execute(notify)

    def stream_filter(self, streams: Sequence[str]) -> tuple[str, list[Any]]:
        return "stream = ANY(%s)", [list(streams)]

    def next_stream(self, cursor: Any, after: str, inclusive: bool) -> str | None:
        op = ">=" if inclusive else ">"
        cursor.execute(
            f'SELECT min(stream COLLATE "C") FROM events WHERE stream COLLATE "C" {op} %s', [after]
        )
        value = cursor.fetchone()[0]
        return None if value is None else str(value)


def backend_for(dialect: str, location: str) -> Backend:
    if dialect == "sqlite":
        return SqliteBackend(location)
    if dialect == "postgresql":
        return PostgresBackend(location)
    raise ValueError(f"no event log backend for {dialect}")  # pragma: no cover
