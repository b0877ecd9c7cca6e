"""Appending and reading: seq and versions, optimistic concurrency, filters, decode errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from natrelay.core import codec
from natrelay.core import events as E
from natrelay.eventlog import ConcurrencyError, DecodeError, EventLog, StoredEvent
from natrelay.eventlog import log as log_module
from natrelay.eventlog.records import encode

from .helpers import public_key, sample_events


def test_append_assigns_seq_and_per_stream_versions(log: EventLog) -> None:
    tick = E.Tick(at=5)
    added = E.PeerAdded(at=6, peer=public_key(1))
    stored = log.append([("a", tick), ("b", added), ("a", tick)])
    assert [(s.seq, s.stream, s.stream_version) for s in stored] == [
        (1, "a", 1),
        (2, "b", 1),
        (3, "a", 2),
    ]
    more = log.append([("b", tick)])
    assert (more[0].seq, more[0].stream_version) == (4, 2)
    assert list(log.read()) == stored + more


def test_stored_event_carries_times_and_decodes(open_log: Callable[..., EventLog]) -> None:
    log = open_log(clock=lambda: 777)
    [stored] = log.append([("node/n1", E.Tick(at=123))])
    assert (stored.at, stored.recorded_at, stored.type, stored.schema_version) == (
        123,
        777,
        "tick",
        1,
    )
    assert stored.decode() == E.Tick(at=123)
    [read] = log.read()
    assert read == stored


def test_appending_nothing_writes_nothing(log: EventLog) -> None:
    assert log.append([]) == []
    assert log.last_seq() == 0


def test_expected_versions_accept_the_current_version(log: EventLog) -> None:
    log.append([("s", E.Tick(at=1)), ("s", E.Tick(at=2))])
    stored = log.append([("s", E.Tick(at=3))], expected_versions={"s": 2, "new": 0})
    assert stored[0].stream_version == 3


def test_stale_expected_version_names_stream_and_versions_and_writes_nothing(
    log: EventLog,
) -> None:
    log.append([("s", E.Tick(at=1))])
    with pytest.raises(ConcurrencyError) as caught:
        log.append([("t", E.Tick(at=2)), ("s", E.Tick(at=3))], expected_versions={"s": 0})
    error = caught.value
    assert (error.stream, error.expected, error.actual) == ("s", 0, 1)
    assert "'s'" in str(error) and "version 1" in str(error) and "expected 0" in str(error)
    assert log.last_seq() == 1
    assert log.stream_versions(["s", "t"]) == {"s": 1, "t": 0}


def test_stream_versions_reports_zero_for_unknown_streams(log: EventLog) -> None:
    log.append(sample_events(50))
    versions = log.stream_versions(["nope", "node/n1"])
    assert versions["nope"] == 0
    assert versions["node/n1"] == sum(1 for s, _ in sample_events(50) if s == "node/n1")


def test_bad_stream_name_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="stream name"):
        log.append([("", E.Tick(at=1))])
    assert log.last_seq() == 0


def test_read_bounds_and_filters(log: EventLog) -> None:
    items = sample_events(200, seed=3)
    log.append(items)
    all_read = list(log.read())
    assert [s.seq for s in all_read] == list(range(1, 201))
    assert [s.seq for s in log.read(50, 60)] == list(range(50, 61))
    assert list(log.read(201)) == []
    relay_streams = {s for s, _ in items if s.startswith("relay/")}
    one = sorted(relay_streams)[0]
    assert [s.stream for s in log.read(streams=[one])] == [s for s, _ in items if s == one]
    by_prefix = [s.seq for s in log.read(stream_prefixes=["relay/"])]
    assert by_prefix == [i + 1 for i, (s, _) in enumerate(items) if s.startswith("relay/")]
    both = [s.seq for s in log.read(streams=["node/n1"], stream_prefixes=["relay/"])]
    assert both == [i + 1 for i, (s, _) in enumerate(items) if s == "node/n1" or s.startswith("relay/")]
    assert list(log.read(streams=[])) == []


def test_prefix_filter_is_case_sensitive_and_literal(log: EventLog) -> None:
    log.append([("Relay/x", E.Tick(at=1)), ("relay/x", E.Tick(at=2)), ("re%/x", E.Tick(at=3))])
    assert [s.stream for s in log.read(stream_prefixes=["relay/"])] == ["relay/x"]
    assert [s.stream for s in log.read(stream_prefixes=["re%"])] == ["re%/x"]


def test_reads_page_through_any_length(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_module, "PAGE_SIZE", 7)
    items = sample_events(100, seed=5)
    log.append(items)
    assert [s.seq for s in log.read()] == list(range(1, 101))
    assert [e for _, _, e in log.read_events()] == [e for _, e in items]
    assert [s.seq for s in log.read(3, 30, stream_prefixes=["node/"])] == [
        i + 1 for i, (s, _) in enumerate(items) if s.startswith("node/") and 3 <= i + 1 <= 30
    ]


def test_read_events_round_trips_every_sample(log: EventLog) -> None:
    items = sample_events(300, seed=11)
    log.append(items)
    assert [(stream, event) for _, stream, event in log.read_events()] == items


def test_fast_encoder_gives_the_codecs_bytes() -> None:
    for _, event in sample_events(400, seed=2):
        expected = codec.encode(event)
        assert encode(event) == (
            expected.type,
            expected.schema_version,
            expected.at,
            expected.payload,
        )


def test_unregistered_event_class_is_refused(log: EventLog) -> None:
    class Homemade(E.Tick):
        TYPE = "homemade"

    with pytest.raises(TypeError, match="not a registered event type"):
        log.append([("s", Homemade(at=1))])
    assert log.last_seq() == 0


def _insert_raw(log: EventLog, seq: int, type_name: str, version: int, payload: bytes) -> None:
    with log.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO events VALUES (:seq, 'bad', :seq, :type, :version, 1, 1, :payload)"),
            {"seq": seq, "type": type_name, "version": version, "payload": payload},
        )


@pytest.mark.parametrize(
    ("type_name", "version", "payload", "problem"),
    [
        ("martian_landed", 1, b'{"at": 1}', "unknown event type 'martian_landed'"),
        ("tick", 99, b'{"at": 1}', "schema version 99, newer"),
        ("tick", 1, b'{"at": 1', "not valid JSON"),
        ("tick", 1, b"[1, 2]", "not a JSON object"),
        ("tick", 1, b'{"at": 1, "color": "red"}', "unknown fields: color"),
        ("peer_added", 1, b'{"at": 1, "peer": "short"}', "invalid"),
    ],
)
def test_undecodable_row_names_its_seq_and_problem(
    log: EventLog, type_name: str, version: int, payload: bytes, problem: str
) -> None:
    log.append([("s", E.Tick(at=1)), ("s", E.Tick(at=2))])
    _insert_raw(log, 3, type_name, version, payload)
    stored = list(log.read())
    assert [s.seq for s in stored] == [1, 2, 3]  # reading stays lazy
    with pytest.raises(DecodeError, match="event seq 3") as caught:
        stored[2].decode()
    assert problem in str(caught.value)
    assert caught.value.seq == 3
    events = log.read_events()
    assert next(events)[0] == 1 and next(events)[0] == 2
    with pytest.raises(DecodeError, match=f"event seq 3: .*{problem.split()[0]}"):
        next(events)


def test_stored_event_is_a_frozen_value() -> None:
    stored = StoredEvent(1, "s", 1, "tick", 1, 5, 6, b'{"at":5}')
    with pytest.raises(AttributeError):
        stored.seq = 2  # type: ignore[misc]
    assert stored == StoredEvent(1, "s", 1, "tick", 1, 5, 6, b'{"at":5}')


def test_two_log_objects_on_one_log_keep_versions_right(
    open_log: Callable[..., EventLog], new_url: Callable[[], str]
) -> None:
    url = new_url()
    first, second = open_log(url), open_log(url)
    first.append([("s", E.Tick(at=1))])
    second.append([("s", E.Tick(at=2))])  # first's remembered head of "s" is now stale
    [stored] = first.append([("s", E.Tick(at=3))])
    assert (stored.seq, stored.stream_version) == (3, 3)
    with pytest.raises(ConcurrencyError, match="version 3, expected 2"):
        second.append([("s", E.Tick(at=4))], expected_versions={"s": 2})
    [stored] = second.append([("s", E.Tick(at=4))], expected_versions={"s": 3})
    assert (stored.seq, stored.stream_version) == (4, 4)
    assert [s.stream_version for s in first.read()] == [1, 2, 3, 4]
