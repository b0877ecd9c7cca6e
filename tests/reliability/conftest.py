"""Helpers for the reliability tests: the CLI as a process, a small finished log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.eventlog import EventLog
from natrelay.tools.demo import run_demo


def natrelay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `natrelay` command line as a user does: a real process, real exit codes."""
    return subprocess.run(
        [sys.executable, "-m", "natrelay.tools.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-peer demo mesh (never modified: tests copy it)."""
    path = tmp_path_factory.mktemp("reliability") / "small.sqlite"
    with EventLog.open(str(path)) as log:
        run_demo(log, peers=4)
    return path


def copy_log(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target
