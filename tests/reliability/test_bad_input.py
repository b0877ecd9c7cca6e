"""Bad input at the edges: config files, peers, candidates and relay announcements from outside.

A config error names the file, the key and what was expected. Outside input
that is invalid becomes an `input_rejected` event (intake) or an
`observation_rejected` decision (the engine), with its reason, and the node
keeps running: a good peer added afterwards still connects, and the log
verifies and checks clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.mesh import intake
from natrelay.adapters.mesh.agent_config import ConfigError, CredentialSource, load_config
from natrelay.adapters.node import Node
from natrelay.core import lifecycle as lc
from natrelay.core.events import InputRejected, ObservationRejected, PeerAdded
from natrelay.core.policy import Policy
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import verify
from tests.conftest import make_key
from tests.reliability.conftest import natrelay

KEY = make_key(1)
GOOD = "198.51.100.7:51820"
MINIMAL = 'node = "a"\n'
PEER = f'[[peers]]\nname = "b"\npublic_key = "{KEY}"\nallowed_ips = ["10.0.0.2/32"]\n'

BAD_CONFIGS = [
    ('node = "a b"\n', "node", "expected a node name"),
    ("node = 7\n", "node", "expected a node name"),
    (MINIMAL + "persistent_keepalive = 0\n", "persistent_keepalive", "expected an integer of seconds"),
    (MINIMAL + 'advertise_reflexive = "yes"\n', "advertise_reflexive", "expected true or false"),
    (MINIMAL + "snapshot_every = -1\n", "snapshot_every", "expected an integer of observations"),
    (MINIMAL + "snapshot_every = 2.5\n", "snapshot_every", "expected an integer of observations"),
    (MINIMAL + "peers = 3\n", "peers", "expected an array"),
    (MINIMAL + 'colour = "blue"\n', "unknown key 'colour'", "expected one of"),
    (MINIMAL + '[[peers]]\npublic_key = "short"\n', "peers[0].public_key", "expected a WireGuard public key"),
    (MINIMAL + PEER + 'endpoints = ["1.2.3.4:0"]\n', "peers[0].endpoints[0]", "port 0 is outside 1-65535"),
    (MINIMAL + PEER + 'endpoints = ["1.2.3.4:70000"]\n', "peers[0].endpoints[0]", "outside 1-65535"),
    (MINIMAL + PEER + 'endpoints = ["224.0.0.1:51820"]\n', "peers[0].endpoints[0]", "multicast"),
    (MINIMAL + PEER + 'endpoints = ["255.255.255.255:1"]\n', "peers[0].endpoints[0]", "broadcast"),
    (MINIMAL + PEER + 'endpoints = ["0.0.0.0:51820"]\n', "peers[0].endpoints[0]", "unspecified"),
    (
        MINIMAL + PEER + "endpoints = [" + ", ".join(f'"10.0.0.{i}:1"' for i in range(1, 12)) + "]\n",
        "peers[0].endpoints",
        "expected at most 10 endpoints, got 11",
    ),
    (MINIMAL + PEER + 'access = "sometimes"\n', "peers[0].access", "expected one of auto"),
    (
        MINIMAL + PEER.replace("10.0.0.2/32", "10.0.0.300/32"),
        "peers[0].allowed_ips[0]",
        "expected a CIDR",
    ),
    (MINIMAL + PEER + PEER, "peers[1].public_key", "expected a key not used before"),
    (MINIMAL + '[[relays]]\nid = "r1"\nurl = "http://x"\n', "relays[0].url", "expected turn:"),
    (MINIMAL + '[[relays]]\nid = "r 1"\nurl = "turn:1.2.3.4"\n', "relays[0].id", "expected a relay id"),
    (MINIMAL + '[[relays]]\nid = "r1"\nurl = "turn:1.2.3.4"\nregion = "a/b"\n', "relays[0].region", "region"),
    (MINIMAL + '[credentials]\npassword = "hunter2"\n', "unknown key 'password'", "passwords never go here"),
    (MINIMAL + "[policy]\nmin_direct_attempts = -1\n", "policy", "expected an integer >= 0"),
    (MINIMAL + "[policy]\nflavour = 1\n", "policy", "unknown policy fields: flavour"),
    (
        MINIMAL + 'data_plane = "proxy"\n[policy]\nhard_nat_enabled = true\n',
        "policy.hard_nat_enabled",
        'only data_plane = "shared" carries',
    ),
    ('node = "a"\npeers = [\n', "agent.toml", "Invalid value"),  # not TOML at all
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD_CONFIGS)
def test_a_config_error_names_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert key in message and expected in message
    assert "hunter2" not in message


def test_hard_nat_attempts_are_on_by_default_only_where_the_data_plane_carries_them(tmp_path: Path) -> None:
    """Kills an agent that never tries a hard NAT unless told (issue 16: on by default, a knob
    turns it off), and one that spends attempts a proxy or endpoint plane cannot carry out."""
    path = tmp_path / "agent.toml"
    expected = {"": True, 'data_plane = "shared"\n': True, 'data_plane = "proxy"\n': False}
    expected |= {'data_plane = "endpoint"\n': False, "[policy]\nhard_nat_enabled = false\n": False}
    for extra, enabled in expected.items():
        path.write_text(MINIMAL + extra)
        assert load_config(path).policy.hard_nat_enabled is enabled, extra


def test_a_policy_file_with_hard_nat_attempts_needs_the_shared_plane(tmp_path: Path) -> None:
    """Kills an agent that takes a suggested policy (`whatif --sweep` writes natrelay's, attempts
    on) onto a plane that cannot carry attempts out, spending every attempt's budget for nothing."""
    (tmp_path / "tuned.toml").write_text("[policy]\nhard_nat_enabled = true\n")
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + 'policy_file = "tuned.toml"\n')
    assert load_config(path).policy.hard_nat_enabled
    path.write_text(MINIMAL + 'policy_file = "tuned.toml"\ndata_plane = "proxy"\n')
    with pytest.raises(ConfigError, match=r"agent\.toml: policy_file: its hard_nat_enabled = true needs"):
        load_config(path)


