"""The node loop: the shell that joins a network adapter, the log and the engine.

Owns the order of effects, which is what makes a node crash-safe:
1. an observation is handled by the engine (in memory),
2. the observation and the decisions it caused are appended to the log in one
   atomic batch — there is never an observation in the log without its
   decisions, nor a decision without its cause,
3. only then are the commands executed.
If the append fails, the engine is rebuilt from the log, so its state never
runs ahead of what was committed, and the error propagates.

The node snapshots its engine every `snapshot_every` observations (20,000 by
default), so `status`, `explain` and a restart read the newest snapshot plus a
short tail instead of the whole log.

`flush_every > 1` (the simulator's setting) batches several observations per
append and executes commands at once: faster, but a crash may lose the last
unflushed batch. The engine never reads a clock; the node passes the time.
"""

from __future__ import annotations

from collections.abc import Callable

from natrelay.core.engine import Reaction
from natrelay.core.events import Event, PolicySet, Tick, stream_of
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild, save_snapshot

from .network import NetworkAdapter

#: Observations between two automatic snapshots of the engine (None: never). Views and restarts
#: then fold at most this many observations (and their decisions) past the newest snapshot.
DEFAULT_SNAPSHOT_EVERY = 20_000


class Node:
    """One mesh node: its engine, its log, its network."""

    def __init__(
        self,
        log: EventLog,
        network: NetworkAdapter,
        *,
        node: str = "local",
        policy: Policy | None = None,
        flush_every: int = 1,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
        on_reaction: Callable[[Event, Reaction], None] | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.log = log
        self.network = network
        self.node = node
        self.flush_every = flush_every
        self.snapshot_every = snapshot_every
        self.on_reaction = on_reaction
        self.engine, self.last_seq = rebuild(log, node)
        self._pending: list[tuple[str, Event]] = []
        self._pending_observations = 0
        self._since_snapshot = 0
        self.appended = 0
        if policy is not None and (self.last_seq == 0 or policy != self.engine.policy):
            self.observe(PolicySet(at=self.engine.now, policy=policy))

    # ---------------------------------------------------------- observing

    def observe(self, observation: Event) -> Reaction:
        """Handle one observation: log it with its decisions, then execute the commands."""
        reaction = self.engine.handle(observation)
        node = self.node
        self._pending.append((stream_of(observation, node), observation))
        self._pending.extend((stream_of(d, node), d) for d in reaction.decisions)
        self._pending_observations += 1
        if self._pending_observations >= self.flush_every:
            self.flush()
        if self.on_reaction is not None:
            self.on_reaction(observation, reaction)
        now = self.engine.now
        for command in reaction.commands:
            self.network.execute(command, now)
        return reaction

    def flush(self) -> None:
        """Append what is buffered, atomically; on failure rebuild the engine from the log."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        observations, self._pending_observations = self._pending_observations, 0
        try:
            stored = self.log.append(batch)
        except Exception:
            self.engine, self.last_seq = rebuild(self.log, self.node)
            raise
        self.appended += len(stored)
        self.last_seq = stored[-1].seq
        self._since_snapshot += observations
        if self.snapshot_every is not None and self._since_snapshot >= self.snapshot_every:
            self.snapshot()

    def snapshot(self) -> None:
        """Store the engine's state at the last appended seq (flushes first)."""
        self.flush()
        # the log keeps the first of two identical snapshots at one seq (a no-op)
        if self.last_seq:
            save_snapshot(self.log, self.node, self.engine, self.last_seq)
        self._since_snapshot = 0

    # --------------------------------------------------------------- time

    def next_wakeup(self) -> int | None:
        """The earliest time the node has something to do."""
        times = [t for t in (self.engine.next_deadline(), self.network.next_event_at()) if t is not None]
        return min(times) if times else None

    def advance(self, now: int) -> None:
        """Feed the adapter's observations up to `now`, then a Tick if a timer is due."""
        for observation in self.network.poll(now):
            self.observe(observation)
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline <= now:
            self.observe(Tick(at=now))

    def run_until(self, end: int) -> None:
        """Discrete-event loop for simulated adapters: jump from event to event until `end`."""
        while True:
            wake = self.next_wakeup()
            if wake is None or wake > end:
                break
            self.advance(max(wake, self.engine.now))
        self.flush()
