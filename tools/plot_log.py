"""Pictures of a log: a peer's path over time, and the shares of peers direct, relayed, unconnected.

Owns two things, kept apart so the first is testable as data:

- the series: pure folds of a node's peer streams through the lifecycle table
  (`core.lifecycle`), the same rules the engine follows, so a peer is on a
  direct path exactly while it is `direct_connected`, relayed while
  `relay_connected`, and has no path in every other live state. A decision
  the lifecycle does not allow is a corrupt log: `PlotError` names its seq.
- the drawing, with matplotlib (the `sim` extra), imported inside the drawing
  functions. A peer's figure has a lane each for direct, relay and no path,
  every decision marked (a diamond where the path changed, a tick otherwise);
  in an SVG each marker carries a `<title>` (its seq, type and reason, shown
  on hover) and the id `decision-SEQ`; beside the plot, in every format, the
  path-changing decisions are listed with their seqs.

`natrelay plot` (tools/cli/cmd_plot.py) is the command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import attrs

from natrelay.core import lifecycle as lc
from natrelay.core.events import Decision, Event, PeerAdded, PeerRemoved
from natrelay.eventlog import EventLog

DIRECT, RELAY, NONE = "direct", "relay", "none"
#: Lanes bottom to top, and how each is labelled.
LANES: tuple[str, ...] = (NONE, RELAY, DIRECT)
LANE_LABELS = {DIRECT: "direct", RELAY: "relay", NONE: "no path"}
COLORS = {DIRECT: "#2e8b57", RELAY: "#e08a1e", NONE: "#c9c9c9"}
#: Formats `natrelay plot` writes, by file suffix.
FORMATS = (".svg", ".png", ".pdf")
#: Decisions that put a peer on a path (their endpoint or relay labels the segment).
PATH_DECISIONS = frozenset({"direct_path_selected", "relay_path_selected", "path_upgraded"})
#: Path-changing decisions listed beside a peer's plot at most (the latest ones).
LISTED = 32


class PlotError(ValueError):
    """The log cannot be drawn as asked (a decision the lifecycle does not allow, no peers)."""


@attrs.frozen
class Segment:
    """A stretch of time a peer spent on one lane; `seq` is the event that put it there."""

    start_ms: int
    end_ms: int
    lane: str
    detail: str
    seq: int


@attrs.frozen
class DecisionMark:
    """One decision of the peer: where it left the peer, and whether it changed the lane."""

    seq: int
    at_ms: int
    type: str
    lane: str
    reason: str
    changed_lane: bool


@attrs.frozen
class PeerPaths:
    peer: str
    name: str
    start_ms: int
    end_ms: int
    segments: tuple[Segment, ...]
    decisions: tuple[DecisionMark, ...]
    #: (from, to) ms while the peer was removed from the mesh (no lane then).
    removed: tuple[tuple[int, int], ...] = ()

    def time_on(self, lane: str) -> int:
        return sum(s.end_ms - s.start_ms for s in self.segments if s.lane == lane)


@attrs.frozen
class Shares:
    """Live peers on each lane after every change: `times_ms[i]` -> `direct[i]`, `relay[i]`, `none[i]`."""

    times_ms: tuple[int, ...]
    direct: tuple[int, ...]
    relay: tuple[int, ...]
    none: tuple[int, ...]
    end_ms: int
    peers: int  # peers ever added


def lane_of(state: str) -> str:
    if state == lc.DIRECT_CONNECTED:
        return DIRECT
    if state == lc.RELAY_CONNECTED:
        return RELAY
    return NONE


def _detail(event: Event, lane: str) -> str:
    if lane == DIRECT:
        return str(getattr(event, "endpoint", ""))
    if lane == RELAY:
        return str(getattr(event, "relay", ""))
    return ""


def next_state(state: str | None, event: Event, seq: int) -> str | None:
    """The peer's lifecycle state after `event` (None: never added).

    Membership observations follow the engine's fold (an add of a live peer
    only updates it, a removal of an absent peer is rejected and changes
    nothing); decisions must be transitions of the lifecycle table.
    """
    if isinstance(event, PeerAdded):
        return lc.PENDING if state in (None, lc.REMOVED) else state
    if isinstance(event, PeerRemoved):
        return lc.REMOVED if state in lc.LIVE_STATES else state
    trigger = lc.TRIGGER_OF_EVENT.get(event.TYPE)
    if trigger is None or not isinstance(event, Decision):
        return state
    if state is None:
        raise PlotError(f"event seq {seq}: {event.TYPE} for a peer that was never added")
    try:
        return lc.next_state(state, trigger)
    except lc.InvalidTransition:
        raise PlotError(
            f"event seq {seq}: {event.TYPE} does not apply to a peer in state {state} "
            "(natrelay replay LOG --check reports every bad row)"
        ) from None


def last_time(log: EventLog) -> int:
    """The time of the log's newest event (the end of every series)."""
    last = log.last_seq()
    for row in log.rows(from_seq=last, to_seq=last):
        return int(row[5])
    return 0


