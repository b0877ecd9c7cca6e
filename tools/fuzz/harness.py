"""Fuzzing harness: run a scenario of concrete steps through a real Node and check the log's truth.

Owns the *replayable* half of fuzzing, with no Hypothesis in it:
- a `Scenario` is a policy plus a list of concrete, JSON-able steps (an
  observation with its payload, time advancing by N ms, a snapshot, a crash
  and restart); it round-trips through a file, so a failure found by
  Hypothesis reproduces from the file alone (`natrelay fuzz --reproduce`);
- `World` is the network as the fuzzer sees it: it executes no I/O, it only
  remembers the commands the engine issued (attempts in flight, relay
  connects pending, sessions open, each peer's data-plane path) so that steps
  can answer them and invariants can check that nothing leaks;
- `Harness` drives a `Node` on a SQLite log in a directory, one step at a
  time, and `check()` asserts every invariant of docs/fuzzing.md, raising
  `InvariantViolation` with the invariant's name;
- `LogWatcher` is the independent model: it reads the log's new rows after
  each step and recomputes, *without the engine's projections*, each peer's
  lifecycle state (through the `transitions` Machine itself), its failed
  rounds since the last success, its open relay session and the freshness of
  its direct path.

It never chooses steps (that is `natrelay.tools.fuzz.machine`) and never edits the
log: everything it checks it reads back from the database.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import orjson

from natrelay.adapters.node import Node
from natrelay.core import codec
from natrelay.core import lifecycle as lc
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.engine import Engine
from natrelay.core.events import Event, PolicySet
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view, rebuild, verify

SCENARIO_FORMAT = 1
NODE = "fuzz"
#: Three peers, four endpoints, three relays: small enough that steps collide.
PEERS: tuple[str, ...] = tuple(base64.b64encode(bytes([i + 1]) * 32).decode() for i in range(3))
ENDPOINTS: tuple[str, ...] = ("10.0.0.1:51820", "10.0.0.2:51820", "192.0.2.7:4500", "[2001:db8::9]:51820")
#: An endpoint no peer announces: a handshake there is a roam or a wrong answer.
STRAY_ENDPOINT = "198.51.100.1:40000"
RELAYS: tuple[str, ...] = ("relay-a", "relay-b", "relay-c")
REGIONS: tuple[str, ...] = ("eu", "us")


class InvariantViolation(AssertionError):
    """An invariant failed after a step; `name` says which one."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"[{name}] {message}")


def _fail(name: str, message: str) -> None:
    raise InvariantViolation(name, message)


# --------------------------------------------------------------------- scenario


def observe_step(event: Event) -> dict[str, Any]:
    """The step that feeds `event` to the node."""
    return {"op": "observe", "type": event.TYPE, "payload": codec.to_payload(event)}


def event_of(step: dict[str, Any]) -> Event:
    """The observation an `observe` step feeds (scenario files carry the current schema)."""
    return codec.from_payload(step["type"], codec.EVENT_TYPES[step["type"]].VERSION, step["payload"])


@attrs.define
class Scenario:
    """A policy and the steps that ran under it: everything needed to reproduce a run."""

    policy: Policy
    steps: list[dict[str, Any]] = attrs.field(factory=list)
    #: Why it was saved (the invariant that failed), for people reading the file.
    failure: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": SCENARIO_FORMAT,
                "node": NODE,
                "policy": self.policy.to_dict(),
                "failure": self.failure,
                "steps": self.steps,
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes) -> Scenario:
        raw = orjson.loads(data)
        if raw.get("format") != SCENARIO_FORMAT:
            raise ValueError(f"unsupported scenario format {raw.get('format')!r}")
        return cls(Policy.from_dict(raw["policy"]), list(raw["steps"]), raw.get("failure"))

    def save(self, path: Path) -> None:
        path.write_bytes(self.to_json())

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.from_json(path.read_bytes())


# ------------------------------------------------------------------------ world


