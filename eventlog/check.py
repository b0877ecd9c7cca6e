"""Checking a whole log: every bad row, not just the first.

Owns `check_log`, the scan behind `natrelay replay --check`. It reads every
row of the log once, in seq order and in constant memory (apart from one
integer per stream), and reports each problem it finds without stopping:

- a row that does not decode (unknown type, newer schema, payload that is not
  JSON or not an object, a missing field, a field of the wrong type or value);
  the problem is the codec's own `DecodeError` text;
- a gap or a step back in the global `seq`;
- a gap or a repeat in a stream's `stream_version`;
- an event whose `at` differs from the row's `event_time` column.

It never writes: a bad row is reported, never repaired or rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from natrelay.core import codec

from .log import EventLog


@attrs.frozen
class BadRow:
    """One problem in the log, at `seq`."""

    seq: int
    stream: str
    type: str
    schema_version: int
    problem: str

    def describe(self) -> str:
        return f"seq {self.seq} ({self.type} v{self.schema_version} in {self.stream}): {self.problem}"


@attrs.frozen
class CheckResult:
    """What a scan found: how many rows it read, and every problem."""

    rows: int
    last_seq: int
    problems: tuple[BadRow, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def scan(log: EventLog) -> Iterator[BadRow]:
    """Yield every problem of the log, in seq order."""
    previous_seq = 0
    versions: dict[str, int] = {}
    for seq, stream, version, type_name, schema_version, at, _recorded, payload in log.rows():
        where = (seq, stream, type_name, schema_version)
        if seq != previous_seq + 1:
            if seq <= previous_seq:
                yield BadRow(*where, f"seq does not increase (after seq {previous_seq})")
            else:
                yield BadRow(*where, f"seq gap: seqs {previous_seq + 1}-{seq - 1} are missing")
        previous_seq = max(previous_seq, seq)
        expected = versions.get(stream, 0) + 1
        if version != expected:
            yield BadRow(*where, f"stream version {version}, expected {expected} (a gap or a repeat)")
        versions[stream] = version  # follow the row: one damaged version is one or two reports
        try:
            raw = payload if isinstance(payload, bytes | str) else bytes(payload)  # memoryview on PG
            event = codec.decode(type_name, schema_version, raw, seq)
        except codec.DecodeError as exc:
            yield BadRow(*where, exc.problem)
            continue
        if event.at != at:
            yield BadRow(*where, f"event_time column {at} differs from the payload's at={event.at}")


def check_log(log: EventLog) -> CheckResult:
    """Scan the whole log and gather every problem."""
    problems = tuple(scan(log))
    last = log.last_seq()
    rows = _count_rows(log)
    return CheckResult(rows, last, problems)


def _count_rows(log: EventLog) -> int:
    from sqlalchemy import func, select

    from . import schema

    with log.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.events)).scalar() or 0)
