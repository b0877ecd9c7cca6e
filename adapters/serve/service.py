"""The service's engines and its log: one engine per node, every append serialised.

Owns the contract `natrelay serve` keeps, the same as `adapters.node.Node`:
an observation is handled by its node's engine, then the observation and every
decision it caused are appended in one atomic batch, and only then is the
answer (decisions, commands, next deadline) returned. If the append fails,
nothing was logged: the engines that handled the observation are rebuilt from
the log and the error propagates.

What one process serving several nodes on one log adds:
- Every node of the log is loaded at start (and a new one on its first hello),
  attached to a connection or not. A relay observation (stream `relay/<id>`) is
  in every node's view (`eventlog.replay.node_view`), so every loaded node
  decides on it, and their decisions go into the same atomic batch, right
  after the observation. That is where `replay --verify` re-decides them.
  Commands for a node with no connection attached are dropped (counted); the
  engine's own deadlines turn the missed work into timeouts and retries.
- Appends carry the log's last seq as this service knows it
  (`EventLog.append(expected_last_seq=...)`): another writer in between makes
  the append fail with nothing written. The service then rolls the engines
  back, reads what the other writer appended, lets every loaded node decide on
  its relay observations (appending those decisions), and decides again.
- Group commit: `observe_many` decides a batch of requests (the server queues
  what every connection sent meanwhile) in order and appends it in one
  transaction; each observation stays atomic with its decisions, and the
  answers go out only after the commit.
Time enters only through events: nothing here reads a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from natrelay.core import lifecycle as lc
from natrelay.core.commands import Command
from natrelay.core.engine import Engine
from natrelay.core.events import Event, PolicySet, RelayEvent, stream_of
from natrelay.core.policy import Policy
from natrelay.eventlog import ConcurrencyError, EventLog
from natrelay.eventlog.replay import nodes_in, rebuild, save_snapshot

log = logging.getLogger(__name__)

#: Catch-up rounds against other writers before an observation is refused.
MAX_RETRIES = 8


@attrs.frozen
class Outcome:
    """One node's share of an appended batch."""

    node: str
    seq: int
    decisions: tuple[Event, ...]
    commands: tuple[Command, ...]
    now: int
    next_deadline: int | None


@attrs.define(eq=False)
class ServedNode:
    """A node's engine, and whether a connection speaks for it now."""

    name: str
    engine: Engine
    attached: bool = False
    observations_since_snapshot: int = 0
    dropped_commands: int = 0


#: Called with (outcome, cause) for every other node that decided on a relay observation.
PushHandler = Callable[[Outcome, Event], None]
#: A request's result: the requester's outcome, or why it was refused.
Result = Outcome | Exception
#: (after which request, the other node's outcome, the relay observation that caused it)
Push = tuple[int, Outcome, Event]
#: One decider's share of an observation: node, decisions, commands, now, next deadline.
Share = tuple[str, tuple[Event, ...], tuple[Command, ...], int, int | None]


class _EngineFailed(Exception):
    """An engine raised on a request of the batch (already answered with the error)."""


class Service:
    """Every node of one log, and the only path by which this process appends to it."""

    def __init__(self, log_: EventLog, *, snapshot_every: int | None = 10_000) -> None:
        self.log = log_
        self.snapshot_every = snapshot_every
        self.nodes: dict[str, ServedNode] = {}
        self.seen_seq = log_.last_seq()
        self.on_push: PushHandler | None = None
        self.observations = 0
        for name in nodes_in(log_):
            self._load(name)

    # ------------------------------------------------------------ nodes

    def _load(self, name: str) -> ServedNode:
        engine, _ = rebuild(self.log, name, until_seq=self.seen_seq)
        served = self.nodes[name] = ServedNode(name, engine)
        return served

    def attach(self, name: str, policy: Policy | None) -> tuple[ServedNode, bool]:
        """Bind a connection to node `name` (created if new); log its policy if new or changed.

        Returns the node and whether it was created. Raises `NodeInUse` if
        another connection holds it.
        """
        served = self.nodes.get(name)
        created = served is None
        if served is None:
            served = self._load(name)
        if served.attached:
            raise NodeInUse(name)
        if created or (policy is not None and policy != served.engine.policy):
            self.observe(name, PolicySet(at=served.engine.now, policy=policy or served.engine.policy))
        served.attached = True
        return served, created

    def detach(self, name: str) -> None:
        served = self.nodes.get(name)
        if served is not None:
            served.attached = False

    def peers(self, name: str) -> list[dict[str, Any]]:
        """Where the node's peers stand (what an agent restores its data plane from)."""
        engine = self.nodes[name].engine
        return [
            {"peer": key, "name": r.name, "state": r.state, "path": r.path, "session": r.session}
            for key, r in sorted(engine.peers.items())
            if r.state != lc.REMOVED
        ]

    # -------------------------------------------------------- observing

    def observe(self, name: str, event: Event) -> Outcome:
        """Decide, append atomically, return the node's outcome (pushes go to `on_push`)."""
        results, pushes = self.observe_many([(name, event)])
        for _position, outcome, cause in pushes:
            self._deliver(outcome, cause)
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    def observe_many(self, requests: Sequence[tuple[str, Event]]) -> tuple[list[Result], list[Push]]:
        """Group commit: decide every request in order, then append them all in one transaction.

        Each observation stays atomic with its decisions (the whole batch is
        stored or none of it). Returns, in request order, each requester's
        outcome or the exception that refused it (an engine failure refuses
        only its own request, the others are decided again without it; a
        failed append refuses them all), and the pushes for other attached
        nodes, each with the index of the request after whose answer it
        belongs.
        """
        results: list[Result | None] = [None] * len(requests)
        for _ in range(MAX_RETRIES * 2):
            live = [i for i, r in enumerate(results) if r is None]
            if not live:
                break
            try:
                planned = self._decide_and_append(requests, live, results)
            except ConcurrencyError:
                self._catch_up()
                continue
            except _EngineFailed:
                continue
            except Exception as exc:  # the append failed: nothing of the batch was logged
                for i in live:
                    results[i] = exc
                break
            pushes: list[Push] = []
            for i, seq, event, shares in planned:
                outcomes = [Outcome(name, seq, d, c, now, deadline) for name, d, c, now, deadline in shares]
                results[i] = outcomes[0]
                self.observations += 1
                for other in outcomes[1:]:
                    if not (other.decisions or other.commands):
                        continue
                    served = self.nodes[other.node]
                    if served.attached:
                        pushes.append((i, other, event))
                    else:
                        served.dropped_commands += len(other.commands)
            for name in dict.fromkeys(requests[i][0] for i in live):
                self._maybe_snapshot(name)
            return [r for r in results if r is not None], pushes
        failure = ConcurrencyError("(the whole log)", self.seen_seq, self.log.last_seq())
        return [failure if r is None else r for r in results], []

    def _decide_and_append(
        self, requests: Sequence[tuple[str, Event]], live: list[int], results: list[Result | None]
    ) -> list[tuple[int, int, Event, list[Share]]]:
        touched: dict[str, ServedNode] = {}
        items: list[tuple[str, Event]] = []
        plans: list[tuple[int, int, Event, list[Share]]] = []
        try:
            for i in live:
                name, event = requests[i]
                served = self.nodes[name]
                deciders = [served]
                if isinstance(event, RelayEvent):
                    deciders += [n for n in self.nodes.values() if n is not served]
                start = len(items)
                items.append((stream_of(event, name), event))
                shares: list[Share] = []
                for node in deciders:
                    touched[node.name] = node
                    try:
                        reaction = node.engine.handle(event)
                    except Exception as exc:  # an engine bug: refuse this request, decide the rest again
                        log.exception("the engine of node %s failed on %s", node.name, event.TYPE)
                        results[i] = exc
                        raise _EngineFailed from exc
                    items.extend((stream_of(d, node.name), d) for d in reaction.decisions)
                    shares.append(
                        (
                            node.name,
                            reaction.decisions,
                            reaction.commands,
                            node.engine.now,
                            node.engine.next_deadline(),
                        )
                    )
                plans.append((i, start, event, shares))
            stored = self.log.append(items, expected_last_seq=self.seen_seq)
        except BaseException:
            self._roll_back(list(touched.values()))
            raise
        self.seen_seq = stored[-1].seq
        return [(i, stored[start].seq, event, shares) for i, start, event, shares in plans]

    def _roll_back(self, nodes: list[ServedNode]) -> None:
        """Engines that handled what was not logged go back to the log's state."""
        for node in nodes:
            node.engine, _ = rebuild(self.log, node.name, until_seq=self.seen_seq)

    def _deliver(self, outcome: Outcome, cause: Event) -> None:
        served = self.nodes[outcome.node]
        if not (outcome.decisions or outcome.commands):
            return
        if not served.attached:
            served.dropped_commands += len(outcome.commands)
            return
        if self.on_push is not None:
            self.on_push(outcome, cause)

    def _catch_up(self) -> None:
        """Take in what other writers appended since `seen_seq`, deciding on their relay observations."""
        for _ in range(MAX_RETRIES):
            foreign = list(self.log.read_events(self.seen_seq + 1))
            if not foreign:
                return
            target = foreign[-1][0]
            items: list[tuple[str, Event]] = []
            decided: list[tuple[ServedNode, Any, Event]] = []
            rebuild_nodes: set[str] = set()
            for _seq, stream, event in foreign:
                if stream.startswith("relay/") and event.KIND == "observation":
                    for node in self.nodes.values():
                        reaction = node.engine.handle(event)
                        items.extend((stream_of(d, node.name), d) for d in reaction.decisions)
                        decided.append((node, reaction, event))
                else:
                    owner = stream.split("/")[1] if stream.startswith("node/") else None
                    if owner in self.nodes:
                        log.warning("another writer appended to node %s's stream %s", owner, stream)
                        rebuild_nodes.add(owner)
            try:
                stored = self.log.append(items, expected_last_seq=target) if items else []
            except ConcurrencyError:
                self._roll_back(list(self.nodes.values()))
                continue
            self.seen_seq = stored[-1].seq if stored else target
            for owner in rebuild_nodes:
                self.nodes[owner].engine, _ = rebuild(self.log, owner, until_seq=self.seen_seq)
            for node, reaction, cause in decided:
                if reaction.decisions or reaction.commands:
                    outcome = Outcome(
                        node.name,
                        self.seen_seq,
                        reaction.decisions,
                        reaction.commands,
                        node.engine.now,
                        node.engine.next_deadline(),
                    )
                    self._deliver(outcome, cause)
            return

    # -------------------------------------------------------- snapshots

    def _maybe_snapshot(self, name: str) -> None:
        served = self.nodes[name]
        served.observations_since_snapshot += 1
        if self.snapshot_every is not None and served.observations_since_snapshot >= self.snapshot_every:
            self.snapshot(name)

    def snapshot(self, name: str) -> None:
        served = self.nodes[name]
        if self.seen_seq:
            save_snapshot(self.log, name, served.engine, self.seen_seq)
        served.observations_since_snapshot = 0

    def snapshot_all(self) -> None:
        for name, served in self.nodes.items():
            if served.observations_since_snapshot:
                self.snapshot(name)


class NodeInUse(Exception):
    """Another connection serves this node now."""

    def __init__(self, node: str) -> None:
        self.node = node
        super().__init__(f"node {node!r} is served by another connection")
