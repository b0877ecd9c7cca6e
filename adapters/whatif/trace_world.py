"""The trace-driven world: a recorded run behind the `NetworkAdapter` interface.

Owns answering the engine's commands from a `Trace`, and saying how each answer
was found. Exogenous observations come at their recorded time, in their
recorded order. A command is answered:

- `recorded`: the same command at the same time was given in the recorded run:
  its recorded answer, at its recorded time (a replay of the recorded policy
  therefore reproduces the recorded run, decision by decision);
- `nearby`: the nearest recorded answer to the same question (the same peer's
  endpoint or relay) in the same network epoch of the peer (between two
  visible changes: join, leave, new candidates), shifted to the new time;
- `extrapolated`: the log never answered it, and the world applies a model:

  * an endpoint the recorded run never tried (for this peer in this epoch):
    its answer in the nearest other epoch if it was tried there, else no
    answer (`MODEL_UNTRIED_ENDPOINT`);
  * a relay this peer never got an answer from: the relay's median setup time
    over the other peers' sessions (or, for a relay nobody used, 1.5 times its
    measured round trip: allocate, bind, first handshake), and failing after
    `RELAY_FAIL_MS` while the log shows it down (`MODEL_UNUSED_RELAY`).

Hard-NAT attempts are answered in the same three ways by `world_hard_nat`
(`MODEL_UNTRIED_HARD_NAT`: an attempt never made so meets nobody).

A direct path in use renews its handshake every 120 s while the evidence says
it works (the nearest renewal, missing renewal, answer or silence of that
endpoint); a relay path while its session is open. Relay sessions close when
the log shows the relay going down (all sessions) or a session of that peer
closing. Silences and unsolicited handshakes (roaming) reach the peer when it
is on the path they were recorded on (silences) or on a direct path (roaming).
"""

from __future__ import annotations

import bisect
import heapq
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    StartHardNatAttempt,
    StopHardNatAttempt,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import (
    DirectAttemptTimedOut,
    Event,
    HandshakeObserved,
    PolicySet,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
)
from natrelay.core.policy import Policy

from .trace import RENEW_EVERY_MS, Attempt, Connect, Fact, Trace
from .world_hard_nat import HardNatAnswers

#: A connect to a relay the log shows down fails after this long (a TURN allocate timing out).
RELAY_FAIL_MS = 3_000
#: Queue position of answers the recorded run did not have (after recorded ones at the same ms).
_LATE = 1 << 62

MODEL_UNTRIED_ENDPOINT = (
    "an endpoint never tried in the peer's epoch answers as it did in the nearest other epoch, "
    "else not at all"
)
MODEL_UNUSED_RELAY = (
    "a relay the peer never got an answer from sets up in the median time of its sessions to other peers "
    f"(a relay nobody used: 1.5 x its measured RTT), and fails after {RELAY_FAIL_MS} ms while the log "
    "shows it down"
)
SOURCES = ("recorded", "nearby", "extrapolated")