@attrs.define
class World:
    """The outside world as commands left it: what is in flight, open, and routed."""

    #: Every direct attempt the engine asked for, in order (answered or not).
    tries: list[TryDirectEndpoint] = attrs.field(factory=list)
    #: peer -> relay a connect was asked through and not yet answered or cancelled.
    connects: dict[str, str] = attrs.field(factory=dict)
    #: peer -> {(relay, session)} open in the world (established, not closed).
    sessions: dict[str, set[tuple[str, str]]] = attrs.field(factory=dict)
    #: peer -> (endpoint, relay) the data plane uses.
    paths: dict[str, tuple[str | None, str | None]] = attrs.field(factory=dict)
    issued_sessions: int = 0

    def execute(self, command: Command, now: int) -> None:
        if isinstance(command, TryDirectEndpoint):
            self.tries.append(command)
        elif isinstance(command, ConnectViaRelay):
            self.connects[command.peer] = command.relay
        elif isinstance(command, CloseRelaySession):
            if command.session is None:
                if self.connects.get(command.peer) == command.relay:
                    del self.connects[command.peer]
            else:
                held = self.sessions.get(command.peer, set())
                held.discard((command.relay, command.session))
                # The data plane leaves the relay only when its last session there closes.
                still_there = any(relay == command.relay for relay, _ in held)
                if self.paths.get(command.peer, (None, None))[1] == command.relay and not still_there:
                    self.paths.pop(command.peer, None)
        elif isinstance(command, SwitchPath):
            self.paths[command.peer] = (command.endpoint, command.relay)
        elif isinstance(command, ForgetPeer):
            self.paths.pop(command.peer, None)
            self.connects.pop(command.peer, None)

    def poll(self, now: int) -> list[Event]:
        return []

    def next_event_at(self) -> int | None:
        return None

    def session_up(self, peer: str, relay: str, session: str) -> None:
        """A relay reports a session: it is open in the world until closed."""
        if self.connects.get(peer) == relay:
            del self.connects[peer]
        self.sessions.setdefault(peer, set()).add((relay, session))

    def session_failed(self, peer: str, relay: str) -> None:
        if self.connects.get(peer) == relay:
            del self.connects[peer]

    def session_closed(self, peer: str, relay: str, session: str) -> None:
        self.sessions.get(peer, set()).discard((relay, session))


# ------------------------------------------------------------------ log watcher


class _Model:
    """A peer's lifecycle, moved by the `transitions` Machine itself."""

    state: str


@attrs.define
class PeerFacts:
    """What the log says about one peer, folded by the watcher (not by the engine)."""

    model: _Model
    candidates: tuple[str, ...] = ()
    access: str = "auto"
    failed_rounds: int = 0
    #: endpoint -> time of its latest direct success (the direct cache, independently).
    successes: dict[str, int] = attrs.field(factory=dict)
    #: Current path and the time of its latest handshake (direct_connected / relay_connected).
    path: str | None = None
    path_fresh_at: int | None = None
    session: tuple[str, str] | None = None
    #: Latest direct handshake on any endpoint.
    direct_seen: tuple[str, int] | None = None
    #: seq of the latest direct handshake the peer could use, and of entering the current state.
    direct_seen_seq: int = 0
    entered_seq: int = 0
    entered_at: int = 0
    lost_direct: tuple[str, int] | None = None
    #: Relays that ever carried the peer (a relay path selected through them).
    carried_by: set[str] = attrs.field(factory=set)


