"""`EventLog`: the append-only log of natrelay events, on SQLite or PostgreSQL.

Owns the log's public operations: atomic batched appends with optimistic
concurrency per stream, keyset-paged reads that decode lazily, snapshots, and
following the log as it grows. It never updates or deletes an event, never
decides what an event means, and reads the time only through its `clock`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from natrelay.core.events import Event

from . import migrations, schema
from .backends import FOLD_COLUMNS, Backend, PostgresBackend, Row, backend_for
from .errors import ConcurrencyError, EventLogError, LogWriteError, SnapshotError
from .follow import follow
from .location import create_log_engine, describe, parse_location
from .records import TRUSTED_BUILDERS, Snapshot, StoredEvent, decode_trusted, encode

Clock = Callable[[], int]

#: Rows fetched per keyset page: large enough to amortise the query, small
#: enough that memory stays constant.
PAGE_SIZE = 4096
#: Above every code point: `prefix + _TOP` sorts after every stream starting with `prefix`.
_TOP = "\U0010ffff"


#: Stream versions remembered between appends, at most (then the cache starts over).
_MAX_CACHED_STREAMS = 200_000


class _StreamHeads:
    """The versions of streams as of `last_seq`, as this log object last wrote them.

    Valid only while the log's last seq is still `last_seq` (checked under the
    write lock): then no one else has appended since, and no stream moved.
    Saves looking every stream of a batch up in the database. `complete`: every
    stream of the log is in `versions` (this object saw the log empty and has
    written all of it), so a stream not there is at version 0.
    """

    __slots__ = ("complete", "last_seq", "versions")

    def __init__(self) -> None:
        self.forget()

    def forget(self, *, complete: bool = False) -> None:
        self.last_seq = -1
        self.versions: dict[str, int] = {}
        self.complete = complete


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: the default recorded time."""
    return time.time_ns() // 1_000_000


