"""`natrelay fleet`: two nodes sharing one log, aggregated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.events import NatObserved, PeerAdded, RelayAnnounced, RelayHealthMeasured
from natrelay.eventlog import EventLog
from natrelay.tools.fleet import fleet_report
from tests.conftest import make_key, policy

A, B = "198.51.100.1:51820", "198.51.100.2:51820"


def build_fleet(path: Path) -> None:
    with EventLog.open(str(path)) as log:
        first = Node(log, MemoryNetwork(relays={"good": 30}), node="alpha", policy=policy())
        first.observe(RelayAnnounced(at=0, relay="good", region="eu"))
        first.observe(RelayAnnounced(at=0, relay="flaky", region="us"))
        first.observe(RelayHealthMeasured(at=0, relay="good", rtt_ms=40, load=10))
        first.observe(RelayHealthMeasured(at=0, relay="flaky", rtt_ms=5, load=10))
        first.observe(NatObserved(at=0, nat_type="symmetric"))
        first.network.answering[(make_key(1), A)] = 20  # type: ignore[attr-defined]
        first.observe(PeerAdded(at=0, peer=make_key(1), candidates=(A,), nat_type="full_cone"))
        first.observe(PeerAdded(at=0, peer=make_key(2), candidates=(B,), nat_type="symmetric", name="nas"))
        first.run_until(120_000)
        second = Node(log, MemoryNetwork(), node="beta", policy=policy())
        second.observe(NatObserved(at=0, nat_type="full_cone"))
        second.network.answering[(make_key(3), A)] = 20  # type: ignore[attr-defined]
        second.observe(PeerAdded(at=0, peer=make_key(3), candidates=(A,), nat_type="full_cone"))
        second.run_until(60_000)


def test_the_fleet_report_aggregates_every_node(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    build_fleet(path)
    with EventLog.open(str(path)) as log:
        report = fleet_report(log)
    assert report.nodes == ("alpha", "beta")
    cells = {(c.node_nat, c.peer_nat): (c.peers, c.direct) for c in report.matrix}
    assert cells == {
        ("symmetric", "full_cone"): (1, 1),
        ("symmetric", "symmetric"): (1, 0),
        ("full_cone", "full_cone"): (1, 1),
    }
    ranked = [r.relay for r in report.relays]
    assert ranked[0] == "good", "the relay that carried sessions ranks above the one that refused"
    good = report.relays[0]
    assert good.sessions_ok >= 1 and good.peers_now == 1 and good.rtt_ms == 40
    assert [s.name for s in report.stuck] == ["nas"]
    assert report.stuck[0].relay == "good"


def test_the_fleet_command_prints_json(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    build_fleet(path)
    result = subprocess.run(
        [sys.executable, "-m", "natrelay.tools.cli", "fleet", str(path), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"nodes", "relays", "nat_matrix", "stuck_on_relay"}
    assert data["relays"][0]["relay"] == "good"
