"""`natrelay status LOG`: a row per peer, and with --follow one line per change as the log grows."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view
from natrelay.tools.cli.common import JsonOpt, LogArg, NodeOpt, open_existing, out, printable
from natrelay.tools.inspect_log import choose_node, seconds, short, status_rows
from natrelay.tools.views import view_engine


def status(
    log: LogArg,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Then keep watching: one line per change of state or path."),
    ] = False,
    poll: Annotated[float, typer.Option(help="With --follow on SQLite: seconds between polls.")] = 0.5,
) -> None:
    """A row per peer: state, path, attempts, last handshake age, since."""
    with open_existing(log) as opened:
        name = choose_node(opened, node)
        engine, last = view_engine(opened, name)
        _print_status(name, engine, last, as_json)
        if follow:
            _follow_status(opened, name, engine, last, as_json, poll)


def _print_status(name: str, engine: Any, last: int, as_json: bool) -> None:
    rows = status_rows(engine)
    if as_json:
        print(
            json.dumps(
                {"node": name, "seq": last, "now_ms": engine.now, "peers": [r.as_json() for r in rows]}
            )
        )
        return
    table = Table(title=f"node {escape(printable(name))} at seq {last} (t = {seconds(engine.now)})")
    for column in ("peer", "name", "state", "path", "attempts", "handshake age", "since"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            short(row.peer),
            escape(printable(row.name)),
            row.state,
            escape(printable(row.path)),
            str(row.attempts),
            seconds(row.handshake_age_ms),
            seconds(row.since_ms),
        )
    out.print(table)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    out.print(", ".join(f"{state}: {count}" for state, count in sorted(counts.items())))


def _follow_status(opened: EventLog, name: str, engine: Any, last: int, as_json: bool, poll: float) -> None:
    """Apply each new event of this node as it commits; print the peers whose state or path moved."""

    def where(key: str) -> tuple[str, str | None]:
        record = engine.peers.get(key)
        return ("absent", None) if record is None else (record.state, record.path)

    try:
        for stored in opened.follow(last + 1, poll_interval=poll, **node_view(name)):
            event = stored.decode()
            key = getattr(event, "peer", None)
            before = where(key) if key else None
            engine.apply(event)
            if key is None or where(key) == before:
                continue
            state, path = where(key)
            label = engine.peers[key].name or short(key)
            if as_json:
                change = {"seq": stored.seq, "at_ms": event.at, "peer": key, "state": state, "path": path}
                print(json.dumps(change), flush=True)
            else:
                print(
                    f"seq {stored.seq:>7}  t={seconds(event.at):>8}  {printable(label)}: "
                    f"{before[0] if before else '?'} -> {state}"
                    f"{f' ({printable(path)})' if path else ''}  [{event.TYPE}]",
                    flush=True,
                )
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.command()(status)
