"""Schema evolution through a stored log: a v1 row is upcast on read, never rewritten.

The change is one a relay announcement could really make: version 1 said how
long the offer lasts (`lifetime_ms`, relative to `at`), version 2 says when it
ends (`expires_at`, absolute), which is what `RelayAnnounced` holds today. The
test plays the newer natrelay: it bumps the class's VERSION and registers the
upcaster (both undone after the test), while the log holds a row an older
natrelay wrote.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core import codec
from natrelay.core.events import EVENT_TYPES, PeerAdded, PolicySet, RelayAnnounced
from natrelay.core.policy import Policy
from natrelay.eventlog import DecodeError, EventLog, records
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import rebuild, verify
from tests.conftest import make_key
from tests.reliability.conftest import natrelay

PEER = make_key(7)
V1_ROW = {"at": 1_000, "relay": "r-old", "region": "eu", "capacity": 10, "lifetime_ms": 3_600_000}


@pytest.fixture
def relay_announced_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RelayAnnounced, "VERSION", 2)
    monkeypatch.setattr(codec, "_UPCASTERS", dict(codec._UPCASTERS))
    monkeypatch.setattr(records, "_CURRENT", {(cls.TYPE, cls.VERSION): cls for cls in EVENT_TYPES.values()})

    @codec.register_upcaster("relay_announced", 1)
    def lifetime_to_expiry(data: dict[str, object]) -> dict[str, object]:
        lifetime = data.pop("lifetime_ms", None)
        at = data["at"]
        data["expires_at"] = None if lifetime is None else int(at) + int(lifetime)  # type: ignore[call-overload]
        return data


def old_log(path: Path) -> Path:
    """A log as an older natrelay left it: a policy, then a v1 relay announcement."""
    with EventLog.open(str(path)) as log:
        log.append([("node/n1", PolicySet(at=0, policy=Policy(mode="direct_first", min_direct_attempts=1)))])
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO events VALUES (2, 'relay/r-old', 1, 'relay_announced', 1, 1000, 1000, ?)",
            (orjson.dumps(V1_ROW),),
        )
    return path


def test_a_v1_row_is_upcast_on_read_and_the_node_carries_on(relay_announced_v2: None, tmp_path: Path) -> None:
    path = old_log(tmp_path / "old.sqlite")
    with EventLog.open(str(path), create=False) as log:
        _seq, _stream, event = list(log.read_events())[1]
        assert event == RelayAnnounced(
            at=1_000, relay="r-old", region="eu", capacity=10, expires_at=3_601_000
        )
        engine, _ = rebuild(log, "n1")
        assert engine.registry.knows("r-old")
        # The node decides with the upcast announcement: a peer that never answers goes through r-old.
        node = Node(log, MemoryNetwork(relays={"r-old": 20}), node="n1")
        node.observe(PeerAdded(at=2_000, peer=PEER, candidates=("198.51.100.9:51820",)))
        node.observe(RelayAnnounced(at=2_000, relay="r-new", region="us"))
        node.run_until(20_000)
        assert node.engine.peers[PEER].path == "r-old"
        assert verify(log, "n1").ok
        assert check_log(log).ok
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT schema_version, payload FROM events WHERE seq = 2").fetchone()
        newer = db.execute("SELECT schema_version FROM events WHERE stream = 'relay/r-new'").fetchone()
    assert stored == (1, orjson.dumps(V1_ROW)), "the v1 row is never rewritten"
    assert newer == (2,)


def test_without_the_upcaster_the_old_row_is_one_clear_error(
    relay_announced_v2: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_log(tmp_path / "old.sqlite")
    monkeypatch.setattr(codec, "_UPCASTERS", {})
    with EventLog.open(str(path), create=False) as log, pytest.raises(DecodeError) as caught:
        list(log.read_events())
    assert caught.value.seq == 2
    assert "no upcaster for relay_announced from schema version 1" in str(caught.value)


def test_an_older_natrelay_refuses_a_newer_row_and_check_lists_it(tmp_path: Path) -> None:
    path = old_log(tmp_path / "old.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET schema_version = 2 WHERE seq = 2")  # written by a newer natrelay
    result = natrelay("replay", "--check", str(path))
    assert result.returncode == 1
    assert "seq 2 (relay_announced v2" in result.stdout
    assert "newer than this natrelay understands (1); upgrade natrelay" in result.stdout