class LogWatcher:
    """Folds the log's new rows into an independent model and checks decisions as they come."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.machine = lc.build_machine(model=None)
        self.peers: dict[str, PeerFacts] = {}
        #: relay -> (load, expires_at), for announced relays
        self.relays: dict[str, tuple[int, int | None]] = {}
        self.last_seq = 0
        self.versions: dict[str, int] = {}
        self.now = 0
        self._observation: Event | None = None
        self._pending_observation: tuple[int, Event] | None = None
        self._rejected = False

    def catch_up(self, log: EventLog) -> list[tuple[int, Event]]:
        """Fold the rows appended since the last call; return the node's (seq, event) among them."""
        pending: list[tuple[int, Event]] = []
        for row in log.read(self.last_seq + 1):
            if row.seq != self.last_seq + 1:
                _fail("log.seq_gapless", f"seq {row.seq} follows seq {self.last_seq}")
            self.last_seq = row.seq
            version = self.versions.get(row.stream, 0) + 1
            if row.stream_version != version:
                _fail(
                    "log.stream_versions_gapless",
                    f"seq {row.seq}: stream {row.stream} at version {row.stream_version}, expected {version}",
                )
            self.versions[row.stream] = version
            view = node_view(NODE)
            if row.stream in view["streams"] or any(
                row.stream.startswith(p) for p in view["stream_prefixes"]
            ):
                pending.append((row.seq, row.decode()))
        for seq, event in pending:
            self._fold(seq, event)
        return pending

    def _fold(self, seq: int, event: Event) -> None:
        self.now = max(self.now, event.at)
        if event.KIND == "observation":
            self.flush_observation()
            self._observation = event
            self._rejected = False
            self._pending_observation = (seq, event)
            return
        if event.TYPE == "observation_rejected":
            if self._observation is None or event.observation != self._observation.TYPE:
                _fail("log.rejection_names_its_observation", f"seq {seq}: {event}")
            self._rejected = True
            return
        self._decided(seq, event)

    def flush_observation(self) -> None:
        """Apply the latest observation unless the engine rejected it.

        A rejection is always the first decision after its observation, so an
        observation is applied lazily: at its first decision, or at the next row.
        """
        pending = self._pending_observation
        self._pending_observation = None
        if pending is None or self._rejected:
            return
        self._apply_observation(*pending)

    def _facts(self, peer: str) -> PeerFacts:
        return self.peers[peer]

    def _apply_observation(self, seq: int, event: Event) -> None:
        kind = event.TYPE
        if kind == "policy_set":
            self.policy = event.policy  # type: ignore[attr-defined]
        elif kind == "peer_added":
            facts = self.peers.get(event.peer)  # type: ignore[attr-defined]
            if facts is None:
                model = _Model()
                self.machine.add_model(model)
                facts = self.peers[event.peer] = PeerFacts(model=model)  # type: ignore[attr-defined]
                facts.entered_seq, facts.entered_at = seq, event.at
            elif facts.model.state == lc.REMOVED:
                self._trigger(seq, event, facts)
            facts.candidates = event.candidates  # type: ignore[attr-defined]
            facts.access = event.access  # type: ignore[attr-defined]
        elif kind == "peer_removed":
            facts = self._facts(event.peer)  # type: ignore[attr-defined]
            self._trigger(seq, event, facts)
            facts.failed_rounds = 0
            facts.path = facts.path_fresh_at = facts.session = None
        elif kind == "candidates_updated":
            self._facts(event.peer).candidates = event.candidates  # type: ignore[attr-defined]
        elif kind == "handshake_observed":
            facts = self._facts(event.peer)  # type: ignore[attr-defined]
            endpoint, relay = event.endpoint, event.relay  # type: ignore[attr-defined]
            if endpoint is not None:
                facts.direct_seen = (endpoint, event.at)
                if facts.access != "relay_only":  # a relay-only peer ignores it, rightly
                    facts.direct_seen_seq = seq
                if facts.model.state == lc.DIRECT_CONNECTED and facts.path == endpoint:
                    facts.path_fresh_at = max(facts.path_fresh_at or 0, event.at)  # a late report is older
            elif facts.model.state == lc.RELAY_CONNECTED and facts.path == relay:
                facts.path_fresh_at = max(facts.path_fresh_at or 0, event.at)
        elif kind == "relay_announced":
            load, _ = self.relays.get(event.relay, (0, None))  # type: ignore[attr-defined]
            self.relays[event.relay] = (load, event.expires_at)  # type: ignore[attr-defined]
        elif kind == "relay_withdrawn":
            self.relays.pop(event.relay, None)  # type: ignore[attr-defined]
        elif kind == "relay_health_measured":
            if event.relay in self.relays:  # type: ignore[attr-defined]
                self.relays[event.relay] = (event.load, self.relays[event.relay][1])  # type: ignore[attr-defined]
        elif kind == "relay_session_closed":
            facts = self._facts(event.peer)  # type: ignore[attr-defined]
            facts.session = None

    def _trigger(self, seq: int, event: Event, facts: PeerFacts) -> None:
        before = facts.model.state
        trigger = lc.TRIGGER_OF_EVENT[event.TYPE]
        try:
            getattr(facts.model, trigger)()
        except Exception as exc:
            _fail(
                "lifecycle.machine_allows_every_decision",
                f"seq {seq}: {event.TYPE} fires {trigger!r} in state {before!r}, "
                f"which the transitions Machine refuses ({exc})",
            )
        if facts.model.state != before:
            facts.entered_seq, facts.entered_at = seq, event.at

    def _decided(self, seq: int, event: Event) -> None:
        self.flush_observation()
        facts = self._facts(event.peer)  # type: ignore[attr-defined]
        kind = event.TYPE
        if kind == "relay_eligibility_reached":
            self._check_eligibility(seq, facts)
        if kind == "relay_chosen":
            self._check_relay_choice(seq, event, facts)
        if kind == "direct_path_selected" and facts.access == "relay_only":
            _fail("policy.relay_only_never_direct", f"seq {seq}: a relay-only peer got a direct path")
        self._trigger(seq, event, facts)
        if kind == "direct_round_failed" and event.purpose == "connect":  # type: ignore[attr-defined]
            facts.failed_rounds += 1
        elif kind in ("direct_path_selected", "path_upgraded"):
            facts.failed_rounds = 0
            facts.successes[event.endpoint] = event.at  # type: ignore[attr-defined]
            facts.path, facts.path_fresh_at = event.endpoint, event.at  # type: ignore[attr-defined]
            facts.session = None
        elif kind == "relay_path_selected":
            facts.path, facts.path_fresh_at = event.relay, event.at  # type: ignore[attr-defined]
            facts.session = (event.relay, event.session)  # type: ignore[attr-defined]
            facts.carried_by.add(event.relay)  # type: ignore[attr-defined]
        elif kind == "path_lost":
            if event.path_kind == "direct":  # type: ignore[attr-defined]
                facts.lost_direct = (event.path, event.at)  # type: ignore[attr-defined]
            facts.path = facts.path_fresh_at = facts.session = None

    def _check_eligibility(self, seq: int, facts: PeerFacts) -> None:
        policy = self.policy
        if policy.mode != "direct_first" or facts.access != "auto":
            return
        if facts.failed_rounds >= policy.min_direct_attempts:
            return
        limit = self.now - policy.direct_cache_max_age_ms
        cached = [e for e, at in facts.successes.items() if at >= limit]
        if not facts.candidates and not cached:
            return  # nothing to try directly: a relay is the only way
        _fail(
            "policy.no_relay_before_threshold",
            f"seq {seq}: relay-eligible after {facts.failed_rounds} failed direct rounds "
            f"(direct-first, threshold {policy.min_direct_attempts})",
        )

    def _check_relay_choice(self, seq: int, event: Any, facts: PeerFacts) -> None:
        policy = self.policy
        if not policy.relays_enabled or facts.access == "direct_only":
            _fail(
                "policy.relays_only_when_allowed", f"seq {seq}: chose {event.relay} for {facts.access} peer"
            )
        found = self.relays.get(event.relay)
        if found is None:
            _fail("relay.chosen_is_announced", f"seq {seq}: chose {event.relay}, which is not announced")
            return
        load, expires_at = found
        if load > policy.max_relay_load:
            _fail(
                "relay.never_over_max_load",
                f"seq {seq}: chose {event.relay} at load {load} (max_relay_load {policy.max_relay_load})",
            )
        if expires_at is not None and expires_at <= event.at:
            _fail("relay.never_expired", f"seq {seq}: chose {event.relay}, expired at {expires_at}")
        # Relays that carried the peer before lead; the others follow by score, ties by id:
        # never by the order relays were announced in, a dict's order or an object's identity.
        others = [s for s in event.ranking if s.relay not in facts.carried_by]
        if others != sorted(others, key=lambda s: (-s.score, s.relay)):
            _fail(
                "relay.ranked_by_score_then_id",
                f"seq {seq}: ranking {[(s.relay, s.score) for s in others]} is not by score, then relay id",
            )


