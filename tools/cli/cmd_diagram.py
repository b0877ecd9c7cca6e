"""`natrelay diagram`: the peer lifecycle as a mermaid state diagram."""

from __future__ import annotations

import typer

from natrelay.core import lifecycle


def diagram() -> None:
    """Print the peer lifecycle as a mermaid state diagram."""
    print(lifecycle.mermaid())


def register(app: typer.Typer) -> None:
    app.command()(diagram)
