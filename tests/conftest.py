"""Shared test helpers: stable keys, and a fresh SQLite log per test."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.eventlog import EventLog


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
