"""What every `natrelay` verb shares: the typer app, the console, argument types, one-line errors.

Owns only the plumbing common to the verbs (tools/cli/cmd_*.py, one verb each):
the app they register on, how outside text is printed safely, and `CliError`,
the error that main() turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from natrelay.eventlog import EventLog

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


def require_extra(module: str, extra: str, verb: str) -> None:
    """A one-line error naming the extra to install when `module` (an optional dependency) is missing.

    Verbs that need an extra (pyproject's optional-dependencies) call this before
    their lazy import, so a plain install says what to do instead of a traceback.
    """
    if importlib.util.find_spec(module) is None:
        raise CliError(
            f"natrelay {verb} needs {module}, which is not installed: pip install 'natrelay[{extra}]'"
        )
