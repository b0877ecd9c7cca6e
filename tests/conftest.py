"""Shared test helpers: stable keys, and a fresh SQLite log per test."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog

#: The policy the unit tests reason about, pinned so that tuning the defaults
#: (the simulator's job) does not silently change what a test proves.
CLASSIC = Policy(
    name="classic-direct-first",
    mode="direct_first",
    step_interval_ms=500,
    attempt_timeout_ms=1000,
    parallel_endpoints=2,
    upgrade_probe_interval_ms=2000,
    upgrade_probe_cap_ms=60_000,
    upgrade_probe_on_relay=False,
)


def policy(**changes: object) -> Policy:
    """CLASSIC with some fields changed."""
    import attrs

    return attrs.evolve(CLASSIC, **changes)


def make_key(index: int) -> str:
    """A valid WireGuard public key, stable for `index`."""
    return base64.b64encode(hashlib.sha256(f"test-peer-{index}".encode()).digest()).decode()


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Iterator[EventLog]:
    log = EventLog.open(str(tmp_path / "log.sqlite"))
    try:
        yield log
    finally:
        log.close()
