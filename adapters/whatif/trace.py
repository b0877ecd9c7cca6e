"""A recorded run as evidence: what happened outside the engine, and what each command came to.

Owns reading one node's view of a log into a `Trace`. The recorded
observations are fed once more to an engine (with the recorded policies), which
gives back the exact commands the recorded run executed; each observation is
then sorted into one of:

- exogenous: peers joining, leaving, changing candidates; relays announced,
  measured, withdrawn; the node's own NAT and policy; rejected input. A
  counterfactual run sees these unchanged, at their recorded time and order;
- an answer to a command: a direct handshake to an attempt in flight (which
  endpoint was tried, how long after, which endpoint answered, and whether a
  session was already up, which makes a probe one round trip), a relay session
  established or failed (how fast), or the silence of an attempt that got no
  answer by its deadline; a hard-NAT attempt's meeting, or none
  (adapters/whatif/world_hard_nat.py keeps those);
- a renewal: the handshake WireGuard renews every 120 s on the path in use
  (REKEY_AFTER_TIME) — and a renewal that did not come, which says that path
  was dead at that moment;
- a path event: a relay session closed under the peer (a relay going down
  closes all of them at once), a path falling silent, a handshake nobody
  asked for (a peer roaming to a new address).

Everything is keyed by peer and endpoint or relay, with the seq it was
recorded at, so the trace-driven world can answer the same command at the
same time exactly as recorded, and other commands from the nearest evidence.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

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
from natrelay.core.engine import Engine
from natrelay.core.events import (
    CandidatesUpdated,
    DirectAttemptTimedOut,
    Event,
    HandshakeObserved,
    HardNatPairMet,
    PathSilent,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAnnounced,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayWithdrawn,
    Tick,
)
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_events

from .world_hard_nat import Punch, new_punches, note_command, note_met

#: WireGuard renews a handshake this often on a path in use (REKEY_AFTER_TIME).
RENEW_EVERY_MS = 120_000

#: Observations the engine's commands cause; every other observation is exogenous.
_ANSWERS = (
    HandshakeObserved,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelaySessionClosed,
    DirectAttemptTimedOut,
    PathSilent,
    Tick,
    HardNatPairMet,
)


class TraceError(ValueError):
    """The log cannot be read as a trace (nothing recorded for the node, no policy)."""


@attrs.define
class Attempt:
    """A recorded direct attempt: to `endpoint` at `at`, and what came of it."""

    at: int
    peer: str
    endpoint: str
    deadline: int
    #: A path to the peer was up when it was tried (a probe over a session is one round trip).
    warm: bool
    answered_at: int | None = None
    #: The endpoint the handshake came from (NATs may answer from another port).
    reached: str | None = None
    seq: int | None = None


@attrs.define
class Connect:
    """A recorded relay connect: to the peer through `relay` at `at`, and what came of it."""

    at: int
    peer: str
    relay: str
    deadline: int
    #: "established", "failed", "cancelled" (closed before any answer) or "silent".
    outcome: str = "silent"
    answered_at: int | None = None
    session: str | None = None
    reason: str = ""
    seq: int | None = None


@attrs.frozen
class Closure:
    """A relay session closed under a peer, or a whole relay going down (`peer` None)."""

    at: int
    seq: int
    relay: str
    peer: str | None
    reason: str


@attrs.frozen
class Fact:
    """The peer's path at `key` (an endpoint) worked, or did not, at `at`."""

    at: int
    works: bool
    seq: int | None


