"""The `natrelay` command line: one module per verb (cmd_*.py), registered on one typer app.

Owns the entry point: which verbs exist, and the rule that errors a user can fix
(a missing log, a bad URL, an unknown peer, a corrupt row, a bad option) are one
line on stderr and exit code 2, never a traceback. A verb module that needs an
optional extra (matplotlib, hypothesis) imports it inside the command, so every
verb's --help works on a plain install.
"""

from __future__ import annotations

import sys

import typer

from natrelay.core.codec import DecodeError
from natrelay.core.values import InvalidValue
from natrelay.eventlog import EventLogError
from natrelay.tools.cli import (
    cmd_agent,
    cmd_bench,
    cmd_demo,
    cmd_diagram,
    cmd_explain,
    cmd_fleet,
    cmd_fuzz,
    cmd_plot,
    cmd_replay,
    cmd_serve,
    cmd_simulate,
    cmd_status,
    cmd_timeline,
    cmd_whatif,
)
from natrelay.tools.cli.common import CliError, app, printable
from natrelay.tools.inspect_log import LookupError_

#: The verbs, in the order `natrelay --help` lists them.
VERBS = (
    cmd_simulate,
    cmd_status,
    cmd_explain,
    cmd_timeline,
    cmd_plot,
    cmd_replay,
    cmd_whatif,
    cmd_fleet,
    cmd_fuzz,
    cmd_diagram,
    cmd_demo,
    cmd_bench,
    cmd_agent,
    cmd_serve,
)
for _verb in VERBS:
    _verb.register(app)

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
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `natrelay` alone: the help (typer printed it)
            text = exc.format_message()  # type: ignore[attr-defined]
            if text.strip():
                print(text, file=sys.stderr)
            sys.exit(2)
        if _is_usage_error(exc):
            print(_usage_line(exc), file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _usage_line(exc: Exception) -> str:
    """A bad option or argument as one line: `natrelay VERB: what was wrong (natrelay VERB --help)`."""
    message = printable(exc.format_message())  # type: ignore[attr-defined]
    context = getattr(exc, "ctx", None)
    where = getattr(context, "command_path", None) or "natrelay"
    message = message.rstrip(".")
    return f"{where}: {message[:1].lower()}{message[1:]} (see {where} --help)"


def _is_usage_error(exc: Exception) -> bool:
    """Bad options arrive as click's ClickException, from click itself or typer's vendored copy."""
    return any(klass.__name__ == "ClickException" for klass in type(exc).__mro__) and hasattr(exc, "show")
