"""The `natrelay` command line.

Owns argument parsing and printing. Every command reads or writes a log
through eventlog/ and shows what tools/inspect_log.py computes. Errors the
user can fix (a missing log, a bad URL, an unknown peer, a corrupt row) are one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from natrelay.core import lifecycle
from natrelay.core.codec import DecodeError
from natrelay.core.values import InvalidValue
from natrelay.eventlog import EventLog, EventLogError
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import rebuild, verify

from .inspect_log import (
    LookupError_,
    choose_node,
    explain_lines,
    resolve_peer,
    seconds,
    short,
    status_rows,
    timeline_rows,
)

app = typer.Typer(
    name="natrelay",
    help="NAT-traversal decisions for WireGuard meshes, on an append-only event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

LogArg = Annotated[str, typer.Argument(help="The log: a SQLite file path or a database URL.")]
NodeOpt = Annotated[str | None, typer.Option("--node", help="Which node's view (default: the only one).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def printable(text: str) -> str:
    """The text with control characters (terminal escapes included) made visible, on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class CliError(Exception):
    """An error to print as one line, exit code 2."""


def open_existing(location: str) -> EventLog:
    if "://" not in location and not Path(location).exists():
        raise CliError(f"no log at {location}")
    return EventLog.open(location, create=False)


@app.command()
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
        engine, last = rebuild(opened, name)
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
    from natrelay.eventlog.replay import node_view

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


@app.command()
def explain(
    log: LogArg,
    peer: Annotated[str, typer.Argument(help="Public key, a unique prefix of it, or the peer's name.")],
    node: NodeOpt = None,
    full: Annotated[
        bool, typer.Option("--full", help="The whole history, not just since the last loss.")
    ] = False,
) -> None:
    """In plain words, why the peer is on its path, citing the seq of each fact."""
    with open_existing(log) as opened:
        name = choose_node(opened, node)
        engine, _ = rebuild(opened, name)
        key = resolve_peer(engine, peer)
        lines = explain_lines(opened, name, key, engine, full=full)
    label = engine.peers[key].name
    out.print(f"peer {key}{f' ({escape(printable(label))})' if label else ''}")
    for line in lines:
        out.print(escape(line), soft_wrap=True)


