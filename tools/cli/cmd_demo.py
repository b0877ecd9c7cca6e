"""`natrelay demo`: a small built-in mesh on the in-memory network, then its status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from natrelay.eventlog import EventLog
from natrelay.tools.cli.cmd_status import status
from natrelay.tools.cli.common import CliError, out


def demo(
    log: Annotated[Path, typer.Option("--log", help="Where to write the SQLite log.")] = Path(
        "natrelay-demo.sqlite"
    ),
) -> None:
    """Run a small built-in mesh on the in-memory network and show its status."""
    from natrelay.tools.demo import run_demo

    if log.exists():
        raise CliError(f"{log} exists; the demo writes a new log (remove it or pass --log)")
    with EventLog.open(str(log)) as opened:
        node = run_demo(opened)
    out.print(f"demo mesh: {node.appended} events written to {log}")
    status(str(log), None, False)


def register(app: typer.Typer) -> None:
    app.command()(demo)
