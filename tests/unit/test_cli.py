"""The command line, run as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.eventlog import EventLog
from natrelay.tools.demo import demo_key, run_demo


def natrelay(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natrelay.tools.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "demo.sqlite"
    with EventLog.open(str(path)) as log:
        run_demo(log)
    return path


def test_status_lists_every_peer_with_state_and_path(demo_log: Path) -> None:
    result = natrelay("status", str(demo_log), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["node"] == "demo"
    states = {row["name"]: (row["state"], row["path"]) for row in data["peers"]}
    assert len(states) == 12
    assert states["peer-00"][0] == "direct_connected"
    assert states["peer-02"] == ("relay_connected", "relay us-1")
    table = natrelay("status", str(demo_log))
    assert "peer-02" in table.stdout and "relay us-1" in table.stdout


def test_explain_cites_seqs_the_threshold_and_the_failover(demo_log: Path) -> None:
    result = natrelay("explain", str(demo_log), "peer-02")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "3 direct rounds failed; the threshold is 3" in text
    assert "chose relay eu-1" in text and "ranking: eu-1 0.742, us-1 0.705" in text
    assert "failover after eu-1" in text
    assert "now: relayed through us-1" in text
    lines = [line for line in text.splitlines() if line.startswith("seq")]
    seqs = [int(line.split()[1]) for line in lines]
    assert seqs == sorted(seqs) and len(seqs) >= 5


def test_explain_accepts_a_key_prefix_and_timeline_shows_the_events(demo_log: Path) -> None:
    key = demo_key(0)
    assert natrelay("explain", str(demo_log), key[:12]).returncode == 0
    result = natrelay("timeline", str(demo_log), key, "--json")
    rows = json.loads(result.stdout)
    assert rows[0]["type"] == "peer_added"
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert "direct_path_selected" in {r["type"] for r in rows}


def test_replay_verify_passes_on_an_honest_log_and_time_travel_works(demo_log: Path) -> None:
    result = natrelay("replay", str(demo_log), "--verify")
    assert result.returncode == 0, result.stderr
    assert "identical decisions" in result.stdout
    early = natrelay("replay", str(demo_log), "--until", "20")
    assert early.returncode == 0
    assert "as of seq 20" in early.stdout


def test_replay_verify_reports_the_seq_of_a_forged_decision(tmp_path: Path, demo_log: Path) -> None:
    forged = tmp_path / "forged.sqlite"
    forged.write_bytes(demo_log.read_bytes())
    with sqlite3.connect(forged) as db:
        seq, payload = db.execute(
            "SELECT seq, payload FROM events WHERE type = 'relay_chosen' ORDER BY seq LIMIT 1"
        ).fetchone()
        row = json.loads(payload)
        row["relay"] = "us-1" if row["relay"] == "eu-1" else "eu-1"
        # the test forges the file behind natrelay's back; natrelay itself never updates a row
        db.execute("UPDATE events SET payload = ? WHERE seq = ?", (json.dumps(row).encode(), seq))
    result = natrelay("replay", str(forged), "--verify")
    assert result.returncode == 1
    assert f"seq {seq}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "missing.sqlite"), "no log at missing.sqlite"),
        (("status", "nosuchdb://x"), "natrelay: "),
        (("explain", "{log}", "nobody"), "no peer 'nobody' in this log"),
        (("status", "{log}", "--node", "mars"), "node 'mars' has no events"),
        # a directory where a log file should be (was a SQLAlchemy traceback)
        (("replay", "{dir}"), "it is a directory, not a log file"),
        (("status", "{dir}"), "it is a directory, not a log file"),
    ],
)
def test_user_errors_are_one_line_and_exit_code_2(
    demo_log: Path, args: tuple[str, ...], message: str
) -> None:
    result = natrelay(*(a.format(log=demo_log, dir=demo_log.parent) for a in args))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_corrupt_row_is_reported_with_its_seq(tmp_path: Path, demo_log: Path) -> None:
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(demo_log.read_bytes())
    with sqlite3.connect(broken) as db:
        db.execute("UPDATE events SET payload = x'7b6e6f' WHERE seq = 30")
    result = natrelay("replay", str(broken))
    assert result.returncode == 2
    assert "event seq 30" in result.stderr


def test_diagram_prints_the_lifecycle_in_mermaid() -> None:
    result = natrelay("diagram")
    assert result.returncode == 0
    assert "stateDiagram-v2" in result.stdout
    assert "relay_connected --> direct_connected: upgrade" in result.stdout


def test_demo_writes_a_log_and_refuses_to_overwrite_one(tmp_path: Path) -> None:
    first = natrelay("demo", "--log", "d.sqlite", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "events written to d.sqlite" in first.stdout
    again = natrelay("demo", "--log", "d.sqlite", cwd=tmp_path)
    assert again.returncode == 2
    assert "exists" in again.stderr


def test_status_follow_prints_each_change_as_it_is_appended(tmp_path: Path) -> None:
    import time

    from natrelay.adapters.memory import MemoryNetwork
    from natrelay.adapters.node import Node
    from natrelay.core.events import HandshakeObserved, PeerAdded
    from tests.conftest import make_key, policy

    path = tmp_path / "live.sqlite"
    log = EventLog.open(str(path))
    node = Node(log, MemoryNetwork(), node="live", policy=policy())
    node.observe(PeerAdded(at=0, peer=make_key(1), candidates=("198.51.100.1:5",), name="web"))
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "natrelay.tools.cli",
            "status",
            str(path),
            "--follow",
            "--json",
            "--poll",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert [p["state"] for p in first["peers"]] == ["direct_trying"]
        time.sleep(0.3)
        node.observe(HandshakeObserved(at=50, peer=make_key(1), endpoint="198.51.100.1:5"))
        change = json.loads(follower.stdout.readline())
        assert change["state"] == "direct_connected"
        assert change["path"] == "198.51.100.1:5"
        assert change["seq"] == log.last_seq()
    finally:
        follower.terminate()
        follower.wait(10)
        log.close()
