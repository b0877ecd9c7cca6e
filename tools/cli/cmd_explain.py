"""`natrelay explain LOG PEER`: in plain words, why the peer is on its path, each line citing a seq."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from natrelay.tools.cli.common import LogArg, NodeOpt, open_existing, out, printable
from natrelay.tools.inspect_log import LookupError_, choose_node, explain_lines
from natrelay.tools.views import find_peer, view_engine


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
        key = find_peer(opened, name, peer)
        engine, _ = view_engine(opened, name)
        if key not in engine.peers:
            raise LookupError_(f"no peer {peer!r} in this log")
        lines = explain_lines(opened, name, key, engine, full=full)
    label = engine.peers[key].name
    out.print(f"peer {key}{f' ({escape(printable(label))})' if label else ''}")
    for line in lines:
        out.print(escape(line), soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(explain)