@attrs.define
class Trace:
    """One node's recorded run, as evidence for a trace-driven world."""

    node: str
    #: Every event of the node's view, (seq, event), in order.
    recorded: list[tuple[int, Event]]
    #: (seq, event) of the exogenous observations, in order.
    exogenous: list[tuple[int, Event]]
    attempts: dict[tuple[str, str], list[Attempt]]
    connects: dict[tuple[str, str], list[Connect]]
    #: relay -> its connects, all peers, by time.
    relay_connects: dict[str, list[Connect]]
    #: (peer, endpoint or "relay:<id>") -> facts by time: renewals, missing renewals, answers, silences.
    facts: dict[tuple[str, str], list[Fact]]
    #: (peer, path key, at) -> seq of a renewal handshake ("relay:<id>" keys relay paths).
    renewals: dict[tuple[str, str, int], int]
    #: Handshakes nobody asked for: (at, seq, event).
    unsolicited: list[tuple[int, int, HandshakeObserved]]
    closures: list[Closure]
    #: relay -> [(down_from, up_again or None)].
    down: dict[str, list[tuple[int, int | None]]]
    #: (at, seq, event, recorded path) of silences.
    silences: list[tuple[int, int, PathSilent, tuple[str, str] | None]]
    #: (peer, endpoint, attempt) -> seq of a recorded DirectAttemptTimedOut.
    timeouts: dict[tuple[str, str, int], int]
    #: peer -> times its network visibly changed (joined, left, new candidates).
    epochs: dict[str, list[int]]
    end: int
    policies: list[PolicySet]
    #: Re-deciding the recorded observations gave the recorded decisions (as `verify`).
    verified: bool
    #: Peers the log shows losing handshakes: an attempt went unanswered while the endpoint
    #: it reaches worked. Which handshakes another run would lose, no log can say.
    lossy: frozenset[str] = frozenset()
    #: peer -> its hard-NAT attempts by time, each with its meeting (adapters/whatif/world_hard_nat.py).
    punches: dict[str, list[Punch]] = attrs.Factory(dict)

    @property
    def reports_timeouts(self) -> bool:
        return bool(self.timeouts)

    def epoch(self, peer: str, at: int) -> int:
        return bisect.bisect_right(self.epochs.get(peer, ()), at)


def read_trace(log: EventLog, node: str, *, to_seq: int | None = None) -> Trace:
    """The trace of `node`'s view of `log` (up to `to_seq`)."""
    return build_trace(node, node_events(log, node, 1, to_seq))


def build_trace(node: str, events: Iterable[tuple[int, str, Event]]) -> Trace:
    """The trace of a node's events given as (seq, stream, event) in seq order."""
    builder = _Builder(node)
    for seq, _stream, event in events:
        builder.take(seq, event)
    return builder.finish()


