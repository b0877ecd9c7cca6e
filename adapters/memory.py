"""A tiny in-memory network for tests and the built-in demo: scripted answers, no NAT model.

Each peer endpoint either answers a direct attempt after a latency or never
does; each relay either establishes a session after a latency or fails. It is
deterministic and has no clock: the node loop passes `now`. The NAT simulator
is a separate, much richer adapter (`adapters.sim`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import attrs

from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import (
    Event,
    HandshakeObserved,
    RelaySessionEstablished,
    RelaySessionFailed,
)

#: WireGuard renews a handshake every 2 minutes while traffic flows (REKEY_AFTER_TIME).
REKEY_AFTER_MS = 120_000


@attrs.define
class MemoryNetwork:
    """Scripted reachability: which endpoints answer, which relays work, and how fast."""

    #: (peer, endpoint) -> handshake latency in ms, for endpoints that answer.
    answering: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: relay -> session setup latency in ms, for relays that work.
    relays: dict[str, int] = attrs.field(factory=dict)
    #: Renew handshakes on established paths (keeps paths fresh, as WireGuard traffic does).
    keepalive: bool = True
    executed: list[Command] = attrs.field(factory=list)
    _queue: list[tuple[int, int, Event, bool]] = attrs.field(factory=list)
    _order: int = 0
    _paths: dict[str, tuple[str | None, str | None]] = attrs.field(factory=dict)
    _sessions: int = 0

    def _later(self, at: int, event: Event, renewal: bool = False) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at, self._order, event, renewal))

    def execute(self, command: Command, now: int) -> None:
        self.executed.append(command)
        if isinstance(command, TryDirectEndpoint):
            latency = self.answering.get((command.peer, command.endpoint))
            if latency is not None and now + latency < command.deadline:
                self._later(
                    now + latency,
                    HandshakeObserved(at=now + latency, peer=command.peer, endpoint=command.endpoint),
                )
        elif isinstance(command, ConnectViaRelay):
            latency = self.relays.get(command.relay)
            if latency is None:
                self._later(
                    now + 50,
                    RelaySessionFailed(at=now + 50, peer=command.peer, relay=command.relay, reason="refused"),
                )
            else:
                self._sessions += 1
                self._later(
                    now + latency,
                    RelaySessionEstablished(
                        at=now + latency,
                        peer=command.peer,
                        relay=command.relay,
                        session=f"s{self._sessions}",
                    ),
                )
        elif isinstance(command, SwitchPath):
            self._paths[command.peer] = (command.endpoint, command.relay)
            if self.keepalive:
                self._renew(command.peer, now)
        elif isinstance(command, ForgetPeer):
            self._paths.pop(command.peer, None)
        elif isinstance(command, CloseRelaySession):
            current = self._paths.get(command.peer)
            if current is not None and current[1] == command.relay:
                self._paths.pop(command.peer, None)

    def _renew(self, peer: str, now: int) -> None:
        endpoint, relay = self._paths[peer]
        at = now + REKEY_AFTER_MS
        self._later(at, HandshakeObserved(at=at, peer=peer, endpoint=endpoint, relay=relay), renewal=True)

    def poll(self, now: int) -> Sequence[Event]:
        ready: list[Event] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, event, renewal = heapq.heappop(self._queue)
            if renewal:
                assert isinstance(event, HandshakeObserved)
                if self._paths.get(event.peer) != (event.endpoint, event.relay):
                    continue  # the path this renewal kept alive is gone
                self._renew(event.peer, event.at)
            ready.append(event)
        return ready

    def next_event_at(self) -> int | None:
        return self._queue[0][0] if self._queue else None
