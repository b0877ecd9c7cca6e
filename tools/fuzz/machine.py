"""The Hypothesis state machine of fuzzing: which steps to try, and how policies are drawn.

Owns `NatrelayMachine`, the `RuleBasedStateMachine` that invents scenarios
(peers come and go, handshakes arrive right, wrong, late and twice, attempts
time out, relays appear, overload, fail and vanish, sessions open and close,
time jumps, snapshots are taken, the node crashes and restarts) and checks
every invariant of `natrelay.tools.fuzz.harness.Harness` after every step.
The profiles and the runner outside pytest live in `natrelay.tools.fuzz.runner`.

Every rule turns its random draw into one *concrete* step before running it,
so the harness's scenario is exactly what ran and replays from a file.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from natrelay.core import events as E
from natrelay.core.policy import Policy
from natrelay.tools.fuzz.harness import (
    ENDPOINTS,
    PEERS,
    REGIONS,
    RELAYS,
    STRAY_ENDPOINT,
    Harness,
    Scenario,
    event_of,
)

# ---------------------------------------------------------------- strategies

times_ms = st.sampled_from([1, 10, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 60_000, 200_000])


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """The whole policy space, each field drawn, thresholds small and timers close together.

    Every field the engine decides with is drawn (hysteresis, backoff, the direct
    cache's size and age, staleness, probing, weights), so that a restore that
    ignores a non-default setting, or a rule only wrong off its default, is reachable.
    """
    return Policy(
        mode=draw(st.sampled_from(["direct_first", "relay_first"])),
        relays_enabled=draw(st.booleans().map(lambda b: b or True) | st.just(False)),
        min_direct_attempts=draw(st.integers(0, 3)),
        step_interval_ms=draw(st.sampled_from([100, 500])),
        attempt_timeout_ms=draw(st.sampled_from([300, 1_000])),
        parallel_endpoints=draw(st.integers(1, 3)),
        backoff_factor=draw(st.sampled_from([1.0, 2.0, 3.0])),
        backoff_cap_ms=draw(st.sampled_from([2_000, 30_000])),
        backoff_jitter=draw(st.sampled_from([0.0, 0.1, 0.5])),
        handshake_freshness_ms=draw(st.sampled_from([20_000, 180_000])),
        relay_connect_timeout_ms=draw(st.sampled_from([1_000, 5_000])),
        relay_retry_ms=draw(st.sampled_from([2_000, 10_000])),
        relay_unanswered_window_ms=draw(st.sampled_from([0, 0, 30_000])),
        upgrade_enabled=draw(st.booleans().map(lambda b: b or True) | st.just(False)),
        upgrade_probe_interval_ms=draw(st.sampled_from([500, 2_000])),
        upgrade_probe_on_relay=draw(st.booleans()),
        upgrade_probe_backoff=draw(st.sampled_from([1.0, 2.0])),
        upgrade_probe_cap_ms=draw(st.sampled_from([4_000, 60_000])),
        upgrade_probe_slow_after=draw(st.sampled_from([0, 0, 2])),
        private_candidates_first=draw(st.booleans()),
        switch_hysteresis_ms=draw(st.sampled_from([0, 3_000, 10_000])),
        weights=draw(st.sampled_from([{}, {"latency": 0.6, "load": 0.1, "reliability": 0.1}])),
        max_relay_load=draw(st.sampled_from([50, 80])),
        required_capabilities=draw(st.sampled_from([0, 0, 5])),
        relay_stale_after_ms=draw(st.sampled_from([30_000, 3_600_000])),
        direct_cache_size=draw(st.sampled_from([1, 2, 5])),
        direct_cache_max_age_ms=draw(st.sampled_from([5_000, 60_000, 7 * 86_400_000])),
    )


candidate_lists = st.lists(st.sampled_from(ENDPOINTS), max_size=3, unique=True).map(tuple)
peer_index = st.integers(0, len(PEERS) - 1)
accesses = st.sampled_from(["auto", "auto", "auto", "relay_only", "direct_only"])
pick = st.integers(0, 63)


def _nth(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


# ---------------------------------------------------------------- the machine


@attrs.define
class RunRecord:
    """What the runner needs from the latest example: its scenario and how it ended."""

    examples: int = 0
    last: Scenario | None = None
    on_example: Callable[[], None] | None = None


class NatrelayMachine(RuleBasedStateMachine):
    """Drives one Node on a fresh SQLite log per example; the invariants run after every step."""

    record = RunRecord()
    #: Where each example's policy comes from (a subclass may narrow it, e.g. the mutation check).
    policy_strategy: ClassVar[st.SearchStrategy[Policy]] = policies()

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="natrelay-fuzz-"))
        self.harness: Harness | None = None
        self.sessions = 0
        #: What the simulated network does when `network_runs` (drawn once per example).
        self.relays_work: frozenset[str] = frozenset()
        self.answering: frozenset[tuple[str, str]] = frozenset()
        self.answered = 0
        type(self).record.examples += 1
        if type(self).record.on_example is not None:
            type(self).record.on_example()

    @property
    def h(self) -> Harness:
        assert self.harness is not None
        return self.harness

    def teardown(self) -> None:
        if self.harness is not None:
            type(self).record.last = self.harness.scenario
            try:
                # The end of a clean example: the full replays from seq 0 (the steps were
                # checked against the shadow engines). Not after a failure: that one counts.
                if sys.exc_info()[0] is None:
                    self.harness.finish()
            finally:
                self.harness.close()
                shutil.rmtree(self.directory, ignore_errors=True)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _observe(self, event: E.Event) -> None:
        self.h.observe(event)

    @property
    def now(self) -> int:
        return self.h.now

    @initialize(
        data=st.data(),
        peers=st.lists(st.tuples(candidate_lists, accesses), max_size=len(PEERS)),
        relays=st.lists(
            st.tuples(st.sampled_from(RELAYS), st.sampled_from(REGIONS), st.integers(0, 15)),
            unique_by=lambda t: t[0],
        ),
        relays_work=st.frozensets(st.sampled_from(RELAYS)),
        answering=st.frozensets(st.tuples(st.sampled_from(PEERS), st.sampled_from(ENDPOINTS)), max_size=4),
    )
    def start(
        self,
        data: st.DataObject,
        peers: list[tuple[tuple[str, ...], str]],
        relays: list[tuple[str, str, int]],
        relays_work: frozenset[str],
        answering: frozenset[tuple[str, str]],
    ) -> None:
        """A fresh log and a mesh to start from: some relays, then some peers."""
        policy = data.draw(type(self).policy_strategy, label="policy")
        self.harness = Harness(self.directory, policy)
        self.relays_work, self.answering = relays_work, answering
        for relay, region, capabilities in relays:
            self._observe(E.RelayAnnounced(at=0, relay=relay, region=region, capabilities=capabilities))
        for key, (candidates, access) in zip(PEERS, peers, strict=False):
            self._observe(E.PeerAdded(at=0, peer=key, candidates=candidates, access=access))  # type: ignore[arg-type]

    # --- peers -----------------------------------------------------------

    @rule(
        peer=peer_index,
        candidates=candidate_lists,
        access=accesses,
        region=st.none() | st.sampled_from(REGIONS),
    )
    def add_peer(self, peer: int, candidates: tuple[str, ...], access: str, region: str | None) -> None:
        self._observe(
            E.PeerAdded(
                at=self.now,
                peer=PEERS[peer],
                candidates=candidates,
                access=access,  # type: ignore[arg-type]
                preferred_region=region,
            )
        )

    @rule(peer=peer_index)
    def remove_peer(self, peer: int) -> None:
        self._observe(E.PeerRemoved(at=self.now, peer=PEERS[peer]))

    @rule(peer=peer_index, candidates=candidate_lists)
    def update_candidates(self, peer: int, candidates: tuple[str, ...]) -> None:
        self._observe(E.CandidatesUpdated(at=self.now, peer=PEERS[peer], candidates=candidates))

    # --- direct attempts -------------------------------------------------

    def _has_tries(self) -> bool:
        return self.harness is not None and bool(self.h.world.tries)

    @precondition(_has_tries)
    @rule(index=pick, lag=st.sampled_from([0, 0, 0, 1, 500, 5_000]))
    def handshake_answers_attempt(self, index: int, lag: int) -> None:
        """A handshake on an endpoint the engine tried (lag > 0: it is stamped in the past)."""
        tried = _nth(self.h.world.tries[-8:], index)
        at = max(0, self.now - lag)
        self._observe(E.HandshakeObserved(at=at, peer=tried.peer, endpoint=tried.endpoint))

    @rule(peer=peer_index, endpoint=st.sampled_from((*ENDPOINTS, STRAY_ENDPOINT)))
    def handshake_anywhere(self, peer: int, endpoint: str) -> None:
        """A handshake on any endpoint, tried or not: a roam, a stale NAT mapping, a wrong answer."""
        self._observe(E.HandshakeObserved(at=self.now, peer=PEERS[peer], endpoint=endpoint))

    @rule(peer=peer_index, relay=st.sampled_from(RELAYS))
    def handshake_through_relay(self, peer: int, relay: str) -> None:
        path = self.h.world.paths.get(PEERS[peer])
        if path is not None and path[1] is not None:
            relay = path[1]
        self._observe(E.HandshakeObserved(at=self.now, peer=PEERS[peer], relay=relay))

    @precondition(_has_tries)
    @rule(index=pick)
    def attempt_times_out(self, index: int) -> None:
        tried = _nth(self.h.world.tries[-8:], index)
        at = max(self.now, tried.deadline) if index % 3 else self.now
        self._observe(
            E.DirectAttemptTimedOut(at=at, peer=tried.peer, endpoint=tried.endpoint, attempt=tried.attempt)
        )

    @precondition(lambda self: self.harness is not None and bool(self.h.scenario.steps))
    @rule(index=pick)
    def duplicate_observation(self, index: int) -> None:
        """Feed again, unchanged, an observation that was fed before."""
        fed = [s for s in self.h.scenario.steps if s["op"] == "observe" and s["type"] != "peer_added"]
        if fed:
            self._observe(event_of(_nth(fed, index)))

    # --- relays ----------------------------------------------------------

    @rule(
        relay=st.sampled_from(RELAYS),
        region=st.sampled_from(REGIONS),
        capabilities=st.integers(0, 15),
        lifetime=st.none() | st.sampled_from([1_000, 60_000]),
    )
    def announce_relay(self, relay: str, region: str, capabilities: int, lifetime: int | None) -> None:
        expires = None if lifetime is None else self.now + lifetime
        self._observe(
            E.RelayAnnounced(
                at=self.now, relay=relay, region=region, capabilities=capabilities, expires_at=expires
            )
        )

    @rule(relay=st.sampled_from(RELAYS))
    def withdraw_relay(self, relay: str) -> None:
        self._observe(E.RelayWithdrawn(at=self.now, relay=relay))

    @rule(
        relay=st.sampled_from(RELAYS),
        rtt=st.sampled_from([5, 50, 400]),
        load=st.sampled_from([0, 10, 49, 50, 79, 80, 81, 100, 150]),
        loss=st.sampled_from([0.0, 0.2, 1.0]),
    )
    def measure_relay(self, relay: str, rtt: int, load: int, loss: float) -> None:
        """Health of a relay; loads at and over the policy's maximum are the overloaded case."""
        self._observe(E.RelayHealthMeasured(at=self.now, relay=relay, rtt_ms=rtt, load=load, loss=loss))

    def _has_connects(self) -> bool:
        return self.harness is not None and bool(self.h.world.connects)

    @precondition(_has_connects)
    @rule(index=pick)
    def relay_answers_connect(self, index: int) -> None:
        """A relay the engine asked establishes the session."""
        self.sessions += 1
        key, relay = _nth(sorted(self.h.world.connects.items()), index)
        session = f"s{self.sessions}"
        self._observe(E.RelaySessionEstablished(at=self.now, peer=key, relay=relay, session=session))

    @precondition(_has_connects)
    @rule(index=pick)
    def relay_refuses_connect(self, index: int) -> None:
        """A relay the engine asked fails (overloaded, unreachable, refused)."""
        key, relay = _nth(sorted(self.h.world.connects.items()), index)
        self._observe(E.RelaySessionFailed(at=self.now, peer=key, relay=relay, reason="refused"))

    @rule(relay=st.sampled_from(RELAYS), peer=peer_index, established=st.booleans())
    def relay_reports_unasked(self, relay: str, peer: int, established: bool) -> None:
        """A session report nobody asked for (late, duplicated, or from a confused relay)."""
        if established:
            self.sessions += 1
            event: E.Event = E.RelaySessionEstablished(
                at=self.now, peer=PEERS[peer], relay=relay, session=f"s{self.sessions}"
            )
        else:
            event = E.RelaySessionFailed(at=self.now, peer=PEERS[peer], relay=relay, reason="late")
        self._observe(event)

    @precondition(lambda self: self.harness is not None and any(self.h.world.sessions.values()))
    @rule(index=pick)
    def relay_session_closes(self, index: int) -> None:
        held = sorted((peer, r, s) for peer, found in self.h.world.sessions.items() for r, s in found)
        key, relay, session = _nth(held, index)
        self._observe(
            E.RelaySessionClosed(at=self.now, peer=key, relay=relay, session=session, reason="gone")
        )

    # --- time, snapshots, crashes ------------------------------------------

    @rule(by=times_ms)
    def time_passes(self, by: int) -> None:
        self.h.run({"op": "advance", "by": by})

    @precondition(lambda self: self.harness is not None and self.h.node.next_wakeup() is not None)
    @rule()
    def time_passes_to_next_deadline(self) -> None:
        wake = self.h.node.next_wakeup()
        assert wake is not None
        self.h.run({"op": "advance", "by": max(0, wake - self.now)})

    @rule(jumps=st.integers(1, 6))
    def network_runs(self, jumps: int) -> None:
        """The network does its part, then time jumps to the next deadline; `jumps` times.

        Relays in `relays_work` establish what the engine asks of them, endpoints in
        `answering` answer attempts; everything else stays silent until its deadline.
        Each reply is a concrete step, and the invariants are checked at each stop.
        """
        for _ in range(jumps):
            self._network_answers()
            wake = self.h.node.next_wakeup()
            if wake is None:
                return
            self.h.run({"op": "advance", "by": max(0, wake - self.now)})
            self.h.check()

    def _network_answers(self) -> None:
        world = self.h.world
        for key, relay in sorted(world.connects.items()):
            if relay in self.relays_work and world.connects.get(key) == relay:
                self.sessions += 1
                session = f"s{self.sessions}"
                self._observe(E.RelaySessionEstablished(at=self.now, peer=key, relay=relay, session=session))
                self.h.check()
        tries, self.answered = world.tries[self.answered :], len(world.tries)
        for tried in tries:
            if (tried.peer, tried.endpoint) in self.answering and tried.deadline > self.now:
                self._observe(E.HandshakeObserved(at=self.now, peer=tried.peer, endpoint=tried.endpoint))
                self.h.check()

    @rule(nat=st.sampled_from(E.NAT_TYPES))
    def nat_observed(self, nat: str) -> None:
        """The agent measured this node's NAT (a fact for statistics, and for restore to keep)."""
        self._observe(E.NatObserved(at=self.now, nat_type=nat))

    @rule(peer=peer_index, silent=st.sampled_from([3_000, 75_000]))
    def path_goes_silent(self, peer: int, silent: int) -> None:
        """The transfer counters of a peer's path stood still: the path is lost (rejected if none)."""
        self._observe(E.PathSilent(at=self.now, peer=PEERS[peer], silent_ms=silent))

    @rule(
        peer=peer_index,
        endpoint=st.sampled_from(ENDPOINTS),
        back_after=st.sampled_from([0, 1_000, 5_000, 20_000]),
    )
    def direct_path_dies_and_returns(self, peer: int, endpoint: str, back_after: int) -> None:
        """A direct path answers, goes silent, the network runs, and the endpoint answers again.

        The flapping path the switch hysteresis is for: the return lands at a drawn
        time after the loss, before or after the hysteresis has passed.
        """
        key = PEERS[peer]
        self._observe(E.HandshakeObserved(at=self.now, peer=key, endpoint=endpoint))
        self.h.check()
        self._observe(E.PathSilent(at=self.now, peer=key, silent_ms=3_000))
        self.h.check()
        self.network_runs(2)
        if back_after:
            self.h.run({"op": "advance", "by": back_after})
            self.h.check()
        self._observe(E.HandshakeObserved(at=self.now, peer=key, endpoint=endpoint))

    @rule(peer=peer_index)
    def peer_leaves_and_returns(self, peer: int) -> None:
        """A peer is removed and added again as it was: its relay track record must still lead."""
        key = PEERS[peer]
        record = self.h.engine.peers.get(key)
        candidates = () if record is None else record.candidates
        access = "auto" if record is None else record.access
        self._observe(E.PeerRemoved(at=self.now, peer=key))
        self.h.check()
        self._observe(E.PeerAdded(at=self.now, peer=key, candidates=candidates, access=access))

    @rule()
    def step_requested(self) -> None:
        self._observe(E.StepRequested(at=self.now))

    @rule()
    def snapshot(self) -> None:
        self.h.run({"op": "snapshot"})

    @rule()
    def crash_and_restart(self) -> None:
        self.h.run({"op": "restart"})

    @invariant()
    def log_tells_the_truth(self) -> None:
        if self.harness is not None:
            self.harness.check()
