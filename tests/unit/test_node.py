"""The node loop on a real SQLite log: atomic batches, resume after a crash, no state past the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.commands import TryDirectEndpoint
from natrelay.core.events import PeerAdded, PeerRemoved, RelayAnnounced, stream_of
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild, verify
from tests.conftest import make_key, policy

P, Q = make_key(1), make_key(2)
A, B = "198.51.100.1:51820", "192.168.1.2:51820"


def mesh(network: MemoryNetwork) -> None:
    network.answering[(P, B)] = 20
    network.relays["r1"] = 40


def test_each_observation_is_appended_with_its_decisions_in_one_batch(sqlite_log: EventLog) -> None:
    network = MemoryNetwork()
    mesh(network)
    node = Node(sqlite_log, network, node="n1", policy=policy())
    reaction = node.observe(PeerAdded(at=0, peer=P, candidates=(A, B)))
    stored = list(sqlite_log.read())
    assert [s.type for s in stored][-3:] == ["peer_added", "direct_attempt_started", "direct_attempt_started"]
    assert {s.stream for s in stored[-3:]} == {stream_of(reaction.decisions[0], "n1")}
    assert stored[-1].stream == f"node/n1/peer/{P}"
    assert [c for c in network.executed if isinstance(c, TryDirectEndpoint)] == list(reaction.commands)


def test_a_restarted_node_resumes_from_the_log_and_decides_the_same(tmp_path: Path) -> None:
    path = str(tmp_path / "mesh.sqlite")

    def run(split: bool) -> list[tuple[str, str, bytes]]:
        target = str(tmp_path / f"{split}.sqlite")
        network = MemoryNetwork()
        mesh(network)
        log = EventLog.open(target, clock=lambda: 0)
        node = Node(log, network, node="n1", policy=policy(min_direct_attempts=2), snapshot_every=5)
        node.observe(RelayAnnounced(at=0, relay="r1", region="eu"))
        node.observe(PeerAdded(at=0, peer=P, candidates=(A, B)))
        node.observe(PeerAdded(at=0, peer=Q, candidates=(A,)))
        node.run_until(30_000)
        if split:
            log.close()  # the node "crashes": only the log survives
            log = EventLog.open(target, clock=lambda: 0)
            node = Node(log, network, node="n1", policy=policy(min_direct_attempts=2), snapshot_every=5)
        node.run_until(300_000)
        rows = [(s.stream, s.type, s.payload) for s in log.read()]
        assert verify(log, "n1").ok
        log.close()
        return rows

    assert run(split=True) == run(split=False)
    del path


def test_snapshot_plus_tail_equals_a_full_replay(sqlite_log: EventLog) -> None:
    network = MemoryNetwork()
    mesh(network)
    node = Node(sqlite_log, network, node="n1", policy=policy(min_direct_attempts=1), snapshot_every=3)
    node.observe(RelayAnnounced(at=0, relay="r1", region="eu"))
    for peer in (P, Q):
        node.observe(PeerAdded(at=0, peer=peer, candidates=(A, B)))
    node.run_until(120_000)
    assert sqlite_log.load_snapshot("engine:n1") is not None
    from_snapshot, last = rebuild(sqlite_log, "n1")
    from_zero, last_zero = rebuild(sqlite_log, "n1", use_snapshot=False)
    assert last == last_zero == sqlite_log.last_seq()
    assert from_snapshot.state() == from_zero.state() == node.engine.state()


def test_time_travel_gives_the_state_as_of_any_seq(sqlite_log: EventLog) -> None:
    network = MemoryNetwork()
    mesh(network)
    node = Node(sqlite_log, network, node="n1", policy=policy())
    node.observe(PeerAdded(at=0, peer=P, candidates=(A, B)))
    first = sqlite_log.last_seq()
    node.run_until(10_000)
    early, seq = rebuild(sqlite_log, "n1", until_seq=first)
    assert seq == first
    assert early.peers[P].state == "direct_trying"
    assert node.engine.peers[P].state == "direct_connected"


class FailingLog:
    """An EventLog whose appends fail after a while (disk full, database gone)."""

    def __init__(self, log: EventLog, fail_after: int) -> None:
        self._log = log
        self.fail_after = fail_after

    def append(self, items, expected_versions=None):  # type: ignore[no-untyped-def]
        if self.fail_after <= 0:
            raise OSError("disk full")
        self.fail_after -= 1
        return self._log.append(items, expected_versions)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._log, name)


def test_a_failed_append_leaves_the_engine_no_further_than_the_log(sqlite_log: EventLog) -> None:
    network = MemoryNetwork()
    failing = FailingLog(sqlite_log, fail_after=2)
    node = Node(failing, network, node="n1", policy=policy())  # type: ignore[arg-type]
    node.observe(PeerAdded(at=0, peer=P, candidates=(A,)))
    committed = node.engine.state()
    executed = len(network.executed)
    with pytest.raises(OSError, match="disk full"):
        node.observe(PeerAdded(at=1, peer=Q, candidates=(B,)))
    assert Q not in node.engine.peers
    assert node.engine.state()["peers"] == committed["peers"]
    assert len(network.executed) == executed, "no command runs for a decision that was not logged"
    assert [s.type for s in sqlite_log.read()].count("peer_added") == 1


def test_batched_nodes_flush_every_n_observations(sqlite_log: EventLog) -> None:
    network = MemoryNetwork()
    node = Node(sqlite_log, network, node="n1", policy=policy(), flush_every=3)
    assert sqlite_log.last_seq() == 0, "the PolicySet waits in the batch"
    node.observe(PeerAdded(at=0, peer=P, candidates=(A,)))
    assert sqlite_log.last_seq() == 0
    node.observe(PeerAdded(at=0, peer=Q, candidates=(B,)))
    assert sqlite_log.last_seq() == node.last_seq > 0, "the third observation flushed all three"
    flushed = sqlite_log.last_seq()
    node.observe(PeerRemoved(at=1, peer=Q))
    assert sqlite_log.last_seq() == flushed, "one observation is not yet a batch"
    node.flush()
    assert sqlite_log.last_seq() > flushed
    assert verify(sqlite_log, "n1").ok