@app.command()
def timeline(
    log: LogArg,
    peer: Annotated[str, typer.Argument(help="Public key, a unique prefix of it, or the peer's name.")],
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The peer's events in order."""
    with open_existing(log) as opened:
        name = choose_node(opened, node)
        engine, _ = rebuild(opened, name)
        key = resolve_peer(engine, peer)
        rows = timeline_rows(opened, name, key)
    if as_json:
        fields = ("seq", "at_ms", "kind", "type", "details")
        print(json.dumps([dict(zip(fields, row, strict=True)) for row in rows]))
        return
    table = Table(title=f"peer {key}")
    for column in ("seq", "time", "kind", "event", "details"):
        table.add_column(column)
    for seq, at, kind, type_name, details in rows:
        table.add_row(str(seq), seconds(at), kind, type_name, escape(details))
    out.print(table)


@app.command()
def replay(
    log: LogArg,
    node: NodeOpt = None,
    until: Annotated[int | None, typer.Option("--until", help="Stop at this seq (time travel).")] = None,
    verify_: Annotated[
        bool, typer.Option("--verify", help="Re-decide from the observations; exit 1 on a divergence.")
    ] = False,
    from_zero: Annotated[bool, typer.Option("--from-zero", help="Ignore snapshots.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Scan every row; list each bad one; exit 1 if any.")
    ] = False,
) -> None:
    """Rebuild every projection from the log (optionally up to a seq), verify its decisions, or check it."""
    with open_existing(log) as opened:
        if check:
            result = check_log(opened)
            for problem in result.problems:
                out.print(escape(printable(problem.describe())), soft_wrap=True)
            verdict = "ok" if result.ok else f"{len(result.problems)} bad"
            out.print(f"checked {result.rows} rows up to seq {result.last_seq}: {verdict}")
            if not result.ok:
                raise typer.Exit(1)
            return
        name = choose_node(opened, node)
        started = time.perf_counter()
        if verify_:
            result = verify(opened, name, until_seq=until)
            elapsed = time.perf_counter() - started
            if result.divergence is not None:
                err = Console(stderr=True, highlight=False)
                err.print(f"DIVERGENCE {escape(result.divergence.message)}")
                if result.divergence.expected is not None:
                    err.print(f"  recorded: {escape(json.dumps(result.divergence.expected))}")
                err.print(f"  re-decided: {escape(json.dumps(result.divergence.got))}")
                raise typer.Exit(1)
            out.print(
                f"verified: {result.observations} observations re-decided into {result.decisions} "
                f"identical decisions in {elapsed:.2f} s"
            )
            return
        engine, last = rebuild(opened, name, until_seq=until, use_snapshot=not from_zero)
        elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for record in engine.peers.values():
        counts[record.state] = counts.get(record.state, 0) + 1
    summary = ", ".join(f"{state}: {n}" for state, n in sorted(counts.items())) or "no peers"
    out.print(f"node {escape(printable(name))} as of seq {last} (t = {seconds(engine.now)}): {summary}")
    out.print(f"rebuilt in {elapsed:.2f} s")


@app.command()
def diagram() -> None:
    """Print the peer lifecycle as a mermaid state diagram."""
    print(lifecycle.mermaid())


@app.command()
def demo(
    log: Annotated[Path, typer.Option("--log", help="Where to write the SQLite log.")] = Path(
        "natrelay-demo.sqlite"
    ),
) -> None:
    """Run a small built-in mesh on the in-memory network and show its status."""
    from .demo import run_demo

    if log.exists():
        raise CliError(f"{log} exists; the demo writes a new log (remove it or pass --log)")
    with EventLog.open(str(log)) as opened:
        node = run_demo(opened)
    out.print(f"demo mesh: {node.appended} events written to {log}")
    status(str(log), None, False)


@app.command()
def bench(
    as_json: JsonOpt = False,
    events: Annotated[int, typer.Option(help="Events for the log benchmarks.")] = 200_000,
    peers: Annotated[int, typer.Option(help="Peers for the engine memory benchmark.")] = 100_000,
    rebuild_events: Annotated[
        int, typer.Option(help="Size of the log rebuilt from zero and from a snapshot (0: skip).")
    ] = 1_000_000,
    postgres: Annotated[
        str | None, typer.Option("--postgres", help="PostgreSQL URL (default: $NATRELAY_PG_URL or local).")
    ] = None,
    no_postgres: Annotated[
        bool, typer.Option("--no-postgres", help="Skip the PostgreSQL measurements.")
    ] = False,
) -> None:
    """Measure natrelay beside the raw floors in one run (see BENCHMARKS.md)."""
    from .bench import run_benchmarks

    results = run_benchmarks(
        events=events,
        peers=peers,
        rebuild_events=rebuild_events,
        postgres=postgres,
        with_postgres=not no_postgres,
        progress=not as_json,
    )
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title="natrelay bench")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:,.1f}" if isinstance(value, float) else str(value))
    out.print(table)


#: Commands contributed by other modules: each exposes register(app).
_PLUGINS = ("simulate", "fuzz_cli", "agent_cli", "fleet_cli", "check_cli")


def _register_plugins() -> None:
    for module in _PLUGINS:
        try:
            loaded: Any = importlib.import_module(f"natrelay.tools.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"natrelay.tools.{module}":
                continue
            raise
        loaded.register(app)


_register_plugins()

_USER_ERRORS = (CliError, LookupError_, EventLogError, DecodeError, InvalidValue)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except _USER_ERRORS as exc:
        print(f"natrelay: {printable(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
