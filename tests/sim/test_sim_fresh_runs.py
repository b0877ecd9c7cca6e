"""`natrelay simulate` never carries on from a previous run's logs (issue 15).

A scenario with several local NATs writes one log per local NAT. Running it
twice into the same --out used to reopen those logs and append to them: the
second run reported 0 % connectivity (its node believed the peers were already
handled), its JSON named a log file that did not exist, and with another seed
the two runs were mixed in one log that `replay --verify` still accepted.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from natrelay.adapters.sim.run import SimulationError, log_files, run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core.presets import preset

TWO_NATS = """
name = "two"
duration_s = 90
peers = 12

[local]
nat = ["full_cone", "symmetric"]

[mix]
full_cone = 1
port_restricted_cone = 1

[[relays]]
id = "eu"
rtt_ms = 20
"""


def simulate(out: Path, scenario: Path, seed: int) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "natrelay.tools.cli",
            "simulate",
            "--scenario",
            str(scenario),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--json",
            "--no-plot",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def rows(path: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, stream, type, event_time, payload FROM events ORDER BY seq").fetchall()


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "two.toml"
    path.write_text(TWO_NATS)
    return path


def test_a_second_run_into_the_same_out_starts_afresh(tmp_path: Path, scenario: Path) -> None:
    out = tmp_path / "out"
    first = simulate(out, scenario, seed=5)
    second = simulate(out, scenario, seed=5)
    natrelay = next(row for row in second["policies"] if row["name"] == "natrelay")
    assert natrelay["connectivity"] > 0.5
    assert second["policies"] == [
        {**row, "wall_s": second_row["wall_s"]}
        for row, second_row in zip(first["policies"], second["policies"], strict=True)
    ]
    paths = [entry["path"] for entry in second["logs"]]
    assert [entry["local_nat"] for entry in second["logs"]] == ["full_cone", "symmetric"]
    assert paths == [str(out / "two-full_cone.db"), str(out / "two-symmetric.db")]
    assert second["log"] is None  # several logs: no single one to name
    for path in paths:
        assert Path(path).is_file()
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".db") == sorted(Path(p).name for p in paths)


def test_another_seed_into_the_same_out_leaves_no_trace_of_the_first(tmp_path: Path, scenario: Path) -> None:
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    simulate(reused, scenario, seed=1)
    simulate(reused, scenario, seed=2)
    simulate(fresh, scenario, seed=2)
    for name in ("two-full_cone.db", "two-symmetric.db"):
        assert rows(str(reused / name)) == rows(str(fresh / name)), name


def test_one_local_nat_names_its_single_log(tmp_path: Path) -> None:
    scenario = tmp_path / "one.toml"
    scenario.write_text(TWO_NATS.replace('nat = ["full_cone", "symmetric"]', 'nat = "full_cone"'))
    report = simulate(tmp_path / "out", scenario, seed=3)
    assert report["log"] == str(tmp_path / "out" / "two.db")
    assert report["logs"] == [{"local_nat": "full_cone", "path": report["log"]}]
    assert Path(report["log"]).is_file()


def test_run_policy_refuses_a_log_that_already_holds_events(tmp_path: Path) -> None:
    scenario = load_scenario("matrix").with_overrides(peers=7, duration_ms=30_000)
    log = tmp_path / "m.db"
    run_policy(scenario, preset("natrelay"), seed=1, log=str(log))
    written = log_files(scenario, str(log))
    assert len(written) == 7 and all(Path(p).is_file() for p in written)
    with pytest.raises(SimulationError, match=r"already hold events: .*m-none\.db"):
        run_policy(scenario, preset("natrelay"), seed=1, log=str(log))
