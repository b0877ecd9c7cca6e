"""`natrelay replay LOG`: rebuild (time travel with --until), re-decide (--verify) or scan (--check) a log."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import rebuild, verify
from natrelay.tools.cli.common import LogArg, NodeOpt, open_existing, out, printable
from natrelay.tools.inspect_log import choose_node, seconds


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


def register(app: typer.Typer) -> None:
    app.command()(replay)
