"""`natrelay fleet LOG`: the fleet report (tools/fleet.py) as tables or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from natrelay.tools.fleet import fleet_report
from natrelay.tools.inspect_log import seconds, short


def register(app: typer.Typer) -> None:
    app.command(name="fleet")(fleet)


def fleet(
    log: Annotated[str, typer.Argument(help="The shared log: a SQLite file or a PostgreSQL URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    stuck: Annotated[int, typer.Option(help="How many peers stuck on a relay to list.")] = 10,
) -> None:
    """Relays ranked across nodes, direct success by NAT pair, and peers stuck on relays."""
    from natrelay.tools.cli.common import open_existing

    with open_existing(log) as opened:
        report = fleet_report(opened, stuck_limit=stuck)
    if as_json:
        print(json.dumps(report.as_json()))
        return
    out = Console(highlight=False)
    out.print(f"{len(report.nodes)} node(s): {escape(', '.join(report.nodes))}")
    relays = Table(title="relays, most reliable first")
    for column in ("relay", "region", "reliability", "sessions ok/failed", "RTT", "load", "peers now"):
        relays.add_column(column)
    for r in report.relays:
        reliability = "-" if r.reliability is None else f"{r.reliability:.1%}"
        rtt = "-" if r.rtt_ms is None else f"{r.rtt_ms} ms"
        relays.add_row(
            escape(r.relay),
            escape(r.region),
            reliability,
            f"{r.sessions_ok}/{r.sessions_failed}",
            rtt,
            f"{r.load}%",
            str(r.peers_now),
        )
    out.print(relays)
    matrix = Table(title="direct-path success by NAT pair (node NAT → peer NAT)")
    for column in ("node NAT", "peer NAT", "peers", "direct", "share"):
        matrix.add_column(column)
    for cell in report.matrix:
        matrix.add_row(cell.node_nat, cell.peer_nat, str(cell.peers), str(cell.direct), f"{cell.share:.0%}")
    out.print(matrix)
    stuck_table = Table(title="peers on a relay the longest")
    for column in ("node", "peer", "name", "relay", "relayed for"):
        stuck_table.add_column(column)
    for s in report.stuck:
        stuck_table.add_row(
            escape(s.node), short(s.peer), escape(s.name), escape(s.relay), seconds(s.relayed_for_ms)
        )
    out.print(stuck_table)
