"""Running a policy against a trace-driven world: the node loop, without a log.

Owns the counterfactual run: the same discrete-event loop as `Node.run_until`
(observations of the world up to the next wake-up, then a `Tick` if a timer is
due; commands executed right after the decision that gave them), feeding an
engine directly and keeping every event in memory, numbered as the log would
number them for a single-node log. Nothing is written anywhere.
"""

from __future__ import annotations

import attrs

from natrelay.core.engine import Engine
from natrelay.core.events import Event, Tick
from natrelay.core.policy import Policy

from .trace import Trace
from .trace_world import TraceWorld


@attrs.frozen
class Run:
    """What a policy did in the trace-driven world."""

    policy: Policy | None
    #: Every event in order: observations, each followed by the decisions it caused.
    events: tuple[Event, ...]
    #: For each event, the index of the observation that caused it (itself for observations).
    causes: tuple[int, ...]
    world: TraceWorld


def run(trace: Trace, policy: Policy | None = None, *, end: int | None = None) -> Run:
    """Run `policy` (None: the recorded policies, as recorded) from the trace's start to its end."""
    world = TraceWorld(trace, policy)
    engine = Engine(policy)
    events: list[Event] = []
    causes: list[int] = []
    stop = trace.end if end is None else end

    def observe(observation: Event) -> None:
        reaction = engine.handle(observation)
        cause = len(events)
        events.append(observation)
        causes.append(cause)
        events.extend(reaction.decisions)
        causes.extend([cause] * len(reaction.decisions))
        now = engine.now
        for command in reaction.commands:
            world.execute(command, now)

    while True:
        deadline = engine.next_deadline()
        pending = world.next_event_at()
        times = [t for t in (deadline, pending) if t is not None]
        if not times or min(times) > stop:
            break
        now = max(min(times), engine.now)
        for observation in world.poll(now):
            observe(observation)
        deadline = engine.next_deadline()
        if deadline is not None and deadline <= now:
            observe(Tick(at=now))
    return Run(policy, tuple(events), tuple(causes), world)
