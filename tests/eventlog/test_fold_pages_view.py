"""`EventLog.fold_pages` reads a node's view without the stream filter only when the view is
the whole log: the rows are exactly those the filter selects, whatever other streams sort
next to the node's own (`node/a-2` sorts between `node/a` and `node/a/`), on SQLite and
PostgreSQL.

Wrong decisions this kills (mutations checked by hand, see the commit): dropping the filter
when one stream outside the view exists (another node's, a stream sorting inside a
prefix's neighbourhood), or jumping past a stream outside the view after a prefix.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from natrelay.core.events import Tick
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view

TOP = "\U0010ffff"

#: Each: the streams of one log. The view is node `a`'s: node/a, node/a/..., relay/...
LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("node/a", "node/a/peer/x", "node/a/peer/y", "relay/r1"),  # the view is the whole log
    ("node/a/peer/x",),
    ("relay/r1",),
    ("node/a", "node/a/peer/x", "node/b", "node/b/peer/x"),  # another node after
    ("node/", "node/a", "node/a/peer/x"),  # before
    ("node/a", "node/a-2", "node/a/peer/x"),  # between node/a and node/a/
    ("node/a", "node/a/peer/x", "node/a0"),  # just after the prefix's range
    ("node/a", "node/a/" + TOP, "node/a/" + TOP + "x", "relay/r"),  # at the top of the range
    ("node/a", "node/a/" + TOP + "x", "node/a0"),
    ("node/a", "relay/r", "relay0"),  # after the relay prefix
    ("node/a", "node/a/peer/x", "relax", "relay/r"),  # between the prefixes
    ("a", "node/a"),
)


def _view_rows(log: EventLog, streams: tuple[str, ...]) -> list[int]:
    """The seqs the view selects, by the filter's own definition."""
    view = node_view("a")
    wanted = [
        seq
        for seq, stream in enumerate(streams, 1)
        if stream in view["streams"] or any(stream.startswith(p) for p in view["stream_prefixes"])
    ]
    assert [row[0] for row in log.rows(**node_view("a"))] == wanted
    return wanted


@pytest.mark.parametrize("streams", LAYOUTS, ids=[",".join(s).replace(TOP, "TOP") for s in LAYOUTS])
def test_fold_pages_reads_exactly_the_view(
    open_log: Callable[..., EventLog], streams: tuple[str, ...]
) -> None:
    log = open_log()
    log.append([(stream, Tick(at=index)) for index, stream in enumerate(streams)])
    wanted = _view_rows(log, streams)
    view = node_view("a")
    assert log._all_streams_among(view["streams"], view["stream_prefixes"]) == (len(wanted) == len(streams))
    assert [row[0] for page in log.fold_pages(**view) for row in page] == wanted
    for to_seq in (1, len(streams) - 1):
        got = [row[0] for page in log.fold_pages(1, to_seq, **view) for row in page]
        assert got == [seq for seq in wanted if seq <= to_seq]


def test_rows_appended_after_the_check_are_read_up_to_it(open_log: Callable[..., EventLog]) -> None:
    """Without the filter, pages end at the seq that was last when the view was checked: a
    row of another node appended meanwhile is never folded into this one."""
    log = open_log()
    log.append([("node/a", Tick(at=0)), ("node/a/peer/x", Tick(at=1))])
    pages = log.fold_pages(**node_view("a"))
    log.append([("node/b", Tick(at=2))])
    assert [row[0] for page in pages for row in page] == [1, 2]
