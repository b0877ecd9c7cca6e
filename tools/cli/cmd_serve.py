"""`natrelay serve --log URL`: the engine as a local service, NDJSON over a Unix socket or stdio.

This module owns the command line only: options, logging to stderr (stdout is
the protocol channel in --stdio mode), printing the protocol's JSON Schema,
and user errors as one line with exit code 2. The service is
`natrelay.adapters.serve`; the protocol is docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from natrelay.tools.cli.common import CliError


def serve(
    log_url: Annotated[
        str | None, typer.Option("--log", help="The log: a SQLite file path or a database URL.")
    ] = None,
    socket_path: Annotated[
        str | None, typer.Option("--socket", help="Listen on this Unix socket path (mode 0600).")
    ] = None,
    stdio: Annotated[
        bool, typer.Option("--stdio", help="Serve one client on stdin/stdout (for agents that spawn it).")
    ] = False,
    snapshot_every: Annotated[
        int, typer.Option(help="Snapshot a node's engine every N of its observations (0: only at exit).")
    ] = 10_000,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the protocol's JSON Schema and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every connection to stderr.")] = False,
) -> None:
    """Serve the engine to local agents: observations in; decisions, commands and deadlines out."""
    from natrelay.adapters.serve.wire_schema import protocol_schema

    if schema:
        print(json.dumps(protocol_schema(), indent=2))
        return
    if log_url is None:
        raise CliError("serve needs --log (a SQLite file path or a database URL)")
    if socket_path is None and not stdio:
        raise CliError("serve needs --socket PATH, --stdio, or both")
    if snapshot_every < 0:
        raise CliError("--snapshot-every must be >= 0")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from natrelay.adapters.serve.server import Server, SocketInUse
    from natrelay.adapters.serve.service import Service
    from natrelay.eventlog import EventLog

    with EventLog.open(log_url) as log, _lease(log):
        service = Service(log, snapshot_every=snapshot_every or None)
        server = Server(service)

        def ready() -> None:
            if socket_path is not None:
                print(f"natrelay serve: listening on {socket_path}", file=sys.stderr, flush=True)

        try:
            asyncio.run(server.run(socket_path=socket_path, stdio=stdio, ready=ready))
        except SocketInUse as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"cannot serve on {socket_path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _lease(log: Any) -> Iterator[None]:
    from natrelay.adapters.serve.lease import LogServed, exclusive

    try:
        with exclusive(log):
            yield
    except LogServed as exc:
        raise CliError(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.command()(serve)
