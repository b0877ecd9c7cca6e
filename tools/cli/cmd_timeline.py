"""`natrelay timeline LOG PEER`: the peer's events in order, as a table or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from natrelay.tools.cli.common import JsonOpt, LogArg, NodeOpt, open_existing, out
from natrelay.tools.inspect_log import choose_node, seconds, timeline_rows
from natrelay.tools.views import find_peer


def timeline(
    log: LogArg,
    peer: Annotated[str, typer.Argument(help="Public key, a unique prefix of it, or the peer's name.")],
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The peer's events in order."""
    with open_existing(log) as opened:
        name = choose_node(opened, node)
        key = find_peer(opened, name, peer)  # by index: the timeline needs no engine
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


def register(app: typer.Typer) -> None:
    app.command()(timeline)
