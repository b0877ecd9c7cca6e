"""`natrelay whatif LOG`: replay a recorded mesh under another policy, or tune one on a grid (--sweep).

Owns the command's options and output; the comparison is tools/whatif.py, the
sweep tools/whatif_sweep.py, the trace-driven world adapters/whatif/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from natrelay.adapters.policy_file import PolicyFileError, load_policy
from natrelay.adapters.whatif.trace import TraceError, read_trace
from natrelay.core.presets import PRESETS
from natrelay.tools.cli.common import CliError, LogArg, NodeOpt, open_existing, out
from natrelay.tools.inspect_log import choose_node


def register(app: typer.Typer) -> None:
    """Add `whatif` to the natrelay command line."""

    @app.command()
    def whatif(
        log: LogArg,
        policy: Annotated[
            str | None,
            typer.Option(
                "--policy", help=f"The alternative: a preset ({', '.join(PRESETS)}) or a TOML policy file."
            ),
        ] = None,
        sweep: Annotated[
            list[str] | None,
            typer.Option("--sweep", help="key=v1,v2,... a policy field and its values; repeat for a grid."),
        ] = None,
        node: NodeOpt = None,
        base: Annotated[
            str | None,
            typer.Option("--base", help="Sweep around this policy (default: the recorded one)."),
        ] = None,
        out_dir: Annotated[
            Path, typer.Option("--out", help="Where the sweep writes its PNG and suggested policy.")
        ] = Path("natrelay-whatif"),
        peers: Annotated[
            int, typer.Option("--peers", help="Peers in the per-peer table (0: none, -1: all).")
        ] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
    ) -> None:
        """What if the node had run another policy? Counterfactual replay of a recorded log."""
        if (policy is None) == (not sweep):
            raise CliError("give exactly one of --policy NAME|FILE or --sweep key=v1,v2,...")
        try:
            alternative = load_policy(policy) if policy is not None else None
            base_policy = load_policy(base) if base is not None else None
        except PolicyFileError as exc:
            raise CliError(str(exc)) from None
        with open_existing(log) as opened:
            name = choose_node(opened, node)
            try:
                trace = read_trace(opened, name)
            except TraceError as exc:
                raise CliError(f"{log}: {exc}") from None
        if alternative is not None:
            from natrelay.tools.whatif import render, report_json, what_if

            result = what_if(trace, alternative)
            if as_json:
                sys.stdout.write(json.dumps(report_json(result), indent=2) + "\n")
                return
            render(result, out, peers=peers)
            return
        from natrelay.tools.whatif_sweep import SweepError, parse_grid, render_sweep, run_sweep, sweep_json

        console = Console(stderr=True)
        try:
            grid = parse_grid(sweep or [])
            result = run_sweep(trace, grid, base=base_policy, out_dir=out_dir, console=console, quiet=as_json)
        except SweepError as exc:
            raise CliError(str(exc)) from None
        if as_json:
            sys.stdout.write(json.dumps(sweep_json(result), indent=2) + "\n")
            return
        render_sweep(result, out)
