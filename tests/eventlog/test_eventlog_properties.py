"""Hypothesis properties of the log, on both backends.

Any sequence of batches, some with correct and some with stale expected
versions: what reads back equals what was accepted, in order; seq runs 1..n
without holes; each stream's versions run 1..k; a rejected batch leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.core import events as E
from natrelay.eventlog import ConcurrencyError, EventLog

from .helpers import public_key

STREAMS = ("node/a", "node/a/peer/x", "relay/r1", "relay/r2", "node/b")

times = st.integers(min_value=0, max_value=2**40)
events = st.one_of(
    st.builds(E.Tick, at=times),
    st.builds(E.RelayWithdrawn, at=times, relay=st.sampled_from(["r1", "r2", "r-3"])),
    st.builds(
        E.HandshakeObserved,
        at=times,
        peer=st.integers(1, 5).map(public_key),
        endpoint=st.sampled_from(["10.0.0.1:51820", "[2001:db8::1]:4500"]),
    ),
    st.builds(
        E.PeerAdded,
        at=times,
        peer=st.integers(1, 5).map(public_key),
        name=st.text(max_size=20),
    ),
)
batches = st.lists(st.tuples(st.sampled_from(STREAMS), events), max_size=12)
#: How a batch states expectations: none, the true versions, or one stale version.
modes = st.sampled_from(["none", "current", "stale"])

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(plan=st.lists(st.tuples(batches, modes), min_size=1, max_size=6))
def test_accepted_batches_read_back_in_order_with_gapless_numbering(
    open_log: Callable[..., EventLog], plan: list[tuple[list[tuple[str, E.Event]], str]]
) -> None:
    log = open_log(clock=lambda: 5)
    accepted: list[tuple[str, E.Event]] = []
    for batch, mode in plan:
        touched = sorted({stream for stream, _ in batch}) or ["node/a"]
        current = log.stream_versions(touched)
        expected = None
        if mode == "current":
            expected = current
        elif mode == "stale":
            expected = {**current, touched[0]: current[touched[0]] + 1}
        before = log.last_seq()
        try:
            stored = log.append(batch, expected)
        except ConcurrencyError as exc:
            assert mode == "stale" and exc.stream == touched[0]
            assert log.last_seq() == before
            assert log.stream_versions(touched) == current
            continue
        assert mode != "stale"
        assert [s.seq for s in stored] == list(range(before + 1, before + len(batch) + 1))
        accepted.extend(batch)

    stored_all = list(log.read())
    assert [s.seq for s in stored_all] == list(range(1, len(accepted) + 1))
    assert [(s.stream, s.decode()) for s in stored_all] == accepted
    assert [(stream, event) for _, stream, event in log.read_events()] == accepted
    for stream in STREAMS:
        versions = [s.stream_version for s in stored_all if s.stream == stream]
        assert versions == list(range(1, len(versions) + 1))
        assert log.stream_versions([stream])[stream] == len(versions)


@SETTINGS
@given(
    items=st.lists(st.tuples(st.sampled_from(STREAMS), events), min_size=1, max_size=30),
    bounds=st.tuples(st.integers(1, 35), st.integers(0, 35)),
    chosen=st.sets(st.sampled_from(STREAMS)),
    prefixes=st.sets(st.sampled_from(["node/", "relay/", "node/a/", "x"])),
)
def test_reads_are_the_filtered_slice_of_the_log(
    open_log: Callable[..., EventLog],
    items: list[tuple[str, E.Event]],
    bounds: tuple[int, int],
    chosen: set[str],
    prefixes: set[str],
) -> None:
    log = open_log()
    log.append(items)
    start, end = bounds
    want = [
        seq
        for seq, (stream, _) in enumerate(items, start=1)
        if start <= seq <= end and (stream in chosen or any(stream.startswith(p) for p in prefixes))
    ]
    got = log.read(start, end, streams=chosen, stream_prefixes=prefixes)
    assert [s.seq for s in got] == want
