"""The log watcher: an independent model of what the log says, checked decision by decision.

Owns `LogWatcher`: it reads the log's new rows after each step and recomputes,
*without the engine's projections*, each peer's lifecycle state (through the
`transitions` Machine itself), its failed rounds since the last success, its
open relay session and the freshness of its direct path, and checks each
decision against the policy as it comes.
"""

from __future__ import annotations

from typing import Any

import attrs

from natrelay.core import lifecycle as lc
from natrelay.core.events import Event
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view

from .oracle import DecisionOracle
from .steps import NODE, _fail


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
        #: The independent decision oracle (relay ranking, cache order, backoff, hysteresis).
        self.oracle = DecisionOracle(policy)

    def settle(self) -> None:
        """The log's last batch is complete: apply its observation and check the batch."""
        self.flush_observation()
        self.oracle.batch_done(self.last_seq + 1)

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
            self.oracle.batch_done(seq)
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
        self.oracle.observed(seq, event)
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
                # The engine keeps the newest direct answer by time; an older-stamped answer on
                # another endpoint is shadowed (docs/fuzzing.md, "Found by the oracle fuzz").
                if facts.direct_seen is None or event.at >= facts.direct_seen[1]:
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
        before = facts.model.state
        self._trigger(seq, event, facts)
        self.oracle.decided(seq, event, before, facts.model.state)
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
