"""Helpers for the reliability tests: the CLI as a process, a small finished log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.core.events import (
    CandidatesUpdated,
    Event,
    HandshakeObserved,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelaySessionFailed,
    stream_of,
)
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from tests.conftest import make_key


def natrelay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `natrelay` command line as a user does: a real process, real exit codes."""
    return subprocess.run(
        [sys.executable, "-m", "natrelay.tools.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed log of node `demo` with a known layout (never modified: tests copy it).

    Seqs 1-3: the policy and two relay announcements; then 4 rows per peer i
    (0-9), all in the peer's stream: seq 4+4i peer_added, 5+4i
    handshake_observed, 6+4i relay_session_failed, 7+4i candidates_updated.
    Observations only, so the layout does not depend on what the engine decides.
    """
    path = tmp_path_factory.mktemp("reliability") / "small.sqlite"
    items: list[tuple[str, Event]] = [
        ("node/demo", PolicySet(at=0, policy=Policy())),
        ("relay/r1", RelayAnnounced(at=10, relay="r1", region="eu")),
        ("relay/r2", RelayAnnounced(at=20, relay="r2", region="us")),
    ]
    for i in range(10):
        peer, at = make_key(100 + i), 100 * (i + 1)
        endpoint = f"198.51.100.{i + 1}:51820"
        for event in (
            PeerAdded(at=at, peer=peer, name=f"peer-{i}", candidates=(endpoint,)),
            HandshakeObserved(at=at + 1, peer=peer, endpoint=endpoint),
            RelaySessionFailed(at=at + 2, peer=peer, relay="r1", reason="refused"),
            CandidatesUpdated(at=at + 3, peer=peer, candidates=(endpoint, "10.0.0.2:51820")),
        ):
            items.append((stream_of(event, "demo"), event))
    with EventLog.open(str(path)) as log:
        log.append(items)
    return path


def copy_log(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target
