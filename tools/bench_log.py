"""Benchmarks of the event log, side by side with the floors, in one run.

Owns measuring, not judging: every function returns plain numbers (events per
second) and `run()` gathers them into one flat dict for `natrelay bench --json`.
All measurements use the same generated events. The floors are what the
hardware and drivers give with no log around them:

- SQLite: sqlite3 `executemany` in batches of 1,000 into a table of the same
  shape (same unique index), payloads `orjson.dumps` of plain dicts; keyset
  pages of the same size plus `orjson.loads` for reading.
- PostgreSQL: psycopg `COPY ... FROM STDIN` in batches of 1,000; keyset pages
  plus `orjson.loads`.
- The eventsourcing library's application recorders (SQLite and PostgreSQL),
  fed the same streams, versions and orjson payloads.

natrelay's numbers include turning each event into its payload (the floors get
plain dicts already made) and, for reads, building each event again with
validation. Nothing here asserts a time; tests never call it.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from natrelay.core import codec
from natrelay.core import events as E
from natrelay.eventlog import EventLog
from natrelay.eventlog.records import encode

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
Items = list[tuple[str, E.Event]]

_DDL = """CREATE TABLE events (
    seq BIGINT PRIMARY KEY, stream TEXT NOT NULL, stream_version INTEGER NOT NULL,
    type TEXT NOT NULL, schema_version INTEGER NOT NULL, event_time BIGINT NOT NULL,
    recorded_time BIGINT NOT NULL, payload {blob} NOT NULL,
    UNIQUE (stream, stream_version))"""
_SQLITE_DDL = _DDL.replace("seq BIGINT PRIMARY KEY", "seq INTEGER PRIMARY KEY")
_COLUMNS = "seq, stream, stream_version, type, schema_version, event_time, recorded_time, payload"


# --- events ------------------------------------------------------------------


def generate_events(count: int, *, peers: int = 1000, seed: int = 0) -> Items:
    """`count` (stream, event) pairs shaped like a busy node's log."""
    rng = random.Random(seed)
    keys = [base64.b64encode(rng.randbytes(32)).decode() for _ in range(peers)]
    endpoints = [f"10.{i // 250}.{i % 250}.{1 + i % 200}:51820" for i in range(peers)]
    items: Items = []
    for i in range(count):
        at = 1_700_000_000_000 + i * 10
        p = rng.randrange(peers)
        kind = i % 5
        event: E.Event
        if kind == 0:
            event = E.HandshakeObserved(at=at, peer=keys[p], endpoint=endpoints[p])
        elif kind == 1:
            event = E.DirectAttemptTimedOut(at=at, peer=keys[p], endpoint=endpoints[p], attempt=1 + i % 7)
        elif kind == 2:
            event = E.DirectAttemptStarted(
                at=at,
                peer=keys[p],
                endpoint=endpoints[p],
                attempt=1 + i % 7,
                deadline=at + 1000,
                reason="direct round",
            )
        elif kind == 3:
            event = E.RelayHealthMeasured(
                at=at,
                relay=f"relay-{i % 8}",
                rtt_ms=rng.randrange(5, 300),
                load=rng.randrange(90),
                loss=0.01,
            )
        else:
            event = E.Tick(at=at)
        items.append((E.stream_of(event, "bench"), event))
    return items


def _numbered_rows(items: Items) -> list[tuple[Any, ...]]:
    """(seq, stream, version, type, schema_version, at, recorded, payload dict) per event."""
    versions: dict[str, int] = {}
    rows = []
    for seq, (stream, event) in enumerate(items, start=1):
        versions[stream] = versions.get(stream, 0) + 1
        rows.append(
            (seq, stream, versions[stream], event.TYPE, event.VERSION, event.at, 0, codec.to_payload(event))
        )
    return rows


def _batches(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _timed(work: Callable[[], int]) -> float:
    """Events per second of `work`, which returns how many events it handled."""
    gc.collect()
    start = time.perf_counter()
    count = work()
    return count / (time.perf_counter() - start)


# --- places to measure in ----------------------------------------------------


@contextlib.contextmanager
def _sqlite_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="natrelay-bench-") as directory:
        yield os.path.join(directory, "bench.db")


