"""Creating and upgrading the log's schema: numbered migrations, applied in order.

Owns the log's format version. A log records the number of the last migration
applied in `meta.format_version`; opening a log applies the missing ones, and
refuses a log written by a newer natrelay. Migrations run in one transaction
while holding the log's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock), so processes that open the same log at once do not race.
A migration adds; it never rewrites an event.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from sqlalchemy import Connection, inspect, select, text

from . import schema
from .errors import LogFormatError, LogNotFound


@attrs.frozen
class Migration:
    """One step of the schema: `apply` brings a log from `version - 1` to `version`."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_tables(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.events, schema.snapshots, schema.meta])


def _view_indexes(conn: Connection) -> None:
    """Indexes for the views (status, explain, timeline): a stream's events by seq, a type's
    events by seq. On PostgreSQL the stream index is in byte order (COLLATE "C"), the order
    the node listing skips through (`EventLog.next_stream`)."""
    stream = 'stream COLLATE "C"' if conn.dialect.name == "postgresql" else "stream"
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS events_stream_seq ON events ({stream}, seq)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS events_type_seq ON events (type, seq)"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events, snapshots and meta tables", _create_tables),
    Migration(2, "indexes by stream and by type, for the views", _view_indexes),
)

#: The format this code writes: the number of the last migration.
FORMAT_VERSION = MIGRATIONS[-1].version

#: Arbitrary, fixed: the PostgreSQL advisory lock key serialising schema changes.
_PG_MIGRATION_LOCK = 0x6E617472656C6179 & 0x7FFFFFFFFFFFFFFF


def stored_format_version(conn: Connection) -> int | None:
    """The format version recorded in the log, or None if there is no log here."""
    inspector = inspect(conn)
    if not inspector.has_table("meta"):
        if inspector.has_table("events"):
            raise LogFormatError("the database has an `events` table but no `meta` table: not a natrelay log")
        return None
    value = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.key == "format_version")
    ).scalar_one_or_none()
    if value is None or not value.isdigit():
        raise LogFormatError(f"the log's meta table has no valid format_version ({value!r})")
    return int(value)


def upgrade(conn: Connection, *, location: str, create: bool) -> int:
    """Bring the log at `conn` to FORMAT_VERSION inside the caller's transaction.

    Returns the version the log had before (0 for a new log).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    current = stored_format_version(conn)
    if current is None:
        if not create:
            raise LogNotFound(f"no natrelay log at {location} (open it with create=True)")
        current = 0
    if current > FORMAT_VERSION:
        raise LogFormatError(
            f"the log at {location} has format version {current}, newer than this natrelay"
            f" writes ({FORMAT_VERSION}); upgrade natrelay to open it"
        )
    for migration in MIGRATIONS[current:]:
        migration.apply(conn)
    if current == 0:
        conn.execute(
            schema.meta.insert(),
            [
                {"key": "format_version", "value": str(FORMAT_VERSION)},
                {"key": "created_by", "value": "natrelay"},
            ],
        )
    elif current < FORMAT_VERSION:
        conn.execute(
            schema.meta.update()
            .where(schema.meta.c.key == "format_version")
            .values(value=str(FORMAT_VERSION))
        )
    return current
