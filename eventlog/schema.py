"""The log's tables, as SQLAlchemy Core metadata: the one place that names columns.

Owns the shape of `events`, `snapshots` and `meta`. It never opens a
connection; `migrations` decides when these tables are created or changed.
Rows of `events` and `snapshots` are only ever inserted, never updated or
deleted.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

#: On SQLite an INTEGER PRIMARY KEY is the rowid itself: the fastest key there is.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

#: One row per event. `seq` is global, gapless and strictly increasing: a row
#: with seq n commits before any row with seq > n becomes visible.
events = Table(
    "events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("stream", Text, nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    #: Milliseconds: when the fact happened (the event's `at`).
    Column("event_time", BigInteger, nullable=False),
    #: Milliseconds: when the log stored it (the log's clock).
    Column("recorded_time", BigInteger, nullable=False),
    #: The event's fields as an orjson object.
    Column("payload", LargeBinary, nullable=False),
    UniqueConstraint("stream", "stream_version", name="events_stream_version_key"),
)

#: Projection state at a seq, saved by whoever folds the log.
snapshots = Table(
    "snapshots",
    metadata,
    Column("name", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("created_time", BigInteger, nullable=False),
    Column("format", Text, nullable=False),
    Column("state", LargeBinary, nullable=False),
    PrimaryKeyConstraint("name", "seq", name="snapshots_pkey"),
)

#: Facts about the log itself; `format_version` is checked on every open.
meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
