"""Every error the event log raises, each saying what went wrong and where.

This module owns the log's exception hierarchy. All of them derive from
`EventLogError`, except `DecodeError`, which belongs to the codec (a row that
cannot be turned back into an event) and is re-exported here so callers of the
log can catch it without importing core.
"""

from __future__ import annotations

from natrelay.core.codec import DecodeError

__all__ = [
    "BadLogURL",
    "ConcurrencyError",
    "DecodeError",
    "EventLogError",
    "LogBusy",
    "LogFormatError",
    "LogNotFound",
    "LogWriteError",
    "SnapshotError",
]


class EventLogError(Exception):
    """Base of the event log's errors."""


class BadLogURL(EventLogError, ValueError):
    """The log location is neither a file path nor a supported database URL."""


class LogNotFound(EventLogError, FileNotFoundError):
    """There is no log where one was expected (and `create=False`)."""


class LogFormatError(EventLogError):
    """The database is not a natrelay log, or one written by a newer natrelay."""


class LogBusy(EventLogError):
    """The log stayed locked by another writer after bounded retries."""


class LogWriteError(EventLogError):
    """The database refused a write (disk full, read-only, I/O error); nothing was appended."""


class SnapshotError(EventLogError):
    """A snapshot cannot be saved (already exists, or points past the log's end)."""


class ConcurrencyError(EventLogError):
    """A stream moved on since the caller read it: the append wrote nothing."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream!r} is at version {actual}, expected {expected}; nothing was appended"
        )
