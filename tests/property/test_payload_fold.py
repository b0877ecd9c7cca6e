"""The payload fold (replay's frequent types folded straight from the payload dict,
`core.payload_fold`) gives exactly the state of the event fold (`evolve` of each event),
event by event, on simulated logs of every scenario under every preset and on the fuzz
machine's logs; types it does not mirror, and mirrored types whose plan changed shape,
fold from their events; a payload of another shape changes nothing and takes the
validating path.

Wrong decisions these tests kill (each mutation checked by hand, see the commit):
a payload fold that forgets a field update (`relay_retry_at` of an eligible peer, a
round's outstanding endpoints), counts a relay slot wrong, or folds an event its
check refuses; a payload fold kept while `evolve` grew a fold or a projection for
its type; a malformed row folded half-way.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core import codec, evolve, payload_fold
from natrelay.core import events as E
from natrelay.core import lifecycle as lc
from natrelay.core.codec import DecodeError, Untrusted
from natrelay.core.direct_cache import DirectCache
from natrelay.core.engine import Engine
from natrelay.core.events import EVENT_TYPES, DirectAttemptStarted, HandshakeObserved
from natrelay.core.payload_fold import MIRRORS, payload_folds
from natrelay.core.policy import Policy
from natrelay.core.presets import PRESETS, preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_view, nodes_in, rebuild
from natrelay.tools.fuzz.harness import ENDPOINTS, NODE, PEERS, RELAYS
from natrelay.tools.fuzz.machine import NatrelayMachine

Row = tuple[int, str, int, bytes]
SCENARIOS = ("mesh", "lan", "rebind", "relay-outage", "relay-scarce", "wake", "matrix", "steady")
AGENT_LOG = Path(__file__).parents[1] / "whatif" / "data" / "agent-relay-mesh.jsonl"


def _everything(engine: Engine) -> tuple[Any, ...]:
    """The state, what is derived from it (relay slots, freed slots), and the insertion order of
    every table (the order later folds and the timer heap walk them in)."""
    return (
        engine.state(),
        dict(engine.relay_held),
        set(engine._freed),
        list(engine.peers),
        list(engine.attempts.rounds),
        list(engine.attempts.failed),
        list(engine.direct_cache.entries),
        list(engine.relay_cache.peers),
        list(engine.registry.relays),
        list(engine.relay_held),
    )


def fold_both(rows: list[Row]) -> Counter[str]:
    """Fold `rows` by event (the validated event, `evolve`) and by payload where a payload fold
    exists; the two engines must agree after every row, and on their timers at the end.
    Returns how many rows of each type the payload folds took."""
    by_event, by_payload = Engine(), Engine()
    folds = payload_folds(by_payload)
    used: Counter[str] = Counter()
    for seq, type_name, version, payload in rows:
        event = codec.decode(type_name, version, payload, seq)
        evolve.evolve(by_event, event)
        fast = folds.get(type_name)
        if fast is not None and fast[0] == version:
            fast[1](orjson.loads(payload))
            used[type_name] += 1
        else:
            evolve.evolve(by_payload, event)
        assert _everything(by_payload) == _everything(by_event), f"seq {seq} ({type_name})"
    by_event.reschedule_all()
    by_payload.reschedule_all()
    assert by_payload.next_deadline() == by_event.next_deadline()
    assert by_payload._timers == by_event._timers
    return used


def node_rows(path: str) -> list[list[Row]]:
    """Each node's view of the log at `path`, as replay reads it."""
    with EventLog.open(path, create=False) as log:
        return [[row for page in log.fold_pages(**node_view(node)) for row in page] for node in nodes_in(log)]


def simulate(path: Path, scenario_name: str, policy: str, seed: int, peers: int, vantage: int) -> str:
    scenario = load_scenario(scenario_name).with_overrides(peers=peers, duration_ms=900_000)
    nat = scenario.local_nats[vantage % len(scenario.local_nats)]
    run_policy(attrs.evolve(scenario, local_nats=(nat,)), preset(policy), seed=seed, log=str(path))
    return str(path)


@settings(
    max_examples=16,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenario=st.sampled_from(SCENARIOS),
    policy=st.sampled_from(sorted(PRESETS)),
    seed=st.integers(0, 2**16),
    peers=st.integers(3, 14),
    vantage=st.integers(0, 6),
)
def test_payload_and_event_folds_agree_on_simulated_logs(
    tmp_path_factory: pytest.TempPathFactory, scenario: str, policy: str, seed: int, peers: int, vantage: int
) -> None:
    path = simulate(tmp_path_factory.mktemp("sim") / "run.db", scenario, policy, seed, peers, vantage)
    used: Counter[str] = Counter()
    for rows in node_rows(path):
        used += fold_both(rows)
    assert used["direct_attempt_started"] + used["relay_chosen"] > 0  # the payload folds did fold


