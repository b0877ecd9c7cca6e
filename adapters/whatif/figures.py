"""What a run did, per peer and in total, read from its events alone.

Owns the definitions the what-if report compares (the same for the recorded
run and for the alternative, so they are comparable; docs/whatif.md repeats them):

- time to first path: from the peer's first `peer_added` to its first path
  decision (`direct_path_selected`, `relay_path_selected`); never: infinite;
- relayed while direct known to work: time on a relay path while the trace's
  evidence says one of the peer's direct endpoints worked (its latest fact —
  an answered attempt, a renewal, a missing renewal, a silence, an attempt
  that got no answer — was positive);
- switches: path changes after the first path (a new path, or a path again
  after losing one);
- probes: direct attempts started (connect rounds and upgrade probes), and
  relay connects;
- without a path: time in the mesh with no path decided.

The path is the engine's (its decisions), not a ground truth: a trace has none.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import attrs

from natrelay.core.events import (
    DirectAttemptStarted,
    DirectPathSelected,
    Event,
    PathLost,
    PathUpgraded,
    PeerAdded,
    PeerRemoved,
    RelayChosen,
    RelayPathSelected,
)

from .trace import Trace

INF = math.inf


@attrs.frozen
class PeerFigures:
    """One peer's figures in one run."""

    peer: str
    name: str
    first_path_ms: float
    relayed_while_direct_ms: int
    switches: int
    probes: int
    relay_connects: int
    without_path_ms: int


@attrs.frozen
class Figures:
    """A run's figures: per peer, and totals."""

    peers: tuple[PeerFigures, ...]

    def percentile_first_path_s(self, share: float) -> float:
        values = sorted(p.first_path_ms / 1000 for p in self.peers)
        if not values:
            return math.nan
        return values[max(1, math.ceil(share * len(values))) - 1]

    @property
    def relayed_while_direct_s(self) -> float:
        return sum(p.relayed_while_direct_ms for p in self.peers) / 1000

    @property
    def switches(self) -> int:
        return sum(p.switches for p in self.peers)

    @property
    def probes(self) -> int:
        return sum(p.probes for p in self.peers)

    @property
    def relay_connects(self) -> int:
        return sum(p.relay_connects for p in self.peers)

    @property
    def without_path_s(self) -> float:
        return sum(p.without_path_ms for p in self.peers) / 1000

    @property
    def never_connected(self) -> int:
        return sum(1 for p in self.peers if math.isinf(p.first_path_ms))

    def totals(self) -> dict[str, float]:
        return {
            "first_path_p50_s": self.percentile_first_path_s(0.50),
            "first_path_p95_s": self.percentile_first_path_s(0.95),
            "first_path_p99_s": self.percentile_first_path_s(0.99),
            "never_connected": self.never_connected,
            "relayed_while_direct_s": self.relayed_while_direct_s,
            "switches": self.switches,
            "probes": self.probes,
            "relay_connects": self.relay_connects,
            "without_path_s": self.without_path_s,
        }


class _Peer:
    __slots__ = (
        "first_join",
        "first_path",
        "had_path",
        "last",
        "name",
        "path",
        "present",
        "probes",
        "relay_connects",
        "relayed",
        "switches",
        "without",
    )

    def __init__(self) -> None:
        self.name = ""
        self.present = False
        self.path: tuple[str, str] | None = None
        self.had_path = False
        self.last = 0
        self.first_join: int | None = None
        self.first_path: int | None = None
        self.switches = self.probes = self.relay_connects = self.without = 0
        self.relayed: list[tuple[int, int]] = []

    def advance(self, now: int) -> None:
        span = now - self.last
        if span > 0 and self.present:
            if self.path is None:
                self.without += span
            elif self.path[0] == "relay":
                self.relayed.append((self.last, now))
        self.last = max(self.last, now)

    def take_path(self, path: tuple[str, str] | None, at: int) -> None:
        if path is not None and path != self.path:
            if self.had_path:
                self.switches += 1
            else:
                self.first_path = at
            self.had_path = True
        self.path = path


def measure(events: Iterable[Event], trace: Trace) -> Figures:
    """The figures of a run (its events in order) in the world of `trace`."""
    peers: dict[str, _Peer] = defaultdict(_Peer)
    for event in events:
        key = getattr(event, "peer", None)
        if key is None:
            continue
        kind = type(event)
        peer = peers[key]
        peer.advance(event.at)
        if kind is PeerAdded:
            peer.present = True
            peer.name = event.name  # type: ignore[attr-defined]
            if peer.first_join is None:
                peer.first_join = event.at
        elif kind is PeerRemoved:
            peer.present = False
            peer.path = None
        elif kind is DirectAttemptStarted:
            peer.probes += 1
        elif kind is RelayChosen:
            peer.relay_connects += 1
        elif kind is DirectPathSelected or kind is PathUpgraded:
            peer.take_path(("direct", event.endpoint), event.at)  # type: ignore[attr-defined]
        elif kind is RelayPathSelected:
            peer.take_path(("relay", event.relay), event.at)  # type: ignore[attr-defined]
        elif kind is PathLost:
            peer.take_path(None, event.at)
    known = direct_known(trace)
    result = []
    for key in sorted(peers):
        peer = peers[key]
        if peer.first_join is None:
            continue
        peer.advance(trace.end)
        first = INF if peer.first_path is None else float(peer.first_path - peer.first_join)
        result.append(
            PeerFigures(
                peer=key,
                name=peer.name,
                first_path_ms=first,
                relayed_while_direct_ms=_overlap(peer.relayed, known.get(key, [])),
                switches=peer.switches,
                probes=peer.probes,
                relay_connects=peer.relay_connects,
                without_path_ms=peer.without,
            )
        )
    return Figures(tuple(result))


def direct_known(trace: Trace) -> dict[str, list[tuple[int, int]]]:
    """peer -> spans during which the evidence says some direct endpoint of it worked."""
    points: dict[str, list[tuple[int, int, str, bool]]] = defaultdict(list)
    for (peer, key), facts in trace.facts.items():
        if key.startswith("relay:"):
            continue
        for fact in facts:
            points[peer].append((fact.at, 1, key, fact.works))
    for (peer, endpoint), attempts in trace.attempts.items():
        for attempt in attempts:
            if attempt.answered_at is None:
                points[peer].append((attempt.deadline, 0, endpoint, False))
    for seq_event in trace.exogenous:
        event = seq_event[1]
        if type(event) is PeerRemoved:
            points[event.peer].append((event.at, 2, "", False))
    spans: dict[str, list[tuple[int, int]]] = {}
    for peer, items in points.items():
        items.sort()
        working: set[str] = set()
        start: int | None = None
        out: list[tuple[int, int]] = []
        for at, _order, endpoint, works in items:
            if endpoint == "":
                working.clear()
            elif works:
                working.add(endpoint)
            else:
                working.discard(endpoint)
            if working and start is None:
                start = at
            elif not working and start is not None:
                out.append((start, at))
                start = None
        if start is not None:
            out.append((start, trace.end))
        spans[peer] = out
    return spans


def _overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> int:
    """Total length of the intersection of two sorted lists of disjoint spans."""
    total = i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            total += end - start
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
