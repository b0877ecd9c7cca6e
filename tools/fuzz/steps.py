"""Fuzzing scenarios: the names a scenario uses, its concrete steps, and the world its commands leave.

Owns the *replayable* half of fuzzing that carries no checks:
- the fixed cast of a scenario (peers, endpoints, relays, regions) and the
  `InvariantViolation` every check raises with the invariant's name;
- a `Scenario` is a policy plus a list of concrete, JSON-able steps (an
  observation with its payload, time advancing by N ms, a snapshot, a crash
  and restart); it round-trips through a file, so a failure found by
  Hypothesis reproduces from the file alone (`natrelay fuzz --reproduce`);
- `World` is the network as the fuzzer sees it: it executes no I/O, it only
  remembers the commands the engine issued (attempts in flight, relay
  connects pending, sessions open, each peer's data-plane path) so that steps
  can answer them and invariants can check that nothing leaks.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import orjson

from natrelay.core import codec
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import Event
from natrelay.core.policy import Policy

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


def steps_of(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [observe_step(e) for e in events]
