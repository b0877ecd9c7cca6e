"""`natrelay plot LOG [PEER] [--out FILE]`: a log as a picture (SVG, PNG or PDF, by the file's suffix).

With PEER: the peer's path over time, a lane each for direct, relay and no
path, its decisions marked (their seqs on hover in an SVG, the path changes
listed beside the plot). Without: the shares of the node's live peers that are
direct, relayed and without a path, over time. The series and the drawing live
in `natrelay.tools.plot_log`; matplotlib comes with the `sim` extra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from natrelay.eventlog.replay import rebuild
from natrelay.tools.cli.common import CliError, LogArg, NodeOpt, open_existing, out, require_extra
from natrelay.tools.inspect_log import choose_node, printable, resolve_peer


def _default_out(log: str, label: str) -> Path:
    stem = Path(log).stem if "://" not in log else (log.rstrip("/").rsplit("/", 1)[-1] or "log")
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stem}-{label}") + ".svg")


def plot(
    log: LogArg,
    peer: Annotated[
        str | None,
        typer.Argument(help="Public key, a unique prefix of it, or the peer's name (default: every peer)."),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="The picture: .svg (default, seqs on hover), .png or .pdf."),
    ] = None,
    node: NodeOpt = None,
) -> None:
    """Draw a peer's path over time, or the shares of peers direct / relayed / unconnected."""
    from natrelay.tools import plot_log

    if out_file is not None and out_file.suffix.lower() not in plot_log.FORMATS:
        raise CliError(
            f"--out {out_file}: the picture's suffix picks its format: {', '.join(plot_log.FORMATS)}"
        )
    require_extra("matplotlib", "sim", "plot")
    with open_existing(log) as opened:
        name = choose_node(opened, node)
        try:
            if peer is None:
                series = plot_log.shares(opened, name)
                target = out_file or _default_out(log, "peers")
                written = plot_log.draw_shares(series, target, f"{printable(log)}: node {printable(name)}")
                summary = f"{series.peers} peers"
            else:
                engine, _ = rebuild(opened, name)
                key = resolve_peer(engine, peer)
                paths = plot_log.peer_paths(opened, name, key)
                label = printable(paths.name) or key[:8]
                target = out_file or _default_out(log, label)
                title = f"{printable(log)}: peer {label} ({key[:12]}…)"
                written = plot_log.draw_peer(paths, target, title)
                changes = sum(1 for mark in paths.decisions if mark.changed_lane)
                summary = f"{len(paths.decisions)} decisions, {changes} path changes"
        except plot_log.PlotError as exc:
            raise CliError(str(exc)) from None
    out.print(f"wrote {written} ({summary})", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(plot)
