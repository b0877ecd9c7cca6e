"""`natrelay plot`: pictures whose content is the log's (issue 15).

A small simulated mesh gives a real log; the SVG of a peer must mark exactly
that peer's decisions (their seqs in <title> elements), the lanes must agree
with the engine's own replay, and bad input is one line with exit code 2.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core import lifecycle as lc
from natrelay.core.events import DirectPathSelected, PathUpgraded, PeerAdded, RelayPathSelected
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild
from natrelay.tools import plot_log
from natrelay.tools.plot_log import DIRECT, NONE, RELAY, PlotError, fold_peer, fold_shares
from tests.conftest import make_key

SVG = "{http://www.w3.org/2000/svg}"


def natrelay(*args: str, cwd: Path | None = None, block: str = "") -> subprocess.CompletedProcess[str]:
    code = "import runpy, sys\n"
    if block:
        code += f"sys.modules[{block!r}] = None\n"
    code += "sys.argv = ['natrelay', *sys.argv[1:]]\n"
    code += "runpy.run_module('natrelay.tools.cli', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mesh of 40 peers over 12 simulated minutes, with its relay outage at 10 minutes."""
    path = tmp_path_factory.mktemp("plot") / "mesh.db"
    scenario = load_scenario("mesh").with_overrides(peers=40, duration_ms=720_000)
    run_policy(scenario, preset("natrelay"), seed=11, log=str(path))
    return path


def peer_rows(path: Path) -> dict[str, list[tuple[int, str]]]:
    """Every peer's (seq, type) of decisions, by name."""
    with sqlite3.connect(path) as db:
        names = {
            stream: name
            for stream, name in db.execute(
                "SELECT stream, json_extract(payload, '$.name') FROM events WHERE type = 'peer_added'"
            )
        }
        decisions = set(lc.TRIGGER_OF_EVENT) | {"observation_rejected"}
        rows: dict[str, list[tuple[int, str]]] = {}
        for seq, stream, kind in db.execute("SELECT seq, stream, type FROM events ORDER BY seq"):
            if stream in names and kind in decisions and kind not in ("peer_added", "peer_removed"):
                rows.setdefault(names[stream], []).append((seq, kind))
    return rows


def busiest(path: Path) -> str:
    """The peer with the most path decisions (it changed path, so its picture has something to show)."""
    counts = Counter(
        name
        for name, rows in peer_rows(path).items()
        for _, kind in rows
        if kind in ("direct_path_selected", "relay_path_selected", "path_upgraded", "path_lost")
    )
    return counts.most_common(1)[0][0]