def peer_stream(node: str, peer: str) -> str:
    return f"node/{node}/peer/{peer}"


def peer_paths(log: EventLog, node: str, peer: str) -> PeerPaths:
    """The peer's lanes over time and its decisions, from its stream."""
    return fold_peer(log.read_events(streams=[peer_stream(node, peer)]), peer, last_time(log))


def fold_peer(events: Iterable[tuple[int, str, Event]], peer: str, end_ms: int) -> PeerPaths:
    state: str | None = None
    name = ""
    start: int | None = None
    segments: list[Segment] = []
    decisions: list[DecisionMark] = []
    current: tuple[int, str, str, int] | None = None  # start, lane, detail, seq
    removed: list[tuple[int, int]] = []
    removed_at: int | None = None
    for seq, _stream, event in events:
        if isinstance(event, PeerAdded):
            name = event.name or name
        before = state
        state = next_state(state, event, seq)
        if start is None and state is not None:
            start = event.at
        lane = None if state in (None, lc.REMOVED) else lane_of(state)
        old_lane = None if before in (None, lc.REMOVED) else lane_of(before)
        detail = _detail(event, lane) if lane is not None and event.TYPE in PATH_DECISIONS else ""
        moved = lane != old_lane or (current is not None and detail != "" and detail != current[2])
        if moved:
            if current is not None:
                segments.append(Segment(current[0], event.at, current[1], current[2], current[3]))
            current = None if lane is None else (event.at, lane, detail, seq)
        if state == lc.REMOVED and before != lc.REMOVED:
            removed_at = event.at
        elif removed_at is not None and state != lc.REMOVED:
            removed.append((removed_at, event.at))
            removed_at = None
        if event.KIND == "decision":  # the engine's decisions, rejections of outside input included
            reason = str(getattr(event, "reason", ""))
            decisions.append(DecisionMark(seq, event.at, event.TYPE, lane or NONE, reason, lane != old_lane))
    if current is not None:
        segments.append(Segment(current[0], max(end_ms, current[0]), current[1], current[2], current[3]))
    if removed_at is not None:
        removed.append((removed_at, max(end_ms, removed_at)))
    if start is None:
        raise PlotError(f"peer {peer} has no events in this node's streams")
    return PeerPaths(peer, name, start, max(end_ms, start), tuple(segments), tuple(decisions), tuple(removed))


def shares(log: EventLog, node: str) -> Shares:
    """How many live peers are direct, relayed and unconnected after each change, over the node's log."""
    return fold_shares(log.read_events(stream_prefixes=[f"node/{node}/peer/"]), last_time(log))


def fold_shares(events: Iterable[tuple[int, str, Event]], end_ms: int) -> Shares:
    states: dict[str, str] = {}
    counts = {DIRECT: 0, RELAY: 0, NONE: 0}
    times: list[int] = []
    rows: list[tuple[int, int, int]] = []
    for seq, stream, event in events:
        peer = stream.rsplit("/", 1)[1]
        before = states.get(peer)
        after = next_state(before, event, seq)
        if after is None or after == before:
            continue
        states[peer] = after
        old = None if before in (None, lc.REMOVED) else lane_of(before)
        new = None if after == lc.REMOVED else lane_of(after)
        if old == new:
            continue
        if old is not None:
            counts[old] -= 1
        if new is not None:
            counts[new] += 1
        row = (counts[DIRECT], counts[RELAY], counts[NONE])
        if times and times[-1] == event.at:
            rows[-1] = row  # several changes at one instant: the instant's outcome
        else:
            times.append(event.at)
            rows.append(row)
    if not states:
        raise PlotError("no peers in this node's streams")
    return Shares(
        tuple(times),
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
        max(end_ms, times[-1] if times else 0),
        len(states),
    )