# ------------------------------------------------------------------- replay shadow


class ReplayShadow:
    """The replay invariants, kept step by step instead of from seq 0 after every step.

    Two engines run beside the live one, fed each new row of the node's view as it
    is appended: `folded` applies every event (what `rebuild` does from seq 0), and
    `redecider` handles only the observations and must take exactly the recorded
    decisions (what `verify` does). Fed the same rows in the same order, they reach
    the same verdicts as the full replays, at the cost of one step instead of the
    whole log; the harness still runs the full replays every `full_every` steps and
    at the end of a scenario.
    """

    def __init__(self) -> None:
        self.folded = Engine()
        self.redecider = Engine()
        self.produced: list[Event] = []
        self.position = 0
        self.observations = 0
        self.last_observation_seq: int | None = None

    def feed(self, seq: int, event: Event) -> None:
        self.folded.apply(event)
        if event.KIND == "observation":
            self.settle(seq)
            self.observations += 1
            self.last_observation_seq = seq
            if type(event) is PolicySet and self.observations == 1:
                self.redecider = Engine(event.policy)
            self.produced = list(self.redecider.handle(event).decisions)
            self.position = 0
            return
        got = self.produced[self.position] if self.position < len(self.produced) else None
        if got != event:
            _fail(
                "replay.verify_redecides_every_decision",
                f"seq {seq}: the log records {event.TYPE} but re-deciding gives "
                f"{got.TYPE if got is not None else 'nothing'}",
            )
        self.position += 1

    def settle(self, seq: int | None = None) -> None:
        """Every decision re-decided for the latest observation is in the log."""
        if self.position < len(self.produced):
            missing = self.produced[self.position]
            where = "the log ends" if seq is None else f"seq {seq} comes"
            _fail(
                "replay.verify_redecides_every_decision",
                f"after the observation at seq {self.last_observation_seq} the engine decides "
                f"{missing.TYPE}, but {where} before it",
            )


# ----------------------------------------------------------------------- harness


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
        elif op == "restart":
            self.restart()
            self.restored = True
        else:
            raise ValueError(f"unknown step {op!r}")

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
        watcher.flush_observation()
        self.shadow.settle()
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
                    if following is None or following.type in _OBSERVATION_TYPES:
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
        if state in lc.CONNECTED_STATES and not fresh_path:
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
        if not round_open and (probe is None or probe <= now or deadline is None or deadline > probe):
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


def steps_of(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [observe_step(e) for e in events]
