"""What deciding produces: the `Reaction` value, and `emit`, the one way a decision is taken.

Owns the reaction being built while one observation is decided: `emit` folds
the decision with `evolve` (so the next decision sees its consequences, as a
replay will) and appends it, with the commands that carry it out, to the
engine's buffers, which `decide.decide` turns into a `Reaction`.

This module must never change state except by folding the decision it emits,
and never decides anything itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .commands import Command
from .events import Event
from .evolve import evolve

if TYPE_CHECKING:
    from .engine import Engine


@attrs.frozen
class Reaction:
    """What one observation led to: decisions to append, commands to execute."""

    decisions: tuple[Event, ...]
    commands: tuple[Command, ...]


def emit(engine: Engine, decision: Event, *commands: Command) -> None:
    """Take a decision: fold it, and record it with its commands in the reaction being built."""
    evolve(engine, decision)
    engine._decisions.append(decision)
    engine._commands.extend(commands)