def test_the_agents_default_policy_is_the_one_the_simulator_measures(tmp_path: Path) -> None:
    """Kills an agent on the bare `Policy()` while BENCHMARKS.md measures natrelay's preset (a
    5 s relay connect, no retry of unanswered relay connects: what the wake goal was met with)."""
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL)
    assert load_config(path).policy == preset("natrelay")
    path.write_text(MINIMAL + "[policy]\nrelay_connect_timeout_ms = 4000\n")
    tuned = load_config(path).policy
    assert tuned == attrs.evolve(preset("natrelay"), relay_connect_timeout_ms=4000)


def test_the_agent_command_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + '[credentials]\npassword = "hunter2"\n')
    result = natrelay(
        "agent", "--interface", "wg-x", "--log", str(tmp_path / "l.sqlite"), "--config", str(path)
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown key 'password'" in result.stderr and "hunter2" not in result.stderr


def test_a_missing_credential_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + f'[credentials]\nfile = "{tmp_path}/nope.cred"\n')
    assert load_config(path).relays == ()
    with pytest.raises(ConfigError, match=r"cannot read the credential file .*nope\.cred"):
        CredentialSource(file=str(tmp_path / "nope.cred")).load()


#: (description, a function of time giving the intake result) for hostile outside input.
HOSTILE: list[tuple[str, Any, str]] = [
    ("short key", lambda at: intake.peer_added(at, "rendezvous", peer="abc"), "invalid public key"),
    ("not base64", lambda at: intake.peer_added(at, "rendezvous", peer="!" * 44), "not valid base64"),
    ("key not a string", lambda at: intake.peer_added(at, "rendezvous", peer=12), "expected a base64 string"),
    ("port 0", lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["1.2.3.4:0"]), "port 0"),
    (
        "port 65536",
        lambda at: intake.peer_added(at, "config", peer=KEY, candidates=["1.2.3.4:65536"]),
        "65536",
    ),
    (
        "port text",
        lambda at: intake.peer_added(at, "config", peer=KEY, candidates=["1.2.3.4:x"]),
        "not a number",
    ),
    (
        "multicast",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["239.1.1.1:5"]),
        "multicast",
    ),
    (
        "v6 multicast",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["[ff02::1]:5"]),
        "multicast",
    ),
    (
        "broadcast",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["255.255.255.255:5"]),
        "broadcast",
    ),
    (
        "unspecified",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["0.0.0.0:5"]),
        "unspecified",
    ),
    (
        "v6 unspecified",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["[::]:5"]),
        "unspecified",
    ),
    (
        "hostname",
        lambda at: intake.peer_added(at, "rendezvous", peer=KEY, candidates=["evil.example:5"]),
        "not an IP",
    ),
    (
        "11 candidates",
        lambda at: intake.candidates_updated(
            at, "rendezvous", peer=KEY, candidates=[f"10.0.0.{i}:1" for i in range(11)]
        ),
        "at most 10",
    ),
    (
        "candidates not a list",
        lambda at: intake.candidates_updated(at, "rendezvous", peer=KEY, candidates=5),
        "expected a list",
    ),
    ("hostile name", lambda at: intake.peer_added(at, "rendezvous", peer=KEY, name="x" * 5000), "name"),
    (
        "bad relay id",
        lambda at: intake.relay_announced(at, "relay_announcement", {"relay": "a/b", "region": "eu"}),
        "relay=",
    ),
    (
        "bad region",
        lambda at: intake.relay_announced(at, "relay_announcement", {"relay": "r9", "region": "e u"}),
        "region=",
    ),
    (
        "relay not an object",
        lambda at: intake.relay_announced(at, "relay_announcement", [1]),
        "expected a relay",
    ),
    (
        "relay address port 0",
        lambda at: intake.relay_announced(
            at, "relay_announcement", {"relay": "r9", "region": "eu", "address": "1.2.3.4:0"}
        ),
        "port 0",
    ),
    (
        "unknown relay field",
        lambda at: intake.relay_announced(at, "relay_announcement", {"relay": "r9", "region": "eu", "x": 1}),
        "unknown announcement fields: x",
    ),
]

