"""The interface every network adapter implements: WireGuard, TURN, simulator, in-memory.

An adapter executes the engine's commands and reports what happened as
observations stamped with their time. It never decides anything: the engine
does. Real adapters return None from `next_event_at` (their observations
arrive when they arrive); simulated ones return the time of their next
scheduled observation so a discrete-event loop can jump to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from natrelay.core.commands import Command
from natrelay.core.events import Event


@runtime_checkable
class NetworkAdapter(Protocol):
    """What the node loop needs from the outside world."""

    def execute(self, command: Command, now: int) -> None:
        """Carry out `command` issued at time `now` (never blocks for long)."""

    def poll(self, now: int) -> Sequence[Event]:
        """Observations that happened at or before `now`, oldest first."""

    def next_event_at(self) -> int | None:
        """When the next observation is due, if the adapter knows (simulations)."""