# --- drawing (matplotlib: the sim extra) -------------------------------------------------------


def _time_axis(end_ms: int) -> tuple[float, str]:
    """The divisor from ms and the axis label: minutes for runs over ten minutes, else seconds."""
    return (60_000.0, "time (min)") if end_ms > 600_000 else (1000.0, "time (s)")


def _clock(at_ms: int, end_ms: int) -> str:
    """A time as the axis counts it: seconds for short runs, minutes:seconds past ten minutes."""
    seconds = at_ms / 1000
    if end_ms <= 600_000:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_peer(paths: PeerPaths, out: Path, title: str) -> Path:
    """The peer's lanes over time with its decisions marked, and the path changes listed beside."""
    plt = _pyplot()
    scale, label = _time_axis(paths.end_ms)
    fig = plt.figure(figsize=(14, 4.6))
    grid = fig.add_gridspec(1, 2, width_ratios=(3.1, 1.25), wspace=0.04)
    ax = fig.add_subplot(grid[0, 0])
    listing = fig.add_subplot(grid[0, 1])
    y = {lane: index for index, lane in enumerate(LANES)}
    span = max(paths.end_ms - paths.start_ms, 1) / scale
    for segment in paths.segments:
        left, width = segment.start_ms / scale, (segment.end_ms - segment.start_ms) / scale
        bar = ax.broken_barh([(left, width)], (y[segment.lane] - 0.28, 0.56), facecolors=COLORS[segment.lane])
        bar.set_gid(f"segment-{segment.seq}")
        if segment.detail and width > span * 0.12:
            ax.text(
                left + width / 2,
                y[segment.lane],
                segment.detail,
                ha="center",
                va="center",
                fontsize=7,
                parse_math=False,
            )
    for index, (gone, back) in enumerate(paths.removed):
        ax.axvspan(
            gone / scale,
            back / scale,
            color="#eeeeee",
            hatch="//",
            ec="#bbbbbb",
            lw=0,
            label="removed from the mesh" if index == 0 else None,
        )
    if paths.removed:
        ax.legend(loc="upper right", fontsize=8)
    for mark in paths.decisions:
        x = mark.at_ms / scale
        if mark.changed_lane:
            (artist,) = ax.plot([x], [y[mark.lane]], "D", ms=6, mfc="white", mec="black", mew=1.2, zorder=4)
        else:
            (artist,) = ax.plot([x], [y[mark.lane]], "|", ms=13, mew=0.8, color="#333333", zorder=3)
        artist.set_gid(f"decision-{mark.seq}")
    ax.set_yticks(range(len(LANES)), [LANE_LABELS[lane] for lane in LANES])
    ax.set_ylim(-0.6, len(LANES) - 0.35)
    ax.set_xlim(paths.start_ms / scale - span * 0.01, paths.end_ms / scale + span * 0.01)
    ax.set_xlabel(label)
    ax.grid(True, axis="x", alpha=0.3)
    shares_text = ", ".join(
        f"{LANE_LABELS[lane]} {100 * paths.time_on(lane) / max(paths.end_ms - paths.start_ms, 1):.0f} %"
        for lane in (DIRECT, RELAY, NONE)
    )
    ax.set_title(
        f"{title}\n{shares_text} of its time; ◇ path changed, | a decision that kept it",
        fontsize=10,
        parse_math=False,
    )
    _list_changes(listing, paths)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.84, bottom=0.13)
    return _save(fig, plt, out, paths.decisions, paths.end_ms)