def test_a_peers_svg_marks_exactly_its_decisions_with_their_seqs(sim_log: Path, tmp_path: Path) -> None:
    name = busiest(sim_log)
    out = tmp_path / "peer.svg"
    result = natrelay("plot", str(sim_log), name, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    svg = out.read_text()
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    titles = {
        group.get("id"): group.find(f"{SVG}title")
        for group in root.iter(f"{SVG}g")
        if (group.get("id") or "").startswith("decision-")
    }
    expected = peer_rows(sim_log)[name]
    assert sorted(titles) == sorted(f"decision-{seq}" for seq, _ in expected)
    for seq, kind in expected:
        title = titles[f"decision-{seq}"]
        assert title is not None and title.text is not None
        assert title.text.startswith(f"seq {seq} at ") and kind in title.text
    assert sorted(plot_log.decision_seqs(svg)) == [seq for seq, _ in expected]
    assert name in svg  # the title names the peer


def test_the_lanes_agree_with_the_engines_replay(sim_log: Path) -> None:
    with EventLog.open(str(sim_log)) as log:
        engine, _ = rebuild(log, "local")
        end = plot_log.last_time(log)
        removed_some = False
        for key, record in engine.peers.items():
            paths = plot_log.peer_paths(log, "local", key)
            removed_some |= bool(paths.removed)
            total = paths.time_on(DIRECT) + paths.time_on(RELAY) + paths.time_on(NONE)
            away = sum(back - gone for gone, back in paths.removed)
            assert total + away == paths.end_ms - paths.start_ms
            for before, after in zip(paths.segments, paths.segments[1:], strict=False):
                contiguous = before.end_ms == after.start_ms
                assert contiguous or (before.end_ms, after.start_ms) in paths.removed
                assert before.seq < after.seq
            if record.state == lc.REMOVED:
                assert paths.removed[-1][1] == end
                continue
            assert paths.segments[-1].end_ms == end
            assert paths.segments[-1].lane == plot_log.lane_of(record.state), key
            if record.state in lc.CONNECTED_STATES:
                assert paths.segments[-1].detail == record.path
        series = plot_log.shares(log, "local")
    final = Counter(plot_log.lane_of(record.state) for record in engine.peers.values())
    assert (series.direct[-1], series.relay[-1], series.none[-1]) == (
        final[DIRECT],
        final[RELAY],
        final[NONE],
    )
    assert series.peers == len(engine.peers)
    assert list(series.times_ms) == sorted(set(series.times_ms))


def test_the_whole_log_picture_and_a_png(sim_log: Path, tmp_path: Path) -> None:
    result = natrelay("plot", str(sim_log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "mesh-peers.svg").read_text()
    assert ET.fromstring(svg).tag == f"{SVG}svg"
    with EventLog.open(str(sim_log)) as log:
        series = plot_log.shares(log, "local")
    summary = f"at the end: {series.direct[-1]} direct, {series.relay[-1]} relayed, {series.none[-1]} no path"
    assert summary in svg
    png = tmp_path / "peer.png"
    assert natrelay("plot", str(sim_log), busiest(sim_log), "--out", str(png)).returncode == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 400


def test_a_decision_the_lifecycle_forbids_is_reported_with_its_seq() -> None:
    key = make_key(1)
    events = [
        (1, f"node/n/peer/{key}", PeerAdded(at=0, peer=key, candidates=("1.2.3.4:5",))),
        (2, f"node/n/peer/{key}", PathUpgraded(at=5, peer=key, endpoint="1.2.3.4:5", relay="r1")),
    ]
    with pytest.raises(
        PlotError, match="event seq 2: path_upgraded does not apply to a peer in state pending"
    ):
        fold_peer(events, key, 10)


def test_the_folds_by_hand() -> None:
    a, b = make_key(1), make_key(2)
    events = [
        (1, f"node/n/peer/{a}", PeerAdded(at=0, peer=a)),
        (2, f"node/n/peer/{b}", PeerAdded(at=0, peer=b)),
        (3, f"node/n/peer/{a}", DirectPathSelected(at=100, peer=a, endpoint="1.2.3.4:5")),
        (4, f"node/n/peer/{a}", DirectPathSelected(at=300, peer=a, endpoint="1.2.3.4:6")),  # roamed
    ]
    paths = fold_peer([e for e in events if e[1].endswith(a)], a, 1000)
    assert [(s.start_ms, s.end_ms, s.lane, s.detail) for s in paths.segments] == [
        (0, 100, NONE, ""),
        (100, 300, DIRECT, "1.2.3.4:5"),
        (300, 1000, DIRECT, "1.2.3.4:6"),
    ]
    assert [(m.seq, m.changed_lane) for m in paths.decisions] == [(3, True), (4, False)]
    series = fold_shares(events, 1000)
    assert series.times_ms == (0, 100)
    assert (series.direct, series.relay, series.none) == ((0, 1), (0, 0), (2, 1))
    with pytest.raises(PlotError, match="event seq 9"):
        fold_peer([(9, "s", RelayPathSelected(at=1, peer=a, relay="r1", session="s1"))], a, 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plot", "missing.db"), "no log at missing.db"),
        (("plot", "{log}", "nobody"), "no peer 'nobody' in this log"),
        (("plot", "{log}", "--out", "x.gif"), "--out x.gif: the picture's suffix picks its format"),
        (("plot", "{log}", "--node", "mars"), "node 'mars' has no events"),
    ],
)
def test_plot_usage_errors_are_one_line_exit_2(
    sim_log: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = natrelay(*(a.format(log=sim_log) for a in args), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(p.suffix in (".svg", ".gif") for p in tmp_path.iterdir())


def test_without_matplotlib_plot_names_the_sim_extra(sim_log: Path, tmp_path: Path) -> None:
    result = natrelay("plot", str(sim_log), cwd=tmp_path, block="matplotlib")
    assert result.returncode == 2
    assert "pip install 'natrelay[sim]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []
