"""Fuzzing harness: run a scenario of concrete steps through a real Node and check the log's truth.

Owns `Harness`, which drives a `Node` on a SQLite log in a directory, one step
at a time, and whose `check()` asserts every invariant of docs/fuzzing.md,
raising `InvariantViolation` with the invariant's name. The scenario and the
world live in `scenario`, the independent log model in `watcher`, the
step-by-step replay engines in `shadow`; their names are re-exported here.

It never chooses steps (that is `natrelay.tools.fuzz.machine`) and never edits the
log: everything it checks it reads back from the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from natrelay.adapters.node import Node
from natrelay.core import codec
from natrelay.core import lifecycle as lc
from natrelay.core.engine import Engine
from natrelay.core.events import Event
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view, rebuild, verify

from .shadow import DecisionFollower, ReplayShadow, engine_facts
from .steps import (
    ENDPOINTS,
    NODE,
    PEERS,
    REGIONS,
    RELAYS,
    SCENARIO_FORMAT,
    STRAY_ENDPOINT,
    InvariantViolation,
    Scenario,
    World,
    _fail,
    event_of,
    observe_step,
    steps_of,
)
from .watcher import LogWatcher, PeerFacts

__all__ = [
    "ENDPOINTS",
    "NODE",
    "PEERS",
    "REGIONS",
    "RELAYS",
    "SCENARIO_FORMAT",
    "STRAY_ENDPOINT",
    "Harness",
    "InvariantViolation",
    "LogWatcher",
    "PeerFacts",
    "ReplayShadow",
    "Scenario",
    "World",
    "event_of",
    "observe_step",
    "replay_scenario",
    "steps_of",
]


class Harness:
    """A Node on a fresh SQLite log, driven one concrete step at a time."""

    def __init__(
        self, directory: Path, policy: Policy, *, db_name: str = "fuzz.db", full_every: int = 10
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / db_name
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists: a scenario starts on a fresh log")
        self.scenario = Scenario(policy)
        self.now = 0
        self.world = World()
        self.log = self._open()
        self.node = Node(self.log, self.world, node=NODE, policy=policy)
        self.watcher = LogWatcher(policy)
        self.shadow = ReplayShadow()
        #: The full replays (rebuild from seq 0, snapshot plus tail, verify) run every
        #: `full_every` checks and at `finish()`; the shadow covers the steps between.
        self.full_every = full_every
        self.checks = 0
        self.snapshots = 0
        #: A snapshot or restart happened since the last check: compare snapshot plus tail now.
        self.restored = False
        #: The reaction to the latest step's observations (for step-level checks).
        self.last_ticks: list[tuple[int, int]] = []
        #: Engines restored at the latest snapshots, following the live node's decisions.
        self.followers: list[DecisionFollower] = []

    def _clock(self) -> int:
        # Recorded time follows the scenario's clock, so a log is a pure function of its steps.
        return self.now

    def _open(self) -> EventLog:
        return EventLog.open(str(self.path), clock=self._clock)

    @property
    def engine(self) -> Any:
        return self.node.engine

    # --- steps -------------------------------------------------------------

    def run(self, step: dict[str, Any]) -> None:
        """Execute one concrete step and record it in the scenario."""
        self.scenario.steps.append(step)
        self.last_ticks = []
        op = step["op"]
        if op == "observe":
            event = event_of(step)
            self.now = max(self.now, event.at)
            self._observe(event)
        elif op == "advance":
            self.now += int(step["by"])
            before = self.node.last_seq
            self.node.advance(self.now)
            if self.node.last_seq != before:
                self.last_ticks.append((before, self.node.last_seq))
        elif op == "snapshot":
            self.node.snapshot()
            self.snapshots += 1
            self.restored = True
            self._follow_restores()
        elif op == "restart":
            live = self.engine
            self.restart()
            self.restored = True
            self._compare_restored(live, self.engine, "a restart (snapshot plus tail)")
        else:
            raise ValueError(f"unknown step {op!r}")

    def _compare_restored(self, live: Engine, restored: Engine, how: str) -> None:
        left, right = engine_facts(restored), engine_facts(live)
        if left != right:
            _fail("replay.restored_engine_equals_live", f"{how}: " + _diff(left, right, "restored", "live"))

    def _follow_restores(self) -> None:
        """Restore the engine two ways at this seq; both must decide like the live node from now on."""
        live, seq = self.engine, self.node.last_seq
        restored = Engine.from_state(orjson.loads(orjson.dumps(live.state())))
        self._compare_restored(live, restored, "Engine.from_state(state())")
        tail, _ = rebuild(self.log, NODE, use_snapshot=True)
        self._compare_restored(live, tail, "snapshot plus tail")
        self.followers = [
            *self.followers[-2:],
            DecisionFollower(restored, seq, "Engine.from_state(state())"),
            DecisionFollower(tail, seq, "snapshot plus tail"),
        ]

    def _observe(self, event: Event) -> None:
        kind = event.TYPE
        if kind == "relay_session_established":
            self.world.session_up(event.peer, event.relay, event.session)  # type: ignore[attr-defined]
        elif kind == "relay_session_failed":
            self.world.session_failed(event.peer, event.relay)  # type: ignore[attr-defined]
        elif kind == "relay_session_closed":
            self.world.session_closed(event.peer, event.relay, event.session)  # type: ignore[attr-defined]
        self.node.observe(event)

    def observe(self, event: Event) -> None:
        self.run(observe_step(event))

    def restart(self) -> None:
        """The node crashes (its memory is gone) and a new one resumes from the same file.

        The new node gets a new log object (no cached stream heads, no buffered
        batch) and rebuilds its engine from the database; only SQLAlchemy's
        connection pool to the file survives, which holds no state of natrelay's:
        opening the file again would cost more than the rest of a step and prove
        nothing the eventlog tests do not.
        """
        self.log = EventLog(self.log.engine, location=self.log.location, clock=self._clock)
        self.node = Node(self.log, self.world, node=NODE, policy=self.scenario.policy)

    def close(self) -> None:
        self.log.close()

    # --- invariants --------------------------------------------------------

    def check(self, *, full: bool | None = None) -> None:
        """Every invariant of docs/fuzzing.md; raises InvariantViolation on the first that fails.

        The replay invariants come from the shadow engines after every step; `full`
        (default: every `full_every` checks) also replays the whole log from seq 0.
        """
        watcher = self.watcher
        for seq, event in watcher.catch_up(self.log):
            self.shadow.feed(seq, event)
            for follower in self.followers:
                follower.feed(seq, event)
        watcher.settle()
        self.shadow.settle()
        for follower in self.followers:
            follower.settle()
        self._check_ticks()
        self.checks += 1
        live = self.engine.state()
        folded = self.shadow.folded.state()
        if self.restored and self.snapshots:
            tail, _ = rebuild(self.log, NODE, use_snapshot=True)
            if tail.state() != folded:
                _fail("replay.snapshot_plus_tail_equals_full", _diff(tail.state(), folded, "snap", "full"))
        self.restored = False
        if folded != live:
            _fail("replay.rebuild_equals_live", _diff(folded, live, "rebuilt", "live"))
        if full if full is not None else self.checks % self.full_every == 0:
            self._check_full_replays(live)
        for key in sorted(watcher.peers):
            self._check_peer(key, watcher.peers[key])
        watcher.oracle.check_wakeup(self.node.next_wakeup(), self.engine.now)

    def finish(self) -> None:
        """The end of a scenario: every invariant, with the full replays from seq 0."""
        self.check(full=True)

    def _check_full_replays(self, live: dict[str, Any]) -> None:
        full, _ = rebuild(self.log, NODE, use_snapshot=False)
        if full.state() != live:
            _fail("replay.rebuild_equals_live", _diff(full.state(), live, "rebuilt", "live"))
        if self.snapshots:
            tail, _ = rebuild(self.log, NODE, use_snapshot=True)
            if tail.state() != full.state():
                _fail(
                    "replay.snapshot_plus_tail_equals_full", _diff(tail.state(), full.state(), "snap", "full")
                )
        result = verify(self.log, NODE)
        if not result.ok:
            assert result.divergence is not None
            _fail("replay.verify_redecides_every_decision", result.divergence.message)

    def _check_ticks(self) -> None:
        for before, after in self.last_ticks:
            rows = list(self.log.read(before + 1, after))
            for index, row in enumerate(rows):
                if row.type == "tick":
                    following = rows[index + 1] if index + 1 < len(rows) else None
                    idle = following is None or following.type in _OBSERVATION_TYPES
                    if idle and not self.watcher.oracle.cache_aged_out_by(row.at):
                        _fail(
                            "timers.no_idle_wakeups",
                            f"seq {row.seq}: the engine asked to be woken at {row.at} and then "
                            f"had nothing to decide",
                        )

    def _check_peer(self, key: str, facts: PeerFacts) -> None:
        engine, policy, now = self.engine, self.engine.policy, self.engine.now
        record = engine.peers.get(key)
        state = facts.model.state
        if record is None or record.state != state:
            _fail(
                "lifecycle.engine_agrees_with_machine",
                f"peer {key[:8]}: the Machine fed from the log says {state!r}, "
                f"the engine says {None if record is None else record.state!r}",
            )
        assert record is not None
        if state not in lc.STATES:
            _fail("lifecycle.one_known_state", f"peer {key[:8]} in unknown state {state!r}")
        # attempts projection against the log
        if engine.attempts.attempts(key) != facts.failed_rounds:
            _fail(
                "attempts.count_equals_failed_rounds_since_success",
                f"peer {key[:8]}: engine counts {engine.attempts.attempts(key)}, "
                f"the log shows {facts.failed_rounds} failed connect rounds since the last success",
            )
        # relay_connected exactly when the relay cache holds an open session
        session = engine.relay_cache.open_session(key)
        if (state == lc.RELAY_CONNECTED) != (session is not None):
            _fail(
                "relay_cache.open_session_iff_relay_connected",
                f"peer {key[:8]} is {state} and the relay cache holds session {session}",
            )
        if state == lc.RELAY_CONNECTED and (session != facts.session or record.path != session[0]):
            _fail("relay_cache.session_matches_log", f"peer {key[:8]}: {session} vs log {facts.session}")
        # direct_connected exactly when a fresh direct handshake exists
        fresh_path = (
            facts.path_fresh_at is not None and facts.path_fresh_at + policy.handshake_freshness_ms > now
        )
        # Stale by the clock is allowed only until the Tick the engine asked for: another
        # peer's observation may move the clock past the expiry before that Tick comes.
        expiry = None if facts.path_fresh_at is None else facts.path_fresh_at + policy.handshake_freshness_ms
        deadline = engine.next_deadline()
        awaited = expiry is not None and deadline is not None and deadline <= expiry
        if state in lc.CONNECTED_STATES and not fresh_path and not awaited:
            _fail(
                "paths.connected_only_while_fresh",
                f"peer {key[:8]} is {state} on {facts.path} but its latest handshake there is from "
                f"{facts.path_fresh_at} (now {now}, limit {policy.handshake_freshness_ms} ms)",
            )
        unconnected = state in (lc.PENDING, lc.DIRECT_TRYING, lc.RELAY_ELIGIBLE)
        if unconnected and facts.access != "relay_only" and facts.direct_seen is not None:  # noqa: SIM102
            if facts.direct_seen_seq > facts.entered_seq:
                _fail(
                    "paths.fresh_direct_handshake_is_used",
                    f"peer {key[:8]} is {state} although a direct handshake answered on "
                    f"{facts.direct_seen[0]} after it entered that state",
                )
        if state == lc.RELAY_CONNECTED and policy.upgrade_enabled and facts.access != "relay_only":
            self._check_relayed(key, facts, record)
        self._check_world(key, state, record)

    def _check_relayed(self, key: str, facts: PeerFacts, record: Any) -> None:
        engine, policy, now = self.engine, self.engine.policy, self.engine.now
        seen = facts.direct_seen
        if seen is not None and seen[1] >= facts.entered_at and seen[1] + policy.handshake_freshness_ms > now:
            held_until = seen[1]
            if facts.lost_direct is not None and facts.lost_direct[0] == seen[0]:
                held_until = max(held_until, facts.lost_direct[1] + policy.switch_hysteresis_ms)
            if held_until <= now:
                _fail(
                    "paths.relayed_peer_upgrades",
                    f"peer {key[:8]} stays relayed although {seen[0]} answered directly at {seen[1]} "
                    f"(now {now})",
                )
        limit = now - policy.direct_cache_max_age_ms
        has_endpoints = bool(facts.candidates) or any(at >= limit for at in facts.successes.values())
        if not has_endpoints:
            return
        round_open = engine.attempts.open_round(key) is not None
        probe = record.next_probe_at
        deadline = engine.next_deadline()
        # A probe already due is scheduled as long as the engine awaits a Tick by then: another
        # peer's observation may move the clock past it before that Tick comes (as for freshness).
        if not round_open and (probe is None or deadline is None or deadline > probe):
            _fail(
                "paths.relayed_peer_has_upgrade_probe",
                f"peer {key[:8]} is relayed with no upgrade probe scheduled "
                f"(next probe {probe}, next deadline {deadline}, now {now})",
            )

    def _check_world(self, key: str, state: str, record: Any) -> None:
        world = self.world
        open_sessions = world.sessions.get(key, set())
        if len(open_sessions) > 1:
            _fail("paths.never_two_active_paths", f"peer {key[:8]} holds sessions {sorted(open_sessions)}")
        if state == lc.RELAY_CONNECTED:
            if open_sessions != {(record.path, record.session)}:
                _fail(
                    "paths.world_matches_relay_path",
                    f"peer {key[:8]} relayed via {record.path}/{record.session}, world holds {open_sessions}",
                )
        elif open_sessions:
            _fail("paths.never_two_active_paths", f"peer {key[:8]} is {state} yet holds {open_sessions}")
        if state in lc.CONNECTED_STATES:
            expected = (record.path, None) if state == lc.DIRECT_CONNECTED else (None, record.path)
            if world.paths.get(key) != expected:
                _fail(
                    "paths.data_plane_follows_decisions",
                    f"peer {key[:8]} is {state} on {record.path}; the data plane uses {world.paths.get(key)}",
                )
        pending = world.connects.get(key)
        if pending is not None and (state != lc.RELAY_ELIGIBLE or record.relay_pending != pending):
            _fail(
                "paths.no_leaked_relay_connects",
                f"peer {key[:8]} is {state} (pending {record.relay_pending}) "
                f"yet a connect via {pending} is open",
            )


_VIEW = node_view(NODE)
_OBSERVATION_TYPES = frozenset(cls.TYPE for cls in codec.EVENT_TYPES.values() if cls.KIND == "observation")


def _diff(left: dict[str, Any], right: dict[str, Any], lname: str, rname: str) -> str:
    """The first differing path between two engine states, for a readable failure."""

    def walk(a: Any, b: Any, where: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    return f"{where}.{k}: only in {'left' if k in a else 'right'}"
                found = walk(a[k], b[k], f"{where}.{k}")
                if found:
                    return found
            return None
        if a != b:
            return f"{where}: {lname}={a!r} {rname}={b!r}"
        return None

    return walk(left, right, "state") or "states differ"


def replay_scenario(scenario: Scenario, directory: Path, *, check: bool = True) -> Harness:
    """Run every step of `scenario` on a fresh log in `directory`, checking after each step.

    Returns the harness (closed if nothing failed); an invariant that fails
    raises `InvariantViolation` with the harness's log left on disk.
    """
    harness = Harness(directory, scenario.policy)
    try:
        if check:
            harness.check()
        for step in scenario.steps:
            harness.run(step)
            if check:
                harness.check()
        if check:
            harness.finish()
    finally:
        harness.close()
    return harness