def test_every_payload_fold_folds_on_the_simulated_logs(tmp_path: Path) -> None:
    """The scenarios above reach every mirrored type but the rejection; the agent's log too."""
    used: Counter[str] = Counter()
    for index, name in enumerate(("mesh", "wake", "relay-outage")):
        path = simulate(tmp_path / f"{name}.db", name, "natrelay", 11 + index, 12, 0)
        for rows in node_rows(path):
            used += fold_both(rows)
    agent = [
        (row["seq"], row["type"], row["schema_version"], orjson.dumps(row["payload"]))
        for row in map(json.loads, AGENT_LOG.read_text().splitlines())
    ]
    used += fold_both(agent)
    assert set(used) >= {kind.TYPE for kind in MIRRORS} - {"observation_rejected"}


# ------------------------------------------------------------------ any sequence of events

at = st.integers(0, 50_000)
peers = st.sampled_from(PEERS)
relays = st.sampled_from(RELAYS)
endpoints = st.sampled_from(ENDPOINTS)
purposes = st.sampled_from(("connect", "upgrade_probe"))
some_endpoints = st.lists(endpoints, max_size=2, unique=True).map(tuple)
#: Two policies whose probe gaps differ: a payload fold must not keep the first one's gaps.
POLICIES = (Policy(), Policy(upgrade_probe_interval_ms=7_000, upgrade_probe_backoff=1.5))

events = st.one_of(
    st.builds(E.PeerAdded, at=at, peer=peers, candidates=some_endpoints),
    st.builds(E.PeerRemoved, at=at, peer=peers),
    st.builds(
        E.DirectAttemptStarted,
        at=at, peer=peers, endpoint=endpoints, attempt=st.integers(1, 3), deadline=at, purpose=purposes,
    ),
    st.builds(
        E.DirectRoundFailed,
        at=at, peer=peers, attempt=st.integers(1, 3), endpoints=some_endpoints,
        purpose=purposes,
    ),
    st.builds(E.HandshakeObserved, at=at, peer=peers, endpoint=endpoints),
    st.builds(E.HandshakeObserved, at=at, peer=peers, relay=relays),
    st.builds(E.RelayAnnounced, at=at, relay=relays, region=st.just("eu")),
    st.builds(E.RelayEligibilityReached, at=at, peer=peers, failed_attempts=st.integers(0, 3), threshold=at),
    st.builds(E.RelayChosen, at=at, peer=peers, relay=relays, deadline=at),
    st.builds(E.RelaySessionEstablished, at=at, peer=peers, relay=relays, session=st.just("s1")),
    st.builds(E.RelaySessionFailed, at=at, peer=peers, relay=relays),
    st.builds(E.RelayAbandoned, at=at, peer=peers, relay=relays),
    st.builds(E.RelayPathSelected, at=at, peer=peers, relay=relays, session=st.just("s1")),
    st.builds(E.DirectPathSelected, at=at, peer=peers, endpoint=endpoints),
    st.builds(E.PathLost, at=at, peer=peers, path_kind=st.sampled_from(("direct", "relay")), path=relays),
    st.builds(E.Tick, at=at),
    st.builds(E.ObservationRejected, at=at, observation=st.just("tick"), peer=st.none() | peers),
    st.builds(E.PolicySet, at=at, policy=st.sampled_from(POLICIES)),
)  # fmt: skip


#: Every peer and relay known at first, so that most drawn events apply.
MESH: tuple[E.Event, ...] = (
    *(E.PeerAdded(at=0, peer=key, candidates=ENDPOINTS[:2]) for key in PEERS),
    *(E.RelayAnnounced(at=0, relay=relay, region="eu") for relay in RELAYS),
)


