"""A log written by the engine before its split (issue 11) re-decides and rebuilds exactly today.

tests/fixtures/pre_split.sqlite was written by tests/fixtures/make_pre_split_log.py
on the code as it was before core/engine.py became evolve/checks/decide/stepping/
schedule: three nodes, direct and relayed paths, relay failover, an upgrade, lost
paths. Each node ended with a snapshot of the old engine's state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from natrelay.core.engine import Engine
from natrelay.core.events import PolicySet
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_events, nodes_in, rebuild, snapshot_name, verify

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_split.sqlite"
NODES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventLog]:
    copy = tmp_path_factory.mktemp("pre_split") / "pre_split.sqlite"
    shutil.copyfile(FIXTURE, copy)  # never open the checked-in file itself
    opened = EventLog.open(str(copy))
    try:
        yield opened
    finally:
        opened.close()


def _plain(state: dict[str, Any]) -> Any:
    """The state as a snapshot stores it (tuples become lists)."""
    return orjson.loads(orjson.dumps(state))


def _snapshots(log: EventLog, node: str) -> list[tuple[int, Any]]:
    found = []
    snapshot = log.load_snapshot(snapshot_name(node))
    while snapshot is not None:
        found.append((snapshot.seq, orjson.loads(snapshot.state)))
        snapshot = log.load_snapshot(snapshot_name(node), snapshot.seq - 1)
    return found


def test_the_fixture_holds_every_node_and_the_paths_worth_checking(log: EventLog) -> None:
    assert tuple(nodes_in(log)) == NODES
    types = {event.TYPE for node in NODES for _seq, _stream, event in node_events(log, node)}
    for wanted in (
        "direct_path_selected",
        "relay_chosen",
        "relay_session_failed",
        "relay_path_selected",
        "path_upgraded",
        "path_lost",
        "relay_unavailable",
        "observation_rejected",
        "peer_removed",
    ):
        assert wanted in types


@pytest.mark.parametrize("node", NODES)
def test_today_s_engine_re_decides_every_recorded_decision(log: EventLog, node: str) -> None:
    result = verify(log, node)
    assert result.ok, result.divergence
    assert result.observations > 0 and result.decisions > 0


@pytest.mark.parametrize("node", NODES)
def test_the_fold_rebuilds_the_state_the_old_engine_snapshotted(log: EventLog, node: str) -> None:
    snapshots = _snapshots(log, node)
    assert snapshots, "every node ends with a snapshot"
    for seq, stored in snapshots:
        rebuilt, last = rebuild(log, node, until_seq=seq, use_snapshot=False)
        assert last <= seq
        # Restored by today's code (a policy knob added since takes its default), the old
        # engine's snapshot is the state today's fold rebuilds.
        assert _plain(rebuilt.state()) == _plain(Engine.from_state(stored).state()), f"{node} at seq {seq}"


@pytest.mark.parametrize("node", NODES)
def test_rebuilds_agree_with_each_other_and_with_re_deciding(log: EventLog, node: str) -> None:
    from_snapshot, last = rebuild(log, node)
    from_zero, last_zero = rebuild(log, node, use_snapshot=False)
    assert last == last_zero
    live = Engine()
    for index, (_seq, _stream, event) in enumerate(node_events(log, node)):
        if event.KIND != "observation":
            continue
        if index == 0 and type(event) is PolicySet:
            live = Engine(event.policy)
        live.handle(event)
    assert from_snapshot.state() == from_zero.state() == live.state()
    assert from_snapshot.next_deadline() == from_zero.next_deadline()