@contextlib.contextmanager
def _pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, libpq URL) of a fresh schema, dropped afterwards."""
    import psycopg

    libpq = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    schema = f"natrelay_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in pg_url else "?"
            option = f"options=-csearch_path%3D{schema}"
            yield f"{pg_url}{sep}{option}", f"{libpq}{sep}{option}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


# --- natrelay ------------------------------------------------------------------


def natrelay_append_eps(url: str, items: Items, batch_size: int) -> float:
    with EventLog.open(url, clock=lambda: 0) as log:
        batches = list(_batches(items, batch_size))

        def work() -> int:
            for batch in batches:
                log.append(batch)
            return len(items)

        return _timed(work)


def natrelay_concurrent_append_eps(url: str, items: Items, writers: int, batch_size: int) -> float:
    """Total events/s of `writers` threads, each with its own share, appending at once."""
    with EventLog.open(url, clock=lambda: 0) as log:
        shares = [items[w::writers] for w in range(writers)]
        barrier = threading.Barrier(writers + 1)

        def write(share: Items) -> None:
            barrier.wait()
            for batch in _batches(share, batch_size):
                log.append(batch)

        threads = [threading.Thread(target=write, args=(share,)) for share in shares]
        for thread in threads:
            thread.start()

        def work() -> int:
            barrier.wait()
            for thread in threads:
                thread.join()
            return len(items)

        return _timed(work)


def natrelay_read_eps(url: str) -> dict[str, float]:
    """Rows read (`read`, no decoding) and events read and decoded (`read_events`) per s."""
    with EventLog.open(url, create=False) as log:
        rows = _timed(lambda: sum(1 for _ in log.read()))
        decoded = _timed(lambda: sum(1 for _ in log.read_events()))
    return {"rows": rows, "decoded": decoded}


# --- floors ------------------------------------------------------------------


def floor_sqlite_eps(path: str, rows: list[tuple[Any, ...]]) -> dict[str, float]:
    """Raw sqlite3: executemany of 1,000 + orjson.dumps; keyset pages + orjson.loads."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SQLITE_DDL.format(blob="BLOB"))
    insert = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

    def append() -> int:
        dumps = orjson.dumps
        for batch in _batches(rows, 1000):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, [(*row[:7], dumps(row[7])) for row in batch])
            conn.execute("COMMIT")
        return len(rows)

    def read() -> int:
        loads, after, count = orjson.loads, 0, 0
        query = f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT 4096"
        while page := conn.execute(query, (after,)).fetchall():
            for row in page:
                loads(row[7])
            count += len(page)
            after = page[-1][0]
        return count

    try:
        return {"append": _timed(append), "read": _timed(read)}
    finally:
        conn.close()


def floor_pg_eps(libpq_url: str, rows: list[tuple[Any, ...]]) -> dict[str, float]:
    """Raw psycopg: COPY in batches of 1,000 + orjson.dumps; keyset pages + orjson.loads."""
    import psycopg

    with psycopg.connect(libpq_url) as conn:
        conn.execute(_DDL.format(blob="BYTEA"))
        conn.commit()

        def append() -> int:
            dumps = orjson.dumps
            for batch in _batches(rows, 1000):
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY events ({_COLUMNS}) FROM STDIN") as copy,
                ):
                    for row in batch:
                        copy.write_row((*row[:7], dumps(row[7])))
                conn.commit()
            return len(rows)

        def read() -> int:
            loads, after, count = orjson.loads, 0, 0
            query = f"SELECT {_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT 4096"
            with conn.cursor() as cur:
                while True:
                    page = cur.execute(query, (after,)).fetchall()
                    if not page:
                        break
                    for row in page:
                        loads(row[7])
                    count += len(page)
                    after = page[-1][0]
            conn.commit()
            return count

        return {"append": _timed(append), "read": _timed(read)}


# --- the eventsourcing library -----------------------------------------------


def _es_batches(items: Items, batch_size: int) -> list[list[Any]]:
    """eventsourcing StoredEvents for each batch; encoding happens at append time."""
    versions: dict[str, int] = {}
    out = []
    for batch in _batches(items, batch_size):
        numbered = []
        for stream, event in batch:
            versions[stream] = versions.get(stream, 0) + 1
            numbered.append((stream, versions[stream], event))
        out.append(numbered)
    return out


def _es_append(recorder: Any, items: Items, batch_size: int) -> float:
    from eventsourcing.persistence import StoredEvent as EsStoredEvent

    batches = _es_batches(items, batch_size)

    def work() -> int:
        for batch in batches:
            recorder.insert_events(
                [
                    EsStoredEvent(stream, version, event.TYPE, encode(event)[3])
                    for stream, version, event in batch
                ]
            )
        return len(items)

    return _timed(work)


def eventsourcing_sqlite_eps(path: str, items: Items, batch_size: int = 1000) -> float:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    datastore = SQLiteDatastore(path, originator_id_type="text")
    try:
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        return _es_append(recorder, items, batch_size)
    finally:
        datastore.close()


def eventsourcing_pg_eps(libpq_url: str, items: Items, batch_size: int = 1000) -> float:
    from urllib.parse import parse_qs, unquote, urlparse

    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    parsed = urlparse(libpq_url)
    options = parse_qs(parsed.query).get("options", [""])[0]
    schema = unquote(options).split("search_path=", 1)[1]
    datastore = PostgresDatastore(
        dbname=parsed.path.lstrip("/"),
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password or "",
        schema=schema,
        originator_id_type="text",
    )
    try:
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        return _es_append(recorder, items, batch_size)
    finally:
        datastore.close()


# --- everything ------------------------------------------------------------------


