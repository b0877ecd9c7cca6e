"""`natrelay agent`: run one mesh node (engine, log, WireGuard, TURN relays) until Ctrl-C.

This module owns only the command line of the agent: parsing options, configuring
logging, and turning configuration errors into a message and exit status 2. The loop
itself is `natrelay.adapters.mesh.agent`. `register(app)` adds the command to the main
`natrelay` typer app; `python -m natrelay.tools.cli.cmd_agent` runs it on its own.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from natrelay.adapters.mesh.agent import run_agent
from natrelay.adapters.mesh.agent_config import ConfigError, load_config
from natrelay.adapters.mesh.turn_relay import TurnError
from natrelay.adapters.mesh.wireguard import WireGuardError
from natrelay.eventlog import EventLogError


def agent(
    interface: Annotated[str, typer.Option("--interface", "-i", help="WireGuard interface to drive")],
    log_url: Annotated[str, typer.Option("--log", help="event log: a file path or database URL")],
    config: Annotated[Path, typer.Option("--config", "-c", help="the node's TOML configuration")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every step")] = False,
) -> None:
    """Run this node's mesh agent until Ctrl-C (or SIGTERM); a restart resumes from the log."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        cfg = load_config(config)
        asyncio.run(run_agent(cfg, interface, log_url))
    except (ConfigError, TurnError) as exc:
        typer.echo(f"natrelay agent: {exc}", err=True)
        raise typer.Exit(2) from None
    except (WireGuardError, EventLogError) as exc:
        typer.echo(f"natrelay agent: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add `agent` to the `natrelay` command line."""
    app.command("agent")(agent)


def main() -> None:
    app = typer.Typer(add_completion=False)
    register(app)

    @app.callback()
    def _root() -> None:
        """natrelay agent (standalone entry point)."""

    app()


if __name__ == "__main__":
    main()
