"""natrelay.eventlog: the append-only event log (SQLite by default, PostgreSQL for fleets).

    with EventLog.open("mesh.db") as log:
        log.append([(stream_of(event, node), event)])
        for seq, stream, event in log.read_events():
            ...

See docs/eventlog.md for the schema, the gap rule, tailing and migrations.
"""

from natrelay.core.codec import DecodeError

from .errors import (
    BadLogURL,
    ConcurrencyError,
    EventLogError,
    LogBusy,
    LogFormatError,
    LogNotFound,
    LogWriteError,
    SnapshotError,
)
from .log import PAGE_SIZE, Clock, EventLog, wall_clock_ms
from .migrations import FORMAT_VERSION
from .records import Snapshot, StoredEvent

__all__ = [
    "FORMAT_VERSION",
    "PAGE_SIZE",
    "BadLogURL",
    "Clock",
    "ConcurrencyError",
    "DecodeError",
    "EventLog",
    "EventLogError",
    "LogBusy",
    "LogFormatError",
    "LogNotFound",
    "LogWriteError",
    "Snapshot",
    "SnapshotError",
    "StoredEvent",
    "wall_clock_ms",
]
