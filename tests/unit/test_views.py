"""Fast views: status, explain and timeline read the newest snapshot, the tail and the indexes only.

The proof that they do not read the log through: damage a row that is neither
in the tail nor in the peer's stream. The views still answer (they never read
it); a replay from seq 0 trips over it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.events import PeerAdded, RelayAnnounced
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import nodes_in, rebuild
from natrelay.tools import views
from natrelay.tools.demo import demo_key
from natrelay.tools.inspect_log import LookupError_


def natrelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natrelay.tools.cli", *args], capture_output=True, text=True)


def mesh_log(path: Path, *, peers: int = 30, snapshot_every: int | None = 200) -> Path:
    network = MemoryNetwork(relays={"r1": 60})
    with EventLog.open(str(path)) as log:
        node = Node(log, network, node="n1", snapshot_every=snapshot_every, flush_every=50)
        node.observe(RelayAnnounced(at=0, relay="r1", region="eu"))
        for index in range(peers):
            key = demo_key(index)
            endpoint = f"198.51.100.{index + 1}:51820"
            if index % 2:
                network.answering[(key, endpoint)] = 30
            node.observe(PeerAdded(at=index, peer=key, candidates=(endpoint,), name=f"peer-{index:02d}"))
        node.run_until(1_800_000)
    return path


def test_the_node_snapshots_by_itself(tmp_path: Path) -> None:
    path = mesh_log(tmp_path / "log.db")
    with EventLog.open(str(path), create=False) as log:
        snapshot = log.load_snapshot("engine:n1")
        assert snapshot is not None and snapshot.seq > log.last_seq() // 2
        assert rebuild(log, "n1")[0].state() == rebuild(log, "n1", use_snapshot=False)[0].state()


def test_views_never_read_what_they_do_not_need(tmp_path: Path) -> None:
    path = mesh_log(tmp_path / "log.db")
    victim, survivor = demo_key(3), demo_key(5)
    with EventLog.open(str(path), create=False) as log:
        snapshot = log.load_snapshot("engine:n1")
        assert snapshot is not None
        before = [s.seq for s in log.read(streams=[f"node/n1/peer/{victim}"]) if s.seq < snapshot.seq]
    with sqlite3.connect(path) as db:  # the victim's first event, long before the snapshot
        db.execute("UPDATE events SET payload = x'7b' WHERE seq = ?", (before[0],))
    status = natrelay("status", str(path), "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["peers"]) == 30
    timeline = natrelay("timeline", str(path), "peer-05", "--json")
    assert timeline.returncode == 0, timeline.stderr
    assert {row["type"] for row in json.loads(timeline.stdout)} >= {"peer_added", "direct_path_selected"}
    explain = natrelay("explain", str(path), survivor[:8])
    assert explain.returncode == 0 and "now: " in explain.stdout, explain.stderr
    full = natrelay("replay", str(path), "--from-zero")
    assert full.returncode == 2 and f"event seq {before[0]}" in full.stderr


def test_a_view_of_a_log_without_snapshots_leaves_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mesh_log(tmp_path / "log.db", snapshot_every=None)
    monkeypatch.setattr(views, "SNAPSHOT_AFTER_TAIL", 100)
    with EventLog.open(str(path), create=False) as log:
        assert log.load_snapshot("engine:n1") is None
        engine, last = views.view_engine(log, "n1")
        snapshot = log.load_snapshot("engine:n1")
        assert snapshot is not None and snapshot.seq == last
        assert views.view_engine(log, "n1")[0].state() == engine.state()


def test_nodes_and_peers_are_found_by_index(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    names = ["a", "a.b", "a-b", "ab", "b", "z/"]
    with EventLog.open(str(path)) as log:
        for number, node in enumerate(names):
            key = demo_key(number)
            event = PeerAdded(at=1, peer=key, candidates=(), name="same" if number < 2 else f"p{number}")
            log.append([(f"node/{node}/peer/{key}", event)])
        log.append([("relay/r1", RelayAnnounced(at=1, relay="r1", region="eu"))])
        assert nodes_in(log) == ["a", "a-b", "a.b", "ab", "b", "z"]
        assert views.find_peer(log, "ab", "p3") == demo_key(3)
        assert views.find_peer(log, "ab", demo_key(3)[:5]) == demo_key(3)
        assert views.find_peer(log, "a", demo_key(0)) == demo_key(0)
        assert views.find_peer(log, "a", "same") == demo_key(0)
        with pytest.raises(LookupError_, match="no peer 'p3'"):
            views.find_peer(log, "a", "p3")
        log.append(
            [(f"node/a/peer/{demo_key(9)}", PeerAdded(at=2, peer=demo_key(9), candidates=(), name="same"))]
        )
        with pytest.raises(LookupError_, match="'same' names 2 peers"):
            views.find_peer(log, "a", "same")