#: Valid events the engine refuses, with a recorded ObservationRejected.
REFUSED_BY_ENGINE: list[tuple[str, dict[str, Any], str]] = [
    ("expired", {"relay": "r7", "region": "eu", "expires_at": 10}, "expired"),
    ("far future", {"relay": "r7", "region": "eu", "expires_at": 10**12}, "more than 24 h ahead"),
    (
        "unknown capability bits",
        {"relay": "r7", "region": "eu", "capabilities": 0x30},
        "unknown capability bits 0x30",
    ),
]


def test_hostile_input_is_recorded_with_its_reason_and_the_node_keeps_running(tmp_path: Path) -> None:
    network = MemoryNetwork(answering={(KEY, GOOD): 20})
    with EventLog.open(str(tmp_path / "edge.sqlite")) as log:
        node = Node(log, network, node="edge", policy=Policy(mode="direct_first"))
        at = 1_000
        for description, make, reason in HOSTILE:
            at += 10
            observation = make(at)
            assert isinstance(observation, InputRejected), description
            assert reason in observation.reason, (description, observation.reason)
            assert len(observation.subject) <= intake.SUBJECT_CHARS + 1
            assert node.observe(observation).decisions == ()
        for description, data, reason in REFUSED_BY_ENGINE:
            at += 10
            announcement = intake.relay_announced(at, "relay_announcement", data)
            assert not isinstance(announcement, InputRejected), description
            (decision,) = node.observe(announcement).decisions
            assert isinstance(decision, ObservationRejected) and reason in decision.reason, description
        assert "r7" not in node.engine.state()["registry"].get("relays", {})
        assert node.engine.peers == {}
        # The node carries on: a good peer connects.
        good = intake.peer_added(at + 10, "rendezvous", peer=KEY, candidates=[GOOD, "10.1.1.1:51820"])
        assert isinstance(good, PeerAdded)
        node.observe(good)
        node.run_until(at + 5_000)
        assert node.engine.peers[KEY].state == lc.DIRECT_CONNECTED
        rejected = [event for _seq, _stream, event in log.read_events() if isinstance(event, InputRejected)]
        assert len(rejected) == len(HOSTILE)
        assert {event.source for event in rejected} == {"rendezvous", "config", "relay_announcement"}
        assert verify(log, "edge").ok
        assert check_log(log).ok
    timeline = natrelay("timeline", str(tmp_path / "edge.sqlite"), KEY[:12])
    assert timeline.returncode == 0, timeline.stderr


def test_a_candidate_list_over_the_cap_cannot_even_be_an_event() -> None:
    from natrelay.core.values import InvalidValue

    with pytest.raises(InvalidValue, match="at most 10"):
        PeerAdded(at=0, peer=KEY, candidates=tuple(f"10.0.0.{i}:1" for i in range(1, 12)))
    # Duplicates from outside are merged, not refused; exactly 10 is fine.
    assert intake.candidate_list([GOOD, GOOD]) == (GOOD,)
    assert len(intake.candidate_list([f"10.0.0.{i}:1" for i in range(1, 11)])) == 10