class TraceWorld:
    """A `NetworkAdapter` answering from a trace; `policy` replaces the recorded one (None: keep)."""

    def __init__(self, trace: Trace, policy: Policy | None = None) -> None:
        self.trace = trace
        self._queue: list[tuple[int, int, int, str, Any]] = []
        self._order = 0
        #: How each answer was found: (kind, source) -> count; per peer, extrapolated answers.
        self.answers: Counter[tuple[str, str]] = Counter()
        self.extrapolated_by_peer: Counter[str] = Counter()
        self.policy_changes_ignored = 0
        self._plane: dict[str, tuple[tuple[str, str], int]] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._sessions: dict[tuple[str, str], str] = {}
        self._session_count = 0
        self._relay_rtt: dict[str, int] = {}
        self._timeouts = trace.reports_timeouts
        self._hard = HardNatAnswers(self, trace)
        first_policy = True
        for seq, event in trace.exogenous:
            if isinstance(event, PolicySet) and policy is not None:
                if first_policy:
                    event = PolicySet(at=event.at, policy=policy)
                    first_policy = False
                else:
                    self.policy_changes_ignored += 1
                    continue
            self._push(event.at, seq, "event", event)
        if policy is not None and first_policy:
            self._push(0, 0, "event", PolicySet(at=0, policy=policy))
        for closure in trace.closures:
            self._push(closure.at, closure.seq, "closure", closure)
        for at, seq, handshake in trace.unsolicited:
            self._push(at, seq, "unsolicited", handshake)
        for at, seq, silence, plane in trace.silences:
            self._push(at, seq, "silence", (silence, plane))
        self._out: list[Event] = []

    # -- the adapter interface ---------------------------------------------------

    def execute(self, command: Command, now: int) -> None:
        if type(command) is TryDirectEndpoint:
            self._try_direct(command, now)
        elif type(command) is ConnectViaRelay:
            self._connect(command, now)
        elif type(command) is SwitchPath:
            if command.endpoint is not None:
                self._set_plane(command.peer, ("direct", command.endpoint), now)
            elif command.relay is not None:
                self._set_plane(command.peer, ("relay", command.relay), now)
        elif type(command) is CloseRelaySession:
            self._close(command.peer, command.relay, now)
        elif type(command) is ForgetPeer:
            for peer, relay in [key for key in self._sessions if key[0] == command.peer]:
                self._close(peer, relay, now)
            for peer, relay in [key for key in self._pending if key[0] == command.peer]:
                del self._pending[(peer, relay)]
            self._set_plane(command.peer, None, now)
            self._hard.stop(command.peer, now)
        elif type(command) is StartHardNatAttempt:
            self._hard.start(command, now)
        elif type(command) is StopHardNatAttempt:
            self._hard.stop(command.peer, now)

    def poll(self, now: int) -> Sequence[Event]:
        queue = self._queue
        while queue and queue[0][0] <= now:
            at, _anchor, _order, kind, payload = heapq.heappop(queue)
            _HANDLERS[kind](self, at, payload)
        out, self._out = self._out, []
        return out

    def next_event_at(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    # -- bookkeeping -------------------------------------------------------------

    def _push(self, at: int, anchor: int | None, kind: str, payload: Any) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at, _LATE if anchor is None else anchor, self._order, kind, payload))

    def _count(self, kind: str, source: str, peer: str) -> None:
        self.answers[(kind, source)] += 1
        if source == "extrapolated":
            self.extrapolated_by_peer[peer] += 1

    def _set_plane(self, peer: str, plane: tuple[str, str] | None, now: int) -> None:
        current = self._plane.get(peer)
        if (None if current is None else current[0]) == plane:
            return
        if plane is None:
            self._plane.pop(peer, None)
            return
        self._plane[peer] = (plane, now)
        self._push(now + RENEW_EVERY_MS, None, "renew", (peer, plane, now))

    def _close(self, peer: str, relay: str, now: int) -> None:
        self._pending.pop((peer, relay), None)
        self._sessions.pop((peer, relay), None)
        current = self._plane.get(peer)
        if current is not None and current[0] == ("relay", relay):
            self._set_plane(peer, None, now)

    # -- direct attempts -----------------------------------------------------------

    def _try_direct(self, command: TryDirectEndpoint, now: int) -> None:
        peer = command.peer
        warm = peer in self._plane
        entry, source = self._nearest_attempt(peer, command.endpoint, now, command.deadline, warm)
        self._count("direct", source, peer)
        if entry is not None and entry.answered_at is not None and entry.reached is not None:
            exact = source == "recorded"
            latency = entry.answered_at - entry.at
            if not exact and entry.warm != warm:
                latency = self._latency(peer, command.endpoint, warm, latency)
            at = now + latency
            # shifted in time, the answer needs the endpoint it came from to work then
            if at <= command.deadline and (exact or self._works(peer, entry.reached, at, True, count=False)):
                handshake = HandshakeObserved(at=at, peer=peer, endpoint=entry.reached)
                self._push(at, entry.seq if exact else None, "event", handshake)
                return
        if self._timeouts:
            key = (peer, command.endpoint, command.attempt)
            anchor = self.trace.timeouts.get(key) if source == "recorded" else None
            timed_out = DirectAttemptTimedOut(
                at=command.deadline, peer=peer, endpoint=command.endpoint, attempt=command.attempt
            )
            self._push(command.deadline, anchor, "event", timed_out)

    def _nearest_attempt(
        self, peer: str, endpoint: str, now: int, deadline: int, warm: bool
    ) -> tuple[Attempt | None, str]:
        """The recorded attempt to answer from.

        The same attempt if it was made; else, in the peer's epoch, the nearer in time of the
        nearest answered attempt (tried the same way if there is one: with or without a session
        up) and the nearest unanswered attempt tried the same way that waited at least as long
        (a shorter wait says nothing of a longer one; a probe over a session is one packet);
        else the nearest attempt in another epoch (extrapolated).
        """
        entries = self.trace.attempts.get((peer, endpoint), [])
        if not entries:
            return None, "extrapolated"
        times = [entry.at for entry in entries]
        index = bisect.bisect_left(times, now)
        while index < len(entries) and entries[index].at == now:
            if entries[index].deadline == deadline:
                return entries[index], "recorded"
            index += 1

        def distance(entry: Attempt) -> tuple[int, bool]:
            return abs(entry.at - now), entry.at > now

        epoch = self.trace.epoch(peer, now)
        same = [entry for entry in entries if self.trace.epoch(peer, entry.at) == epoch]
        if not same:
            return min(entries, key=distance), "extrapolated"
        answered = [entry for entry in same if entry.answered_at is not None]
        alike = [entry for entry in answered if entry.warm == warm] or answered
        silent = [
            entry
            for entry in same
            if entry.answered_at is None
            and entry.warm == warm
            and entry.deadline - entry.at >= deadline - now
        ]
        found = [min(group, key=distance) for group in (alike, silent) if group]
        if not found:
            return min(same, key=distance), "nearby"
        return min(found, key=lambda entry: (distance(entry), entry.answered_at is None)), "nearby"

    def _latency(self, peer: str, endpoint: str, warm: bool, fallback: int) -> int:
        """A recorded answer time of the endpoint tried with (warm) or without a session up."""
        for entry in self.trace.attempts.get((peer, endpoint), ()):
            if entry.warm == warm and entry.answered_at is not None:
                return entry.answered_at - entry.at
        return fallback

    # -- relays --------------------------------------------------------------------

    def _connect(self, command: ConnectViaRelay, now: int) -> None:
        peer, relay, deadline = command.peer, command.relay, command.deadline
        entries = self.trace.connects.get((peer, relay), [])
        self._pending[(peer, relay)] = token = self._order + 1
        exact = next((c for c in entries if c.at == now and c.deadline == deadline), None)
        not_before = now
        if exact is not None:
            if exact.outcome in ("established", "failed"):
                assert exact.answered_at is not None
                self._push(
                    exact.answered_at, exact.seq, "relay_answer", (peer, relay, token, exact, "recorded")
                )
                return
            if exact.outcome == "silent":
                self._count("relay", "recorded", peer)
                return
            # closed unanswered at answered_at: nothing came until then; after that, the model
            not_before = (exact.answered_at or now) + 1
        answer, source = self._model_connect(command, now, entries)
        if answer is None:
            self._count("relay", source, peer)
            return
        at = max(now + _took(answer), not_before)
        self._push(at, None, "relay_answer", (peer, relay, token, answer, source))

    def _model_connect(
        self, command: ConnectViaRelay, now: int, entries: list[Connect]
    ) -> tuple[Connect | None, str]:
        """What a connect the log has no exact answer for comes to: (answer or None, source)."""
        peer, relay, deadline = command.peer, command.relay, command.deadline
        if self._down(relay, now):
            failures = [c for c in self.trace.relay_connects.get(relay, ()) if c.outcome == "failed"]
            took = statistics.median_low([_took(c) for c in failures]) if failures else RELAY_FAIL_MS
            failed = Connect(now, peer, relay, deadline, "failed", now + took, reason="unreachable")
            return failed, ("nearby" if failures else "extrapolated")
        usable = [c for c in entries if not self._down(relay, c.at)]
        if usable:
            nearest = min(usable, key=lambda c: (abs(c.at - now), c.at > now))
            if nearest.outcome in ("established", "failed"):
                return self._shifted(nearest, now), "nearby"
            if _took(nearest) >= deadline - now:
                return None, "nearby"  # it did not answer within as long a wait
            answered = [c for c in usable if c.outcome in ("established", "failed")]
            if answered:
                nearest = min(answered, key=lambda c: (abs(c.at - now), c.at > now))
                return self._shifted(nearest, now), "nearby"
        others = [c for c in self.trace.relay_connects.get(relay, ()) if c.outcome == "established"]
        if others:
            took = statistics.median_low([_took(c) for c in others])
        else:
            took = round(1.5 * self._relay_rtt.get(relay, 100))
        return Connect(now, peer, relay, deadline, "established", now + took), "extrapolated"

    @staticmethod
    def _shifted(recorded: Connect, now: int) -> Connect:
        return attrs.evolve(recorded, at=now, answered_at=now + _took(recorded), seq=None)

    def _down(self, relay: str, at: int) -> bool:
        return any(start <= at and (end is None or at < end) for start, end in self.trace.down.get(relay, ()))

    def _on_relay_answer(self, at: int, payload: tuple[str, str, int, Connect, str]) -> None:
        peer, relay, token, answer, source = payload
        if self._pending.get((peer, relay)) != token:
            return  # cancelled meanwhile
        del self._pending[(peer, relay)]
        self._count("relay", source, peer)
        exact = source == "recorded"
        if answer.outcome == "failed":
            reason = answer.reason or "failed"
            self._out.append(RelaySessionFailed(at=at, peer=peer, relay=relay, reason=reason))
            return
        if not exact and self._down(relay, at):
            # the relay went down while the connect was in flight
            self._out.append(RelaySessionFailed(at=at, peer=peer, relay=relay, reason="relay went down"))
            return
        session = answer.session if exact else None
        if session is None:
            self._session_count += 1
            session = f"{relay}-whatif{self._session_count}"
        self._sessions[(peer, relay)] = session
        self._out.append(RelaySessionEstablished(at=at, peer=peer, relay=relay, session=session))

    # -- exogenous and path events -------------------------------------------------------

    def _on_event(self, at: int, event: Event) -> None:
        if isinstance(event, RelayHealthMeasured):
            self._relay_rtt[event.relay] = event.rtt_ms
        self._out.append(event)

    def _on_closure(self, at: int, closure: Any) -> None:
        if closure.peer is None:
            keys = sorted(key for key in self._sessions if key[1] == closure.relay)
        else:
            keys = [(closure.peer, closure.relay)] if (closure.peer, closure.relay) in self._sessions else []
        for peer, relay in keys:
            session = self._sessions.pop((peer, relay))
            self._out.append(
                RelaySessionClosed(at=at, peer=peer, relay=relay, session=session, reason=closure.reason)
            )

    def _on_unsolicited(self, at: int, event: HandshakeObserved) -> None:
        """A handshake nobody asked for: through a relay, if that session is open here too; direct
        (the peer roamed, or renewed off the 120 s beat, as a real agent sees it), on a direct path."""
        if event.relay is not None:
            if (event.peer, event.relay) in self._sessions:
                self._out.append(event)
            return
        current = self._plane.get(event.peer)
        if current is not None and current[0][0] == "direct":
            self._out.append(event)

    def _on_silence(self, at: int, payload: tuple[Any, tuple[str, str] | None]) -> None:
        silence, plane = payload
        current = self._plane.get(silence.peer)
        if current is not None and current[0] == plane:
            self._out.append(silence)

    def _on_renew(self, at: int, payload: tuple[str, tuple[str, str], int]) -> None:
        peer, plane, since = payload
        current = self._plane.get(peer)
        if current is None or current != (plane, since):
            return
        self._push(at + RENEW_EVERY_MS, None, "renew", payload)
        if plane[0] == "relay":
            if (peer, plane[1]) in self._sessions and self._works(peer, "relay:" + plane[1], at, True):
                self._emit_renewal(
                    at, peer, "relay:" + plane[1], HandshakeObserved(at=at, peer=peer, relay=plane[1])
                )
            return
        if self._works(peer, plane[1], at):
            self._emit_renewal(at, peer, plane[1], HandshakeObserved(at=at, peer=peer, endpoint=plane[1]))

    def _emit_renewal(self, at: int, peer: str, key: str, event: HandshakeObserved) -> None:
        seq = self.trace.renewals.get((peer, key, at))
        if seq is None:
            self._out.append(event)
        else:
            # the recorded renewal keeps its recorded place among the events of that ms
            self._push(at, seq, "event", event)

    def _works(self, peer: str, key: str, at: int, default: bool = False, *, count: bool = True) -> bool:
        """Whether the peer's path `key` (an endpoint, or "relay:<id>") works at `at`, by the evidence."""
        works, source = self._fact(peer, key, at, default)
        if count:
            self._count("path", source, peer)
        return works

    def _fact(self, peer: str, key: str, at: int, default: bool) -> tuple[bool, str]:
        """The fact at `at` itself, else the latest before it in the epoch, else the next in the
        epoch, else the nearest in another epoch, else `default` (the last two extrapolated)."""
        facts: list[Fact] = self.trace.facts.get((peer, key), [])
        if not facts:
            return default, "extrapolated"
        times = [fact.at for fact in facts]
        index = bisect.bisect_right(times, at)
        if index and facts[index - 1].at == at:
            return facts[index - 1].works, "recorded"
        epoch = self.trace.epoch(peer, at)
        before = facts[index - 1] if index else None
        if before is not None and self.trace.epoch(peer, before.at) == epoch:
            return before.works, "nearby"
        after = facts[index] if index < len(facts) else None
        if after is not None and self.trace.epoch(peer, after.at) == epoch:
            return after.works, "nearby"
        return (before or after).works, "extrapolated"  # type: ignore[union-attr]


def _took(connect: Connect) -> int:
    return (connect.answered_at or connect.at) - connect.at


_HANDLERS: dict[str, Any] = {
    "event": TraceWorld._on_event,
    "relay_answer": TraceWorld._on_relay_answer,
    "closure": TraceWorld._on_closure,
    "unsolicited": TraceWorld._on_unsolicited,
    "silence": TraceWorld._on_silence,
    "renew": TraceWorld._on_renew,
    "hard_met": lambda world, at, payload: world._hard.on_met(at, payload),
}
