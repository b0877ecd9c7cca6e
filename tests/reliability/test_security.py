"""Security: credentials never leak, the log is 0600, hostile strings are inert.

- TURN credentials (from the environment or a credential file) appear neither
  in the log's bytes, nor in `status`, `explain`, `timeline` output, nor in
  error messages; the agent is driven through `start()` and a few steps with a
  fake WireGuard.
- The log file and its -wal and -shm files are created with mode 0600.
- Peer names, reasons and other outside text are stored through SQL parameters
  (an injection attempt is just a name) and printed without terminal escapes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.mesh.agent import Agent
from natrelay.adapters.mesh.agent_config import ConfigError, load_config
from natrelay.adapters.mesh.turn_relay import TurnError
from natrelay.adapters.mesh.wireguard import InterfaceStatus, PeerConfig, PeerStatus
from natrelay.adapters.node import Node
from natrelay.core.events import PeerAdded, RelayAnnounced
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from tests.conftest import make_key
from tests.reliability.conftest import natrelay

USER, PASSWORD = "turn-user-7f3a", "s3cr3t-Pa55w0rd-9c1e"
ME, PEER = make_key(50), make_key(51)
HOSTILE = "\x1b[2J\x1b]0;pwned\x07evil\x1b[31m"


@attrs.define
class FakeWireGuard:
    """Just enough of adapters.wireguard.WireGuard for the agent's start and steps."""

    peers: dict[str, PeerStatus] = attrs.field(factory=dict)

    def show(self, only: object = None) -> InterfaceStatus:
        return InterfaceStatus(ME, 51820, None, tuple(self.peers.values()))

    def add_peer(self, peer: PeerConfig) -> None:
        self.peers[peer.public_key] = PeerStatus(peer.public_key, None, peer.allowed_ips, 0, 0, 0, None)

    def add_peers(self, peers: list[PeerConfig]) -> None:
        for peer in peers:
            self.add_peer(peer)

    def generations(self) -> dict[str, int]:
        return {}

    def generation(self, public_key: str) -> int:
        return 0

    def remove_peer(self, public_key: str) -> None:
        self.peers.pop(public_key, None)

    def set_endpoint(self, public_key: str, endpoint: str, *, handshake_now: bool = True) -> None:
        self.peers[public_key] = attrs.evolve(self.peers[public_key], endpoint=endpoint)


def agent_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
node = "a"
data_plane = "endpoint"
advertise_reflexive = false

[credentials]
username_env = "T_USER"
password_env = "T_PASS"

[policy]
mode = "direct_first"
min_direct_attempts = 50

[[peers]]
name = "b"
public_key = "{PEER}"
allowed_ips = ["10.9.0.2/32"]
endpoints = ["198.51.100.20:51820"]

[[relays]]
id = "r1"
url = "turn:203.0.113.11:3478?transport=udp"
region = "lab"
"""
    )
    return path


def assert_no_secret(text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert PASSWORD.encode() not in data and USER.encode() not in data


def test_relay_credentials_never_reach_the_log_the_views_or_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_USER", USER)
    monkeypatch.setenv("T_PASS", PASSWORD)
    log_path = tmp_path / "agent.sqlite"
    config = load_config(agent_config(tmp_path))
    agent = Agent(config, "wg-test", str(log_path), startup_wait=0, wireguard=FakeWireGuard())  # type: ignore[arg-type]
    agent.start()
    for _ in range(3):
        agent.step()
    assert agent._credentials["r1"].password == PASSWORD  # loaded, so it had a chance to leak
    assert_no_secret(repr(agent._credentials) + str(agent._credentials["r1"]) + repr(agent))
    agent.rendezvous.close()
    agent.log.close()
    for file in tmp_path.glob("agent.sqlite*"):
        assert_no_secret(file.read_bytes())
    for args in (
        ("status",),
        ("explain", "b"),
        ("timeline", "b"),
        ("replay", "--verify"),
        ("replay", "--check"),
    ):
        result = natrelay(args[0], str(log_path), *args[1:])
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout + result.stderr)
    # Missing credentials name the variables, not values; a malformed file is not echoed.
    monkeypatch.delenv("T_PASS")
    with pytest.raises(TurnError) as caught:
        config.relays[0].credentials.load()
    assert "T_PASS" in str(caught.value)
    assert_no_secret(str(caught.value))
    bad = tmp_path / "turn.cred"
    bad.write_text(PASSWORD)  # no "user:" part
    with pytest.raises((TurnError, ConfigError)) as caught_file:
        attrs.evolve(config.relays[0].credentials, file=str(bad)).load()
    assert_no_secret(str(caught_file.value))


def test_the_log_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "private.sqlite"
        with EventLog.open(str(path)) as log:
            log.append([("relay/r1", RelayAnnounced(at=1, relay="r1", region="eu"))])
            files = sorted(tmp_path.glob("private.sqlite*"))
            assert [f.name for f in files] == ["private.sqlite", "private.sqlite-shm", "private.sqlite-wal"]
            for file in files:
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    finally:
        os.umask(old)


def hostile_log(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.sqlite"
    with EventLog.open(str(path)) as log:
        node = Node(log, MemoryNetwork(relays={}), node="n1", policy=Policy(mode="relay_first"))
        node.observe(RelayAnnounced(at=0, relay="r1", region="eu"))
        node.observe(PeerAdded(at=0, peer=PEER, name=HOSTILE, candidates=("198.51.100.1:51820",)))
        node.observe(PeerAdded(at=0, peer=ME, name="x'); DROP TABLE events; --"))
        node.run_until(30_000)  # r1 refuses: reasons and paths are printed too
    return path


def test_hostile_strings_are_stored_as_data_and_printed_without_escapes(tmp_path: Path) -> None:
    path = hostile_log(tmp_path)
    with EventLog.open(str(path), create=False) as log:
        names = {e.name for _s, _t, e in log.read_events() if isinstance(e, PeerAdded)}
    assert names == {HOSTILE, "x'); DROP TABLE events; --"}  # stored exactly, the table is still there
    outputs: list[Any] = [
        natrelay("status", str(path)),
        natrelay("explain", str(path), PEER[:10]),
        natrelay("explain", str(path), PEER[:10], "--full"),
        natrelay("timeline", str(path), PEER[:10]),
        natrelay("replay", str(path)),
        natrelay("explain", str(path), HOSTILE),  # the name on the command line, too
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout
    assert "\\x1b[2J" in outputs[0].stdout  # shown, made visible
    assert "\\x1b[2J" in outputs[3].stdout
    missing = natrelay("explain", str(path), "\x1b[31mnobody")
    assert missing.returncode == 2 and "\x1b" not in missing.stderr