class _Builder:
    """Sorts the recorded observations while re-deciding them for the commands they caused."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.engine = Engine()
        self.recorded: list[tuple[int, Event]] = []
        self.exogenous: list[tuple[int, Event]] = []
        self.attempts: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
        self.in_flight: dict[str, list[Attempt]] = defaultdict(list)
        self.connects: dict[tuple[str, str], list[Connect]] = defaultdict(list)
        self.relay_connects: dict[str, list[Connect]] = defaultdict(list)
        self.pending: dict[tuple[str, str], Connect] = {}
        self.closed: dict[tuple[str, str], Connect] = {}
        self.facts: dict[tuple[str, str], list[Fact]] = defaultdict(list)
        self.renewals: dict[tuple[str, str, int], int] = {}
        self.unsolicited: list[tuple[int, int, HandshakeObserved]] = []
        self.closures: list[Closure] = []
        self.down: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
        self.silences: list[tuple[int, int, PathSilent, tuple[str, str] | None]] = []
        self.timeouts: dict[tuple[str, str, int], int] = {}
        self.epochs: dict[str, list[int]] = defaultdict(list)
        self.punches = new_punches()
        #: peer -> (plane, since): the data plane as the recorded commands set it.
        self.plane: dict[str, tuple[tuple[str, str], int]] = {}
        self.policies: list[PolicySet] = []
        self.expected_decisions: list[Event] = []
        self.verified = True
        self.end = 0
        self.first_policy = True

    # -- one event -------------------------------------------------------------

    def take(self, seq: int, event: Event) -> None:
        self.recorded.append((seq, event))
        self.end = max(self.end, event.at)
        if event.KIND == "decision":
            if not self.expected_decisions or self.expected_decisions.pop(0) != event:
                self.verified = False
            return
        if self.expected_decisions:
            self.verified = False
            self.expected_decisions = []
        if isinstance(event, PolicySet):
            self.policies.append(event)
            if self.first_policy and len(self.recorded) == 1:
                self.engine = Engine(event.policy)  # as the node began (what `verify` does)
            self.first_policy = False
        if not isinstance(event, _ANSWERS):
            self.exogenous.append((seq, event))
            self._exogenous(event)
        else:
            self._answer(seq, event)
        reaction = self.engine.handle(event)
        self.expected_decisions = list(reaction.decisions)
        now = self.engine.now
        for command in reaction.commands:
            self._command(command, now)

    def _exogenous(self, event: Event) -> None:
        if isinstance(event, PeerAdded | PeerRemoved | CandidatesUpdated):
            self.epochs[event.peer].append(event.at)
        if isinstance(event, PeerRemoved):
            self._set_plane(event.peer, None, event.at)
        elif isinstance(event, RelayAnnounced):
            spans = self.down.get(event.relay)
            if spans and spans[-1][1] is None:
                spans[-1] = (spans[-1][0], event.at)
        elif isinstance(event, RelayWithdrawn):
            self._relay_down(event.relay, event.at)

    def _relay_down(self, relay: str, at: int) -> None:
        spans = self.down[relay]
        if not spans or spans[-1][1] is not None:
            spans.append((at, None))

    def _answer(self, seq: int, event: Event) -> None:
        if isinstance(event, HandshakeObserved):
            self._handshake(seq, event)
        elif isinstance(event, RelaySessionEstablished | RelaySessionFailed):
            connect = self.pending.pop((event.peer, event.relay), None)
            if connect is None:
                # closed at this very ms, after the network had already answered
                connect = self.closed.pop((event.peer, event.relay), None)
                if connect is None or connect.answered_at is None or connect.answered_at < event.at:
                    return  # nobody asked: the engine rejects it, the world never sends it
            connect.answered_at, connect.seq = event.at, seq
            if isinstance(event, RelaySessionEstablished):
                connect.outcome, connect.session = "established", event.session
            else:
                connect.outcome, connect.reason = "failed", event.reason
                if "down" in event.reason or "unreachable" in event.reason:
                    self._relay_down(event.relay, connect.at)
        elif isinstance(event, RelaySessionClosed):
            wide = "relay down" in event.reason
            self.closures.append(
                Closure(event.at, seq, event.relay, None if wide else event.peer, event.reason)
            )
            if wide:
                self._relay_down(event.relay, event.at)
        elif isinstance(event, DirectAttemptTimedOut):
            self.timeouts[(event.peer, event.endpoint, event.attempt)] = seq
        elif isinstance(event, PathSilent):
            current = self.plane.get(event.peer)
            plane = None if current is None else current[0]
            self.silences.append((event.at, seq, event, plane))
            if plane is not None and plane[0] == "direct":
                self.facts[(event.peer, plane[1])].append(Fact(event.at, False, seq))
        elif isinstance(event, HardNatPairMet) and note_met(self.punches, seq, event):
            self.facts[(event.peer, event.endpoint)].append(Fact(event.at, True, seq))  # the pair worked

    def _handshake(self, seq: int, event: HandshakeObserved) -> None:
        peer, at = event.peer, event.at
        if event.endpoint is not None:
            flying = [a for a in self.in_flight[peer] if a.at <= at <= a.deadline and a.answered_at is None]
            chosen = next((a for a in flying if a.endpoint == event.endpoint), None)
            if chosen is None:
                chosen = next(
                    (a for a in flying if self._answered_before(a.peer, a.endpoint, event.endpoint)), None
                )
            if chosen is None and flying:
                chosen = flying[0]
            if chosen is not None:
                chosen.answered_at, chosen.reached, chosen.seq = at, event.endpoint, seq
                self.facts[(peer, event.endpoint)].append(Fact(at, True, seq))
                return
            key = event.endpoint
        else:
            key = "relay:" + str(event.relay)
        current = self.plane.get(peer)
        if current is not None and _key(current[0]) == key and (at - current[1]) % RENEW_EVERY_MS == 0:
            self.renewals[(peer, key, at)] = seq
            self.facts[(peer, key)].append(Fact(at, True, seq))
            return
        self.unsolicited.append((at, seq, event))
        if event.endpoint is not None:
            self.facts[(peer, event.endpoint)].append(Fact(at, True, seq))

    def _answered_before(self, peer: str, endpoint: str, reached: str) -> bool:
        return any(a.reached == reached for a in self.attempts.get((peer, endpoint), ()))

    # -- the recorded commands ---------------------------------------------------

    def _command(self, command: Command, now: int) -> None:
        peer = command.peer
        if isinstance(command, TryDirectEndpoint):
            attempt = Attempt(now, peer, command.endpoint, command.deadline, warm=peer in self.plane)
            self.attempts[(peer, command.endpoint)].append(attempt)
            flying = self.in_flight[peer]
            flying[:] = [a for a in flying if a.deadline >= now and a.answered_at is None]
            flying.append(attempt)
        elif isinstance(command, ConnectViaRelay):
            connect = Connect(now, peer, command.relay, command.deadline)
            self.connects[(peer, command.relay)].append(connect)
            self.relay_connects[command.relay].append(connect)
            self.pending[(peer, command.relay)] = connect
        elif isinstance(command, SwitchPath):
            if command.endpoint is not None:
                self._set_plane(peer, ("direct", command.endpoint), now)
            elif command.relay is not None:
                self._set_plane(peer, ("relay", command.relay), now)
        elif isinstance(command, CloseRelaySession):
            waiting = self.pending.pop((peer, command.relay), None)
            if waiting is not None:
                waiting.outcome, waiting.answered_at = "cancelled", now
                self.closed[(peer, command.relay)] = waiting
            current = self.plane.get(peer)
            if current is not None and current[0] == ("relay", command.relay):
                self._set_plane(peer, None, now)
        elif isinstance(command, ForgetPeer):
            self._set_plane(peer, None, now)
        elif isinstance(command, StartHardNatAttempt | StopHardNatAttempt):
            note_command(self.punches, command, now)

    def _set_plane(self, peer: str, plane: tuple[str, str] | None, now: int) -> None:
        current = self.plane.get(peer)
        if (None if current is None else current[0]) == plane:
            return
        if current is not None:
            self._missing_renewals(peer, current[0], current[1], now)
        if plane is None:
            self.plane.pop(peer, None)
        else:
            self.plane[peer] = (plane, now)

    def _missing_renewals(self, peer: str, plane: tuple[str, str], since: int, until: int) -> None:
        """Renewals a path in use from `since` to `until` should have had and did not: dead then."""
        key = _key(plane)
        facts = self.facts[(peer, key)]
        due = since + RENEW_EVERY_MS
        while due < until:
            if (peer, key, due) not in self.renewals:
                facts.append(Fact(due, False, None))
            due += RENEW_EVERY_MS

    def finish(self) -> Trace:
        if self.expected_decisions:
            self.verified = False
        if not self.recorded:
            raise TraceError(f"the log holds no events for node {self.node!r}")
        for peer, (plane, since) in self.plane.items():
            self._missing_renewals(peer, plane, since, self.end + 1)
        for facts in self.facts.values():
            facts.sort(key=lambda f: f.at)
        lossy = frozenset(peer for (peer, _), attempts in self.attempts.items() if self._lost_any(attempts))
        return Trace(
            node=self.node,
            recorded=self.recorded,
            exogenous=self.exogenous,
            attempts=dict(self.attempts),
            connects=dict(self.connects),
            relay_connects=dict(self.relay_connects),
            facts=dict(self.facts),
            renewals=self.renewals,
            unsolicited=self.unsolicited,
            closures=self.closures,
            down=dict(self.down),
            silences=self.silences,
            timeouts=self.timeouts,
            epochs=dict(self.epochs),
            end=self.end,
            policies=self.policies,
            verified=self.verified,
            lossy=lossy,
            punches=dict(self.punches),
        )

    def _lost_any(self, attempts: list[Attempt]) -> bool:
        """Whether an attempt went unanswered while the endpoint an answered one reached worked."""
        for silent in attempts:
            if silent.answered_at is not None:
                continue
            epoch = bisect.bisect_right(self.epochs.get(silent.peer, ()), silent.at)
            for answered in attempts:
                if answered.reached is None:
                    continue
                if bisect.bisect_right(self.epochs.get(answered.peer, ()), answered.at) != epoch:
                    continue
                facts = self.facts.get((silent.peer, answered.reached), [])
                before = [f for f in facts if f.at <= silent.deadline]
                after = [f for f in facts if f.at > silent.deadline]
                if (before or after) and all(f.works for f in (before[-1:] + after[:1])):
                    return True
        return False


def _key(plane: tuple[str, str]) -> str:
    return plane[1] if plane[0] == "direct" else "relay:" + plane[1]
