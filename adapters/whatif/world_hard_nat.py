"""Hard-NAT (birthday punch) attempts in the trace-driven world (issue 16).

Owns what the log says about the engine's `StartHardNatAttempt`s and the data
plane's `HardNatPairMet`s, and how the world answers an alternative policy's
attempts from it, in the world's three sources:

- `recorded`: the same attempt (peer, attempt number, start time) was made in
  the recorded run: its meeting (endpoint, our port, probes sent) at its
  recorded time and place, if that is within the new deadline and budget; or
  no meeting, as far as the recorded attempt was open (its deadline, or the
  stop that ended it early; past that the answer is extrapolated);
- `nearby`: the recorded run made an attempt for this peer in the same network
  epoch of the peer, in the same role, toward the same endpoint, with the same
  sockets and probe rate (which shape when a pair meets): the nearest one's
  outcome shifted to the new start — a meeting after the same delay if that is
  within the new deadline, the peer's epoch unchanged by then, and its probes
  within the new budget; or no meeting, from an unmet attempt open at least as
  long as the new one;
- `extrapolated`: the log never attempted it so (`MODEL_UNTRIED_HARD_NAT`): no
  meeting, so the relay stays the path — conservative: a birthday punch meets
  by chance, and nothing in the log says when it would.

`StopHardNatAttempt` (and `ForgetPeer`) voids a meeting still to come, as the
closed sockets would. A found endpoint is then an ordinary direct endpoint:
the meeting is a fact that it worked (`Trace.facts`), and the recorded run's
renewals on it answer the alternative's renewals by the world's rules.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import attrs

from natrelay.core.commands import StartHardNatAttempt, StopHardNatAttempt
from natrelay.core.events import HardNatPairMet

if TYPE_CHECKING:
    from .trace import Trace

MODEL_UNTRIED_HARD_NAT = (
    "a hard-NAT attempt the log never made for the peer in its epoch (same role, endpoint, sockets "
    "and probe rate) meets nobody: the relay stays the path"
)


@attrs.define
class Punch:
    """A recorded hard-NAT attempt: its budget, and what came of it."""

    at: int
    peer: str
    attempt: int
    role: str
    endpoint: str
    sockets: int
    probes: int
    rate_per_s: int
    deadline: int
    #: When a StopHardNatAttempt ended it unmet (the deadline; early: the peer left, took a
    #: direct path some other way, or stopped being a hard pairing).
    stopped_at: int | None = None
    met: HardNatPairMet | None = None
    seq: int | None = None

    def open_until(self, end: int) -> int:
        """Until when the log shows it open without a meeting (the stop, the deadline, the log's end)."""
        return min(self.deadline if self.stopped_at is None else self.stopped_at, end)


def note_command(punches: dict[str, list[Punch]], command: Any, now: int) -> None:
    """A recorded StartHardNatAttempt or StopHardNatAttempt (the trace builder's hook)."""
    if isinstance(command, StartHardNatAttempt):
        budget = attrs.asdict(command)
        punches[command.peer].append(Punch(at=now, **budget))
    elif isinstance(command, StopHardNatAttempt):
        punch = _find(punches, command.peer, command.attempt)
        if punch is not None and punch.met is None and punch.stopped_at is None:
            punch.stopped_at = now


def note_met(punches: dict[str, list[Punch]], seq: int, event: HardNatPairMet) -> bool:
    """A recorded meeting, kept with its attempt; False when no recorded attempt asked for it."""
    punch = _find(punches, event.peer, event.attempt)
    if punch is None or punch.met is not None:
        return False
    punch.met, punch.seq = event, seq
    return True


def _find(punches: dict[str, list[Punch]], peer: str, attempt: int) -> Punch | None:
    return next((p for p in reversed(punches.get(peer, ())) if p.attempt == attempt), None)


def new_punches() -> dict[str, list[Punch]]:
    return defaultdict(list)


@attrs.define
class _Open:
    """An alternative's attempt under way: its token, how it is answered, and until when."""

    token: int
    source: str
    #: A no-meeting answer holds until then; an attempt stopped later is extrapolated past it.
    covered_until: int
    counted: bool


class HardNatAnswers:
    """The world's part answering hard-NAT attempts; `world` is the `TraceWorld` it belongs to."""

    def __init__(self, world: Any, trace: Trace) -> None:
        self.world = world
        self.trace = trace
        self.open: dict[str, _Open] = {}
        #: (peer, attempt) -> how it was answered, and the recorded attempt that did (None: the model).
        self.evidence: dict[tuple[str, int], tuple[str, Punch | None]] = {}
        self._tokens = 0

    def start(self, command: StartHardNatAttempt, now: int) -> None:
        peer = command.peer
        self.stop(peer, now)
        met, anchor, source, covered, punch = self._answer(command, now)
        self.evidence[(peer, command.attempt)] = (source, punch)
        self._tokens += 1
        # a meeting, or a no-meeting the evidence covers to the deadline, is counted now
        decided = met is not None or covered >= command.deadline
        self.open[peer] = _Open(self._tokens, source, covered, decided)
        if decided:
            self.world._count("hard_nat", source, peer)
        if met is not None:
            self.world._push(met.at, anchor, "hard_met", (peer, self._tokens, met))

    def stop(self, peer: str, now: int) -> None:
        """The attempt is over (stopped, or the peer forgotten): a meeting still to come is void."""
        item = self.open.pop(peer, None)
        if item is not None and not item.counted:
            source = item.source if now <= item.covered_until else "extrapolated"
            self.world._count("hard_nat", source, peer)

    def on_met(self, at: int, payload: tuple[str, int, HardNatPairMet]) -> None:
        peer, token, met = payload
        item = self.open.get(peer)
        if item is None or item.token != token:
            return  # stopped meanwhile: the sockets are closed
        del self.open[peer]
        self.world._out.append(met)

    def _answer(
        self, command: StartHardNatAttempt, now: int
    ) -> tuple[HardNatPairMet | None, int | None, str, int, Punch | None]:
        """(meeting or None, its queue anchor, source, until when a no-meeting answer holds, the
        recorded attempt answering)."""
        peer, trace = command.peer, self.trace
        punches = [p for p in trace.punches.get(peer, ()) if _alike(p, command)]
        same = next((p for p in punches if p.at == now and p.attempt == command.attempt), None)
        if same is not None:
            if same.met is not None:
                if same.met.at <= command.deadline and same.met.probes_sent <= command.probes:
                    return same.met, same.seq, "recorded", command.deadline, same
                return None, None, "recorded", command.deadline, same  # it met later, or past this budget
            return None, None, "recorded", same.open_until(trace.end), same
        epoch = trace.epoch(peer, now)
        wait = command.deadline - now
        usable = [
            p
            for p in punches
            if trace.epoch(peer, p.at) == epoch
            and (p.met is not None or p.open_until(trace.end) - p.at >= wait)
        ]
        if not usable:
            return None, None, "extrapolated", now, None
        nearest = min(usable, key=lambda p: (abs(p.at - now), p.at > now))
        if nearest.met is None:
            return None, None, "nearby", command.deadline, nearest
        at = now + nearest.met.at - nearest.at
        late = at > command.deadline or trace.epoch(peer, at) != epoch
        if late or nearest.met.probes_sent > command.probes:
            return None, None, "nearby", command.deadline, nearest
        met = attrs.evolve(nearest.met, at=at, attempt=command.attempt)
        return met, None, "nearby", command.deadline, nearest


def _alike(punch: Punch, command: StartHardNatAttempt) -> bool:
    """The recorded attempt is evidence for this one: same role, endpoint, sockets and probe rate."""
    return (punch.role, punch.endpoint, punch.sockets, punch.rate_per_s) == (
        command.role,
        command.endpoint,
        command.sockets,
        command.rate_per_s,
    )