def _list_changes(ax: Any, paths: PeerPaths) -> None:
    ax.axis("off")
    changes = [m for m in paths.decisions if m.changed_lane]
    shown = changes[-LISTED:]
    lines = ["seq      time      decision -> path"]
    if len(changes) > len(shown):
        lines.append(f"({len(changes) - len(shown)} earlier changes not listed)")
    for mark in shown:
        clock = _clock(mark.at_ms, paths.end_ms)
        lines.append(f"{mark.seq:<8} {clock:>8}  {mark.type} -> {LANE_LABELS[mark.lane]}")
    others = len(paths.decisions) - len(changes)
    lines.append(f"+ {others} decisions that kept the path (ticks)")
    size = 7.5 if len(lines) <= 22 else max(4.5, 7.5 * 22 / len(lines))
    ax.text(
        0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=size, parse_math=False
    )


def draw_shares(series: Shares, out: Path, title: str) -> Path:
    """The shares of live peers direct, relayed and unconnected over time, stacked, and the live count."""
    plt = _pyplot()
    scale, label = _time_axis(series.end_ms)
    xs = [t / scale for t in series.times_ms] + [series.end_ms / scale]
    live = [d + r + n for d, r, n in zip(series.direct, series.relay, series.none, strict=True)]

    def share(values: tuple[int, ...]) -> list[float]:
        out = [v / total if total else 0.0 for v, total in zip(values, live, strict=True)]
        return [*out, out[-1]]

    direct, relay, none = share(series.direct), share(series.relay), share(series.none)
    fig, ax = plt.subplots(figsize=(12, 4.8))
    low = [0.0] * len(xs)
    mid = direct
    top = [d + r for d, r in zip(direct, relay, strict=True)]
    for lower, upper, lane in (
        (low, mid, DIRECT),
        (mid, top, RELAY),
        (top, [d + n for d, n in zip(top, none, strict=True)], NONE),
    ):
        ax.fill_between(xs, lower, upper, step="post", color=COLORS[lane], label=LANE_LABELS[lane], lw=0)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, series.end_ms / scale)
    ax.set_ylabel("share of live peers")
    ax.set_xlabel(label)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    count = ax.twinx()
    count.step(xs, [*live, live[-1]], where="post", color="black", lw=1, label="live peers")
    count.set_ylabel("live peers")
    count.set_ylim(0, max(live) * 1.05 if max(live) else 1)
    handles = ax.get_legend_handles_labels()[0] + count.get_legend_handles_labels()[0]
    ax.legend(
        handles, [*[LANE_LABELS[lane] for lane in (DIRECT, RELAY, NONE)], "live peers"], loc="lower right"
    )
    end = f"at the end: {series.direct[-1]} direct, {series.relay[-1]} relayed, {series.none[-1]} no path"
    ax.set_title(f"{title}\n{end} ({series.peers} peers ever added)", fontsize=10, parse_math=False)
    fig.tight_layout()
    return _save(fig, plt, out, (), series.end_ms)


def _save(fig: Any, plt: Any, out: Path, decisions: tuple[DecisionMark, ...], end_ms: int) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix.lower() == ".svg":
            from io import StringIO

            buffer = StringIO()
            fig.savefig(buffer, format="svg")
            out.write_text(add_titles(buffer.getvalue(), decisions, end_ms), encoding="utf-8")
        else:
            fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out


def add_titles(svg: str, decisions: Iterable[DecisionMark], end_ms: int) -> str:
    """Give each decision marker (`<g id="decision-SEQ">`) a `<title>`: what a browser shows on hover."""
    by_id = {f"decision-{m.seq}": m for m in decisions}

    def titled(match: re.Match[str]) -> str:
        mark = by_id.get(match.group(1))
        if mark is None:
            return match.group(0)
        text = f"seq {mark.seq} at {_clock(mark.at_ms, end_ms)}: {mark.type} -> {LANE_LABELS[mark.lane]}"
        if mark.reason:
            text += f" ({mark.reason})"
        return f"{match.group(0)}\n   <title>{escape(text)}</title>"

    return re.sub(r'<g id="(decision-\d+)">', titled, svg)


def decision_seqs(svg: str) -> Iterator[int]:
    """The seqs of the decisions an SVG written here marks (for tests and tools)."""
    for match in re.finditer(r'<g id="decision-(\d+)">\s*<title>seq (\d+) ', svg):
        yield int(match.group(2))