def _best_of(repeats: int, measures: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The best of `repeats` runs of each measure, the measures interleaved so that
    they share the machine's conditions (other load moves all of them alike)."""
    best: dict[str, float] = dict.fromkeys(measures, 0.0)
    for _ in range(repeats):
        for key, measure in measures.items():
            best[key] = max(best[key], measure())
    return best


def bench_sqlite(items: Items, *, small: int = 5_000, repeats: int = 3) -> dict[str, float]:
    """natrelay on SQLite at batch sizes 1/100/1000, read and replay; the floors; eventsourcing."""
    rows = _numbered_rows(items)
    reads: dict[str, float] = {}
    floors: dict[str, float] = {}

    def natrelay(size: int, count: int) -> Callable[[], float]:
        def measure() -> float:
            with _sqlite_path() as path:
                eps = natrelay_append_eps(path, items[:count], size)
                if size == 1000:
                    for key, value in natrelay_read_eps(path).items():
                        reads[key] = max(reads.get(key, 0.0), value)
            return eps

        return measure

    def floor(kind: str) -> Callable[[], float]:
        def measure() -> float:
            if kind == "append":
                with _sqlite_path() as path:
                    for key, value in floor_sqlite_eps(path, rows).items():
                        floors[key] = max(floors.get(key, 0.0), value)
            return floors[kind]

        return measure

    def eventsourcing() -> float:
        with _sqlite_path() as path:
            return eventsourcing_sqlite_eps(path, items)

    out = _best_of(
        repeats,
        {
            "append_sqlite_b1000_eps": natrelay(1000, len(items)),
            "floor_append_sqlite_eps": floor("append"),
            "floor_read_sqlite_eps": floor("read"),
            "eventsourcing_append_sqlite_eps": eventsourcing,
        },
    )
    out["append_sqlite_b1_eps"] = natrelay(1, small)()
    out["append_sqlite_b100_eps"] = natrelay(100, len(items))()
    out["append_sqlite_eps"] = out["append_sqlite_b1000_eps"]
    out["read_rows_sqlite_eps"] = reads["rows"]
    out["read_sqlite_eps"] = out["replay_sqlite_read_eps"] = reads["decoded"]
    return out


def bench_postgres(
    items: Items, pg_url: str = DEFAULT_PG_URL, *, small: int = 2_000, repeats: int = 3
) -> dict[str, float]:
    """natrelay on PostgreSQL (batch 1/100/1000; 1/4/16 writers), replay; COPY floor; eventsourcing."""
    rows = _numbered_rows(items)
    reads: dict[str, float] = {}
    floors: dict[str, float] = {}

    def natrelay(size: int, count: int) -> Callable[[], float]:
        def measure() -> float:
            with _pg_schema(pg_url) as (url, _):
                eps = natrelay_append_eps(url, items[:count], size)
                if size == 1000:
                    for key, value in natrelay_read_eps(url).items():
                        reads[key] = max(reads.get(key, 0.0), value)
            return eps

        return measure

    def floor(kind: str) -> Callable[[], float]:
        def measure() -> float:
            if kind == "append":
                with _pg_schema(pg_url) as (_, libpq):
                    for key, value in floor_pg_eps(libpq, rows).items():
                        floors[key] = max(floors.get(key, 0.0), value)
            return floors[kind]

        return measure

    def eventsourcing() -> float:
        with _pg_schema(pg_url) as (_, libpq):
            return eventsourcing_pg_eps(libpq, items)

    out = _best_of(
        repeats,
        {
            "append_pg_b1000_eps": natrelay(1000, len(items)),
            "floor_append_pg_eps": floor("append"),
            "floor_read_pg_eps": floor("read"),
            "eventsourcing_append_pg_eps": eventsourcing,
        },
    )
    out["append_pg_b1_eps"] = natrelay(1, small)()
    out["append_pg_b100_eps"] = natrelay(100, len(items))()
    out["append_pg_eps"] = out["append_pg_b1000_eps"]
    out["read_rows_pg_eps"] = reads["rows"]
    out["replay_pg_eps"] = out["read_pg_eps"] = reads["decoded"]
    for writers in (1, 4, 16):
        for size, count in ((1, small), (100, len(items)), (1000, len(items))):
            with _pg_schema(pg_url) as (url, _):
                out[f"append_pg_w{writers}_b{size}_eps"] = natrelay_concurrent_append_eps(
                    url, items[:count], writers, size
                )
    return out


def run(
    count: int = 100_000,
    *,
    pg_url: str | None = None,
    postgres: bool = True,
    repeats: int = 3,
) -> dict[str, float]:
    """Every measurement on `count` generated events, as one flat dict of events/s."""
    items = generate_events(count)
    # The generated events live through the run; keep the cyclic GC from
    # rescanning them in the middle of every measurement.
    gc.collect()
    gc.freeze()
    out = bench_sqlite(items, repeats=repeats)
    if postgres:
        url = pg_url or os.environ.get("NATRELAY_PG_URL", DEFAULT_PG_URL)
        out.update(bench_postgres(items, url, repeats=repeats))
    out["events"] = float(count)
    return out


if __name__ == "__main__":  # pragma: no cover - a convenience, `natrelay bench` is the CLI
    import sys

    print(
        orjson.dumps(
            run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), option=orjson.OPT_INDENT_2
        ).decode()
    )