def _refused(engine: Engine, event: E.Event) -> bool:
    """The event fold raises on this event: an unknown peer, or a move the lifecycle refuses."""
    trigger = lc.TRIGGER_OF_EVENT.get(event.TYPE)
    if trigger is None or type(event) is E.PeerAdded:
        return False
    record = engine.peers.get(getattr(event, "peer", ""))
    return record is None or (record.state, trigger) not in lc.TABLE


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(events, min_size=30, max_size=90))
def test_payload_and_event_folds_agree_on_any_sequence_of_events(drawn: list[E.Event]) -> None:
    """Events in any order, as a log a bug or another engine might hold: the two folds agree on
    every state. An event the event fold raises on is left out (the lifecycle refuses it), but
    the last one: there the payload fold must raise the same error."""
    by_event, by_payload = Engine(), Engine()
    folds = payload_folds(by_payload)
    sequence = [*MESH, *drawn]
    for seq, event in enumerate(sequence, 1):
        if seq < len(sequence) and _refused(by_event, event):
            continue
        encoded = codec.encode(event)
        fast = folds.get(encoded.type)
        expected: Exception | None = None
        try:
            evolve.evolve(by_event, event)
        except Exception as exc:  # compared with the payload fold's below
            expected = exc
        try:
            if fast is not None:
                fast[1](orjson.loads(encoded.payload))
            else:
                evolve.evolve(by_payload, event)
        except Exception as exc:
            assert type(exc) is type(expected) and str(exc) == str(expected), f"seq {seq}"
            return
        assert expected is None, f"seq {seq}: the payload fold took what the event fold refused: {expected!r}"
        assert _everything(by_payload) == _everything(by_event), f"seq {seq} ({encoded.type})"
    by_event.reschedule_all()
    by_payload.reschedule_all()
    assert by_payload._timers == by_event._timers


# ------------------------------------------------------------------ replay itself