class EventLog:
    """An append-only event log. Open it with `EventLog.open(...)`; close it or use `with`."""

    def __init__(self, engine: Engine, *, location: str, clock: Clock | None = None) -> None:
        self._engine = engine
        self.location = location
        self._clock: Clock = clock or wall_clock_ms
        self._backend: Backend = backend_for(engine.dialect.name, location)
        self._closed = False
        self._heads = _StreamHeads()

    @classmethod
    def open(cls, url_or_path: str, *, clock: Clock | None = None, create: bool = True) -> EventLog:
        """Open (and by default create or upgrade) the log at a file path or database URL."""
        url = parse_location(url_or_path)
        location = describe(url)
        engine = create_log_engine(url, create=create)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(natrelay_write=True)
                with conn.begin():
                    migrations.upgrade(conn, location=location, create=create)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, location=location, clock=clock)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._backend.name

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for queries of your own (read only, please)."""
        return self._engine

    # --- writing ---------------------------------------------------------------

    def append(
        self,
        items: Sequence[tuple[str, Event]],
        expected_versions: Mapping[str, int] | None = None,
        *,
        expected_last_seq: int | None = None,
    ) -> list[StoredEvent]:
        """Append `(stream, event)` pairs atomically, in order; all are stored or none.

        `expected_versions` maps a stream to the version it must be at now (the
        number of events in it; 0 for a new stream); if any is stale, nothing
        is written and `ConcurrencyError` names the stream and both versions.
        `expected_last_seq`: the whole log must end at this seq (no one else
        appended since the caller last looked), or `ConcurrencyError` names
        the log's last seq and nothing is written.
        """
        self._check_open()
        encoded = []
        for stream, event in items:
            if not isinstance(stream, str) or not stream:
                raise ValueError(f"a stream name is a non-empty string, got {stream!r}")
            encoded.append((stream, *encode(event)))
        expected = dict(expected_versions or {})
        if not encoded and not expected:
            return []
        streams = list(dict.fromkeys([item[0] for item in encoded] + list(expected)))
        recorded = self._clock()
        backend = self._backend
        heads = self._heads
        raw = self._engine.raw_connection()
        try:
            with backend.writing(raw.driver_connection) as cursor:
                last = backend.locked_last_seq(cursor)
                if expected_last_seq is not None and last != expected_last_seq:
                    raise ConcurrencyError("(the whole log)", expected_last_seq, last)
                if last != heads.last_seq:
                    # Someone else appended: the cache may be stale. An empty
                    # log, though, is fully known: every stream is at 0.
                    heads.forget(complete=last == 0)
                versions = heads.versions
                missing = [] if heads.complete else [s for s in streams if s not in versions]
                if missing:
                    found = backend.versions(cursor, missing)
                    for stream in missing:
                        versions[stream] = found.get(stream, 0)
                for stream, want in expected.items():
                    have = versions.get(stream, 0)
                    if have != want:
                        raise ConcurrencyError(stream, want, have)
                rows: list[Row] = []
                seq = last
                for stream, type_name, schema_version, at, payload in encoded:
                    seq += 1
                    version = versions.get(stream, 0) + 1
                    versions[stream] = version
                    rows.append((seq, stream, version, type_name, schema_version, at, recorded, payload))
                if rows:
                    backend.insert(cursor, rows)
                heads.last_seq = seq
                if len(versions) > _MAX_CACHED_STREAMS:
                    heads.forget()
        except BaseException as exc:
            heads.forget()  # the versions above were never committed
            if isinstance(exc, Exception) and _is_unique_violation(exc):
                raise EventLogError(
                    f"append to {self.location} conflicted with another writer: {exc}"
                ) from exc
            if isinstance(exc, Exception) and _is_storage_failure(exc):
                # Disk full, read-only, I/O error: the transaction was rolled back.
                raise LogWriteError(f"cannot append to {self.location}: {exc}; nothing was appended") from exc
            raise
        finally:
            raw.close()
        return [StoredEvent(*row) for row in rows]

    def save_snapshot(self, name: str, seq: int, state: bytes, *, state_format: str = "orjson") -> Snapshot:
        """Store projection state `state` as of `seq` under `name`.

        Saving the same state again is a no-op that returns the stored
        snapshot; a different state at the same (name, seq) is a
        `SnapshotError`: snapshots are never replaced.
        """
        self._check_open()
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"snapshot state must be bytes, got {type(state).__name__}")
        snapshot = Snapshot(name, seq, self._clock(), state_format, bytes(state))
        try:
            return self._insert_snapshot(snapshot)
        except IntegrityError:  # another process saved one in between
            return self._insert_snapshot(snapshot)

    def _insert_snapshot(self, snapshot: Snapshot) -> Snapshot:
        name, seq = snapshot.name, snapshot.seq
        with self._engine.connect() as conn, conn.begin():
            last = conn.execute(select(func.max(schema.events.c.seq))).scalar() or 0
            if not 0 <= seq <= last:
                raise SnapshotError(f"cannot snapshot {name!r} at seq {seq}: the log ends at seq {last}")
            table = schema.snapshots
            existing = conn.execute(select(table).where(table.c.name == name, table.c.seq == seq)).first()
            if existing is not None:
                if bytes(existing.state) == snapshot.state and existing.format == snapshot.format:
                    return Snapshot(name, seq, existing.created_time, existing.format, bytes(existing.state))
                raise SnapshotError(
                    f"snapshot {name!r} at seq {seq} exists with a different state;"
                    " snapshots are never replaced"
                )
            conn.execute(
                table.insert().values(
                    name=name,
                    seq=seq,
                    created_time=snapshot.created_at,
                    format=snapshot.format,
                    state=snapshot.state,
                )
            )
        return snapshot

    # --- reading ---------------------------------------------------------------

    def last_seq(self) -> int:
        """The seq of the newest event, 0 for an empty log."""
        self._check_open()
        last: int = self._with_cursor(self._backend.last_seq)
        return last

    def stream_versions(self, streams: Collection[str]) -> dict[str, int]:
        """The current version of each of `streams` (0 for a stream with no events)."""
        self._check_open()
        wanted = list(dict.fromkeys(streams))
        found = self._with_cursor(lambda cursor: self._backend.versions(cursor, wanted))
        return {stream: found.get(stream, 0) for stream in wanted}

    def next_stream(self, after: str, *, inclusive: bool = False) -> str | None:
        """The first stream name after `after` in byte (code point) order, or None: one index seek."""
        self._check_open()
        found: str | None = self._with_cursor(
            lambda cursor: self._backend.next_stream(cursor, after, inclusive)
        )
        return found

    def _all_streams_among(self, streams: Collection[str], prefixes: Collection[str]) -> bool:
        """Every stream of the log is one of `streams` or starts with one of `prefixes`.

        A walk over the stream index in byte order: one seek per stream named and per
        prefix, jumping over everything under a prefix, stopping at the first stream outside.
        """
        exact = set(streams)
        current = self.next_stream("", inclusive=True)
        while current is not None:
            if current not in exact:
                under = [prefix for prefix in prefixes if current.startswith(prefix)]
                if not under:
                    return False
                current = max(current, max(under, key=len) + _TOP)
            current = self.next_stream(current)
        return True

    def load_snapshot(self, name: str, at_or_before_seq: int | None = None) -> Snapshot | None:
        """The newest snapshot `name` at or before the given seq, or None."""
        self._check_open()
        table = schema.snapshots
        query = select(table).where(table.c.name == name)
        if at_or_before_seq is not None:
            query = query.where(table.c.seq <= at_or_before_seq)
        query = query.order_by(table.c.seq.desc()).limit(1)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Snapshot(row.name, row.seq, row.created_time, row.format, bytes(row.state))

    def rows(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
        types: Collection[str] | None = None,
    ) -> Iterator[Row]:
        """Raw rows (the `events` columns in order), page by page by seq; with `types`, only
        events of those types."""
        for page in self._pages(from_seq, to_seq, streams, stream_prefixes, types):
            yield from page

    def _pages(
        self,
        from_seq: int,
        to_seq: int | None,
        streams: Collection[str] | None,
        stream_prefixes: Collection[str] | None,
        types: Collection[str] | None,
        columns: str | None = None,
    ) -> Iterator[list[Row]]:
        """The keyset pages of `rows`, each a list of rows (of `columns`, all by default)."""
        self._check_open()
        sql, params = self._backend.page_query(
            to_seq,
            None if streams is None else list(streams),
            None if stream_prefixes is None else list(stream_prefixes),
            None if types is None else list(types),
            *(() if columns is None else (columns,)),
        )
        after = from_seq - 1
        fetch_page = self._backend.fetch_page
        while True:
            page = self._with_cursor(fetch_page(sql, [after, *params, PAGE_SIZE]))
            if not page:
                return
            yield page
            if len(page) < PAGE_SIZE:
                return
            after = page[-1][0]

    def fold_pages(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
    ) -> Iterator[list[tuple[int, str, int, bytes]]]:
        """Pages of (seq, type, schema_version, payload) rows in seq order: what a fold reads.

        Replay's hot path (`replay.rebuild`): the narrow select leaves out the stream, the
        versions and the times (the event's `at` is in its payload), and the caller folds
        each row itself (`core.payload_fold`, `records.FOLD_BUILDERS`, `decode_trusted`).
        When the streams asked for are every stream of the log (a node's own log), the pages
        are read up to the seq that was last when that was checked, without the stream
        filter: a few index seeks instead of a test of every row.
        """
        if streams is not None or stream_prefixes is not None:
            last = self.last_seq()
            if self._all_streams_among(streams or (), stream_prefixes or ()):
                streams = stream_prefixes = None
                to_seq = last if to_seq is None else min(to_seq, last)
        pages = self._pages(from_seq, to_seq, streams, stream_prefixes, None, FOLD_COLUMNS)
        return cast(Iterator[list[tuple[int, str, int, bytes]]], pages)

    def read(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
        types: Collection[str] | None = None,
    ) -> Iterator[StoredEvent]:
        """Stored events with from_seq <= seq <= to_seq, in seq order, not yet decoded.

        With `streams` and/or `stream_prefixes`, only events of those streams
        (or of streams starting with a prefix). Memory stays constant.
        """
        for row in self.rows(from_seq, to_seq, streams, stream_prefixes, types):
            yield StoredEvent(*row)

    def read_events(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
        types: Collection[str] | None = None,
    ) -> Iterator[tuple[int, str, Event]]:
        """(seq, stream, event) decoded: the fast path for replay.

        The log's own rows are trusted (built without re-running validators, see
        `records.decode_trusted`); `StoredEvent.decode` and `replay --check` validate.
        """
        trusted = TRUSTED_BUILDERS
        loads = orjson.loads
        for page in self._pages(from_seq, to_seq, streams, stream_prefixes, types):
            for seq, stream, _v, type_name, schema_version, _at, _rec, payload in page:
                entry = trusted.get(type_name)
                event = None
                if entry is not None and entry[0] == schema_version:
                    try:
                        event = entry[1](loads(payload))
                    except Exception:
                        event = None  # the validating path below says precisely what is wrong
                if event is None:
                    event = decode_trusted(type_name, schema_version, payload, seq)
                yield seq, stream, event

    def follow(
        self,
        from_seq: int = 1,
        poll_interval: float = 0.5,
        *,
        streams: Collection[str] | None = None,
        stream_prefixes: Collection[str] | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StoredEvent]:
        """Every event from `from_seq` on, then each new one as it commits, until `stop` is set.

        PostgreSQL wakes the follower with LISTEN/NOTIFY (polling every
        `poll_interval` seconds as a safety net); SQLite polls. Closing the
        iterator (or breaking out of the loop) ends it.
        """
        return follow(self, from_seq, poll_interval, streams, stream_prefixes, stop)

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({self.location!r})"

    # --- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogError(f"the log {self.location} is closed")

    def _with_cursor(self, work: Callable[[Any], Any]) -> Any:
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            connection = raw.driver_connection
            if isinstance(self._backend, PostgresBackend) and connection is not None:
                connection.rollback()  # end the read transaction at once
            return result
        finally:
            raw.close()


def _is_unique_violation(exc: Exception) -> bool:
    return type(exc).__name__ in ("UniqueViolation", "IntegrityError")


def _is_storage_failure(exc: Exception) -> bool:
    """A DB-API error of the storage itself (sqlite3 or psycopg), not of the caller's data."""
    module = type(exc).__module__
    return (module == "sqlite3" or module.startswith("psycopg")) and type(exc).__name__ in (
        "OperationalError",
        "DatabaseError",
        "DiskFull",
        "InsufficientPrivilege",
        "ReadOnlySqlTransaction",
    )
