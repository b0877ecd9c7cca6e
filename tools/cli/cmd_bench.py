"""`natrelay bench`: natrelay measured beside the raw floors, in one run (see BENCHMARKS.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from natrelay.tools.cli.common import JsonOpt, out, require_extra


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
    require_extra("eventsourcing", "bench", "bench")
    from natrelay.tools.bench import run_benchmarks

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


def register(app: typer.Typer) -> None:
    app.command()(bench)
