"""`EventLog.append(expected_last_seq=...)`: append only if no one else appended since.

What `natrelay serve` relies on to notice other writers (adapters/serve/service.py).
"""

from __future__ import annotations

import pytest

from natrelay.core import events as E
from natrelay.eventlog import ConcurrencyError, EventLog


def test_an_append_at_the_expected_end_goes_in_and_a_stale_one_writes_nothing(log: EventLog) -> None:
    assert [s.seq for s in log.append([("a", E.Tick(at=1))], expected_last_seq=0)] == [1]
    stored = log.append([("b", E.Tick(at=2)), ("a", E.Tick(at=3))], expected_last_seq=1)
    assert [s.seq for s in stored] == [2, 3]
    with pytest.raises(ConcurrencyError) as caught:
        log.append([("c", E.Tick(at=4))], expected_last_seq=2)
    assert (caught.value.expected, caught.value.actual) == (2, 3)
    assert log.last_seq() == 3 and log.stream_versions(["c"]) == {"c": 0}


def test_another_writer_in_between_is_noticed(log: EventLog) -> None:
    # a second handle on the same log: the first one's cached view is stale after it writes
    log.append([("a", E.Tick(at=1))], expected_last_seq=0)
    second = EventLog.open(_same(log))
    try:
        second.append([("relay/x", E.RelayAnnounced(at=2, relay="x", region="eu"))])
    finally:
        second.close()
    with pytest.raises(ConcurrencyError):
        log.append([("a", E.Tick(at=3))], expected_last_seq=1)
    assert [s.seq for s in log.append([("a", E.Tick(at=3))], expected_last_seq=2)] == [3]


def _same(log: EventLog) -> str:
    """A URL opening the same log as `log` (its engine's URL, password included)."""
    return log.engine.url.render_as_string(hide_password=False)