def test_rebuild_equals_the_event_fold_with_its_timers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rebuild` with the payload folds against `rebuild` with none (every row from its event)
    and against `Engine.rebuilt` of the validated events, to the timer heap."""
    path = simulate(tmp_path / "wake.db", "wake", "natrelay", 3, 14, 0)
    with EventLog.open(path, create=False) as log:
        (node,) = nodes_in(log)
        events = [stored.decode() for stored in log.read(**node_view(node))]
        fast, last = rebuild(log, node, use_snapshot=False)
        cut, _ = rebuild(log, node, use_snapshot=False, until_seq=last // 2)
        monkeypatch.setattr(payload_fold, "MIRRORS", {})
        slow, slow_last = rebuild(log, node, use_snapshot=False)
        slow_cut, _ = rebuild(log, node, use_snapshot=False, until_seq=last // 2)
    expected = Engine.rebuilt(events)
    assert last == slow_last
    for engine in (fast, slow):
        assert _everything(engine) == _everything(expected)
        assert engine.next_deadline() == expected.next_deadline()
        assert engine._timers == expected._timers
    assert _everything(cut) == _everything(slow_cut)
    assert cut._timers == slow_cut._timers


def test_types_it_does_not_mirror_fold_from_their_events() -> None:
    """Only the mirrored types have a payload fold: any other type — one added later too —
    is left to `evolve`, with nothing to write here."""
    folds = payload_folds(Engine())
    assert set(folds) == {kind.TYPE for kind in MIRRORS}
    assert set(EVENT_TYPES) - set(folds) >= {
        "path_lost",
        "path_upgraded",
        "relay_session_failed",
        "candidates_updated",
    }
    assert all(version == EVENT_TYPES[name].VERSION for name, (version, _) in folds.items())


def test_a_changed_plan_folds_from_its_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new peer fold for a mirrored type, or a projection newly handling it, leaves the payload
    fold out: the new fold runs on every such row of a replay."""
    path = simulate(tmp_path / "mesh.db", "mesh", "natrelay", 2, 10, 0)
    calls: Counter[str] = Counter()
    original = evolve.fold_handshake

    def hooked(state: Any, event: HandshakeObserved) -> None:
        calls[event.TYPE] += 1
        original(state, event)

    monkeypatch.setitem(evolve.FOLDS, HandshakeObserved, hooked)
    monkeypatch.setattr(DirectCache, "HANDLES", DirectCache.HANDLES | {DirectAttemptStarted})
    assert set(payload_folds(Engine())).isdisjoint({"handshake_observed", "direct_attempt_started"})
    with EventLog.open(path, create=False) as log:
        (node,) = nodes_in(log)
        rebuild(log, node, use_snapshot=False)
        handshakes = sum(1 for row in log.rows(**node_view(node)) if row[3] == "handshake_observed")
    assert calls["handshake_observed"] == handshakes > 0


def test_a_projection_added_to_the_state_leaves_its_types_to_the_event_fold() -> None:
    """A new projection (another worker's, on the state) handling a mirrored type: that type
    folds from its events, where `evolve.plan` runs the new projection too."""

    class Slots:
        HANDLES = frozenset({E.RelayChosen, E.PeerRemoved})

    engine = Engine()
    engine.slots_book = Slots()  # type: ignore[attr-defined]
    folds = payload_folds(engine)
    assert "relay_chosen" not in folds
    assert set(folds) == {kind.TYPE for kind in MIRRORS} - {"relay_chosen"}


# ------------------------------------------------------------------ untrusted payloads


def _samples(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """One stored payload of each mirrored type, and the engine just before it."""
    path = simulate(tmp_path / "wake.db", "wake", "natrelay", 4, 12, 0)
    (rows,) = node_rows(path)
    rows.append(
        (len(rows) + 1, "observation_rejected", 1, b'{"at":1,"observation":"tick","peer":null,"reason":"r"}')
    )
    found: dict[str, dict[str, Any]] = {}
    for _seq, type_name, _version, payload in rows:
        if type_name not in found and type_name in {kind.TYPE for kind in MIRRORS}:
            found[type_name] = orjson.loads(payload)
    return found


def _broken(data: dict[str, Any]) -> list[object]:
    """The payload with each field of the wrong JSON type, missing, or one field too many; not an object."""
    wrong: list[object] = [[data], "x", 7, None]
    for name, value in data.items():
        # a relay ranking is never read: the trusted builder checks it is a list, no more
        replaced = 7 if name == "ranking" or not isinstance(value, list) or isinstance(value, int) else [7]
        wrong.append({**data, name: "7" if isinstance(value, int) else replaced})
        wrong.append({key: item for key, item in data.items() if key != name})
        if isinstance(value, list) and name != "ranking":
            wrong.append({**data, name: [*value, 7]})
    wrong.append({**data, "extra": 1})
    return wrong


def test_a_payload_of_another_shape_changes_nothing(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    assert set(samples) == {kind.TYPE for kind in MIRRORS}
    engine = Engine()
    folds = payload_folds(engine)
    for data in samples.values():  # a state every sample applies to (peers known)
        if "peer" in data and data["peer"] is not None and data["peer"] not in engine.peers:
            folds["peer_added"][1](
                {"at": 0, "peer": data["peer"], "candidates": [], "kinds": [], "name": "", "access": "auto",
                 "preferred_region": None, "nat_type": "unknown"}
            )  # fmt: skip
    before = _everything(engine)
    for type_name, data in samples.items():
        for broken in _broken(data):
            with pytest.raises(Untrusted):
                folds[type_name][1](broken)  # type: ignore[arg-type]
            assert _everything(engine) == before, f"{type_name}: {broken}"


def test_a_malformed_row_is_refused_naming_its_seq(tmp_path: Path) -> None:
    """A hot row of the wrong shape takes the validating path: the codec's error, with the seq."""
    path = simulate(tmp_path / "mesh.db", "mesh", "natrelay", 6, 8, 0)
    connection = sqlite3.connect(path)
    seq, payload = connection.execute(
        "SELECT seq, payload FROM events WHERE type = 'direct_attempt_started' ORDER BY seq LIMIT 1 OFFSET 5"
    ).fetchone()
    data = orjson.loads(payload)
    connection.execute(
        "UPDATE events SET payload = ? WHERE seq = ?", (orjson.dumps({**data, "attempt": "2"}), seq)
    )
    connection.commit()
    connection.close()
    with EventLog.open(path, create=False) as log:
        (node,) = nodes_in(log)
        with pytest.raises(DecodeError) as caught:
            rebuild(log, node, use_snapshot=False)
    assert caught.value.seq == seq and f"seq {seq}" in str(caught.value)


# ------------------------------------------------------------------ the fuzz machine's logs


class PayloadFoldMachine(NatrelayMachine):
    """The fuzz machine's logs (peers removed and re-added, handshakes late, twice and of
    strangers, relays failing and refused, rejections, restarts), folded both ways at the end."""

    def teardown(self) -> None:
        if self.harness is not None and sys.exc_info()[0] is None:
            log = self.harness.log
            fold_both([row for page in log.fold_pages(**node_view(NODE)) for row in page])
        super().teardown()


TestPayloadFoldOnFuzzedLogs = PayloadFoldMachine.TestCase
TestPayloadFoldOnFuzzedLogs.settings = settings(
    TestPayloadFoldOnFuzzedLogs.settings,
    max_examples=25,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
)
