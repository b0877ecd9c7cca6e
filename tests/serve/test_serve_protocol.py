"""`natrelay serve` over its socket: the handshake, errors naming the field, pushes, shutdown, the schema.

Every message the service sends in these tests is validated against the JSON
Schema generated from the event and command classes, and docs/protocol.md must
embed exactly what the generator renders.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from natrelay.adapters.serve.wire_schema import protocol_schema
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import snapshot_name
from natrelay.tools import protocol_doc
from tests.conftest import make_key
from tests.serve.conftest import NATRELAY, Client, Service, natrelay

SCHEMA = protocol_schema()
K1, K2 = make_key(1), make_key(2)


def server_messages_valid(*clients: Client) -> None:
    validator = jsonschema.Draft202012Validator({**SCHEMA, "oneOf": [{"$ref": "#/$defs/ServerMessage"}]})
    for client in clients:
        for message in client.received:
            errors = sorted(validator.iter_errors(message), key=str)
            assert not errors, (message, [e.message for e in errors[:3]])


def last_seq(url: str) -> int:
    with EventLog.open(url, create=False) as log:
        return log.last_seq()


def verify(url: str, node: str) -> None:
    result = natrelay("replay", url, "--verify", "--node", node)
    assert result.returncode == 0, result.stdout + result.stderr


def peer_added(at: int, key: str = K1, **fields: Any) -> dict[str, Any]:
    return {"type": "peer_added", "at": at, "peer": key, **fields}


#: (line sent after a successful hello, expected code, expected field)
BAD_AFTER_HELLO: list[tuple[dict[str, Any] | bytes, str, str | None]] = [
    (b"{bad", "bad_json", None),
    (b"[1, 2]", "not_an_object", None),
    ({"protocol": 1}, "missing_field", "type"),
    ({"type": "launch"}, "unknown_message", "type"),
    ({"type": "hello", "protocol": 1, "node": "other"}, "already_hello", "node"),
    ({"type": "observe", "id": 7}, "missing_field", "event"),
    ({"type": "observe", "id": {"a": 1}, "event": {"type": "tick", "at": 1}}, "invalid_field", "id"),
    ({"type": "observe", "event": {"type": "tick", "at": 1}, "extra": 1}, "unknown_field", "extra"),
    ({"type": "observe", "event": {"at": 1}}, "missing_field", "event.type"),
    ({"type": "observe", "event": [1]}, "invalid_field", "event"),
    ({"type": "observe", "event": {"type": "relay_chosen", "at": 1}}, "invalid_field", "event.type"),
    ({"type": "observe", "event": {"type": "teleported", "at": 1}}, "invalid_field", "event.type"),
    ({"type": "observe", "event": {"type": "tick"}}, "missing_field", "event.at"),
    ({"type": "observe", "event": {"type": "tick", "at": -1}}, "invalid_field", "event.at"),
    ({"type": "observe", "event": {"type": "tick", "at": True}}, "invalid_field", "event.at"),
    ({"type": "observe", "event": {"type": "tick", "at": 1.5}}, "invalid_field", "event.at"),
    ({"type": "observe", "event": peer_added(1, "short")}, "invalid_field", "event.peer"),
    ({"type": "observe", "event": {"type": "peer_added", "at": 1}}, "missing_field", "event.peer"),
    ({"type": "observe", "event": peer_added(1, colour="red")}, "unknown_field", "event.colour"),
    (
        {"type": "observe", "event": peer_added(1, candidates="1.2.3.4:5")},
        "invalid_field",
        "event.candidates",
    ),
    (
        {"type": "observe", "event": peer_added(1, candidates=["1.2.3.4:0"])},
        "invalid_field",
        "event.candidates",
    ),
    (
        {"type": "observe", "event": peer_added(1, candidates=[f"192.0.2.{i}:1" for i in range(1, 12)])},
        "invalid_field",
        "event.candidates",
    ),
    ({"type": "observe", "event": peer_added(1, access="sometimes")}, "invalid_field", "event.access"),
    (
        {"type": "observe", "event": {"type": "handshake_observed", "at": 1, "peer": K1}},
        "invalid_field",
        "event",
    ),
    (
        {
            "type": "observe",
            "event": {
                "type": "relay_health_measured",
                "at": 1,
                "relay": "r",
                "rtt_ms": 1,
                "load": 1,
                "loss": 1.5,
            },
        },
        "invalid_field",
        "event.loss",
    ),
    (
        {"type": "observe", "event": {"type": "relay_announced", "at": 1, "relay": "a/b", "region": "eu"}},
        "invalid_field",
        "event.relay",
    ),
    (
        {"type": "observe", "event": {"type": "policy_set", "at": 1, "policy": {"min_direct_attempts": -1}}},
        "invalid_field",
        "event.policy.min_direct_attempts",
    ),
    (
        {"type": "observe", "event": {"type": "policy_set", "at": 1, "policy": {"weights": {"load": 3}}}},
        "invalid_field",
        "event.policy.weights.load",
    ),
]


def test_bad_messages_get_an_error_naming_the_field_and_nothing_is_logged(
    log_url: str, serve: Callable[..., Service]
) -> None:
    service = serve(log_url)
    client = Client(service.socket_path)
    answer = client.observe({"type": "tick", "at": 1}, ident=1)
    assert (answer["code"], answer["id"]) == ("hello_required", 1)
    for hello, code, field in [
        ({"protocol": 2, "node": "alpha"}, "unsupported_protocol", "protocol"),
        ({"protocol": "1", "node": "alpha"}, "invalid_field", "protocol"),
        ({"protocol": 1, "node": "a/b"}, "invalid_field", "node"),
        ({"protocol": 1}, "missing_field", "node"),
        ({"protocol": 1, "node": "alpha", "policy": {"mode": "sideways"}}, "invalid_field", "policy.mode"),
        ({"protocol": 1, "node": "alpha", "policy": {"colour": 1}}, "unknown_field", "policy.colour"),
        ({"protocol": 1, "node": "alpha", "color": 1}, "unknown_field", "color"),
    ]:
        answer = client.request({"type": "hello", "id": "h", **hello})
        assert (answer["type"], answer["code"], answer["field"], answer["id"]) == ("error", code, field, "h")
    assert client.hello("alpha", id=0)["type"] == "welcome"  # the connection survived every error
    before = last_seq(log_url)
    for line, code, field in BAD_AFTER_HELLO:
        raw = line if isinstance(line, bytes) else json.dumps(line).encode()
        answer = client.request(raw)
        assert answer["type"] == "error", (line, answer)
        assert (answer["code"], answer["field"]) == (code, field), (line, answer)
        assert answer["message"]
        if isinstance(line, dict) and isinstance(line.get("id"), int):
            assert answer["id"] == line["id"]
    assert last_seq(log_url) == before, "a refused message was logged"
    ok = client.observe(peer_added(5, candidates=["198.51.100.7:51820"]), ident="p")
    assert ok["type"] == "reaction" and ok["id"] == "p" and ok["seq"] == before + 1
    server_messages_valid(client)
    client.close()


def test_an_overlong_line_closes_the_connection_and_the_service_goes_on(
    serve: Callable[..., Service], tmp_path: Path
) -> None:
    service = serve(str(tmp_path / "log.sqlite"))
    client = Client(service.socket_path)
    client.hello("alpha")
    with contextlib.suppress(BrokenPipeError):  # the service may close before the line is all sent
        client.send_raw(b'{"type":"observe","event":{"type":"tick","at":1,"x":"' + b"x" * (1 << 21) + b'"}}')
    answer = client.read()
    assert answer["code"] == "line_too_long"
    with pytest.raises((EOFError, ConnectionError)):
        client.read()
    again = Client(service.socket_path)
    assert again.hello("alpha")["type"] == "welcome"  # the node was released
    again.close()


def test_a_relay_observation_is_decided_by_every_node_and_pushed(
    log_url: str, serve: Callable[..., Service]
) -> None:
    service = serve(log_url)
    relay_first = {"mode": "relay_first"}
    alpha, beta, gamma = Client(service.socket_path), Client(service.socket_path), Client(service.socket_path)
    assert alpha.hello("alpha", policy=relay_first)["type"] == "welcome"
    assert beta.hello("beta", policy=relay_first)["type"] == "welcome"
    assert gamma.hello("gamma", policy=relay_first)["type"] == "welcome"
    for client in (beta, gamma):  # a peer each, waiting for a relay
        answer = client.observe(peer_added(10, K2, candidates=["203.0.113.9:40000"]))
        assert "relay_unavailable" in [d["type"] for d in answer["decisions"]]
    gamma.close()  # gamma's agent goes away; its node still decides
    answer = alpha.observe({"type": "relay_announced", "at": 20, "relay": "fra-1", "region": "eu"})
    assert answer["type"] == "reaction" and answer["decisions"] == []
    push = beta.read()
    assert push["type"] == "push" and push["seq"] == answer["seq"]
    assert push["cause"]["type"] == "relay_announced"
    assert [d["type"] for d in push["decisions"]] == ["relay_chosen"]
    assert [c["type"] for c in push["commands"]] == ["connect_via_relay"]
    assert push["commands"][0]["relay"] == "fra-1"
    # beta goes on from the pushed command
    answer = beta.observe(
        {"type": "relay_session_established", "at": 60, "peer": K2, "relay": "fra-1", "session": "s1"}
    )
    assert "relay_path_selected" in [d["type"] for d in answer["decisions"]]
    server_messages_valid(alpha, beta)
    for client in (alpha, beta):
        client.close()
    code, err = service.stop()
    assert code == 0, err
    with EventLog.open(log_url, create=False) as log:
        gamma_decisions = [e.TYPE for _s, stream, e in log.read_events() if stream.startswith("node/gamma/")]
    assert "relay_chosen" in gamma_decisions  # decided although no agent was connected
    for node in ("alpha", "beta", "gamma"):
        verify(log_url, node)


def test_one_connection_per_node_and_a_returning_agent_finds_its_peers(
    serve: Callable[..., Service], tmp_path: Path
) -> None:
    url = str(tmp_path / "log.sqlite")
    service = serve(url)
    first = Client(service.socket_path)
    welcome = first.hello("alpha")
    assert welcome["created"] is True and welcome["peers"] == []
    first.observe({"type": "relay_announced", "at": 0, "relay": "fra-1", "region": "eu"})
    first.observe(peer_added(0, K1, name="server", candidates=["198.51.100.7:51820"]))
    reaction = first.observe(
        {"type": "handshake_observed", "at": 15, "peer": K1, "endpoint": "198.51.100.7:51820"}
    )
    second = Client(service.socket_path)
    busy = second.hello("alpha")
    assert (busy["type"], busy["code"], busy["field"]) == ("error", "node_in_use", "node")
    first.close()
    back = second.hello("alpha")
    assert back["type"] == "welcome" and back["created"] is False
    assert back["next_deadline"] == reaction["next_deadline"]
    assert back["peers"] == [
        {
            "peer": K1,
            "name": "server",
            "state": "direct_connected",
            "path": "198.51.100.7:51820",
            "session": None,
        }
    ]
    second.close()
    code, err = service.stop()
    assert code == 0, err
    # a restarted service rebuilds the node from its snapshot and the log
    with EventLog.open(url, create=False) as log:
        assert log.load_snapshot(snapshot_name("alpha")) is not None  # saved at shutdown
    restarted = serve(url)
    third = Client(restarted.socket_path)
    again = third.hello("alpha")
    assert again["peers"] == back["peers"] and again["next_deadline"] == back["next_deadline"]
    server_messages_valid(first, second, third)
    third.close()


def test_pipelined_requests_of_two_agents_are_answered_in_order(
    serve: Callable[..., Service], tmp_path: Path
) -> None:
    url = str(tmp_path / "log.sqlite")
    service = serve(url)
    alpha, beta = Client(service.socket_path), Client(service.socket_path)
    alpha.hello("alpha")
    beta.hello("beta")
    for client in (alpha, beta):  # fifty lines in one write each, a bad one in the middle
        lines = [
            json.dumps({"type": "observe", "id": i, "event": peer_added(i, make_key(100 + i))}).encode()
            if i != 25
            else b'{"type":"observe","id":25,"event":{"type":"tick","at":-5}}'
            for i in range(50)
        ]
        client.send_raw(b"\n".join(lines))
    for client in (alpha, beta):
        answers = [client.read() for _ in range(50)]
        assert [a["id"] for a in answers] == list(range(50))
        assert answers[25]["type"] == "error" and answers[25]["field"] == "event.at"
        seqs = [a["seq"] for a in answers if a["type"] == "reaction"]
        assert len(seqs) == 49 and seqs == sorted(seqs)
    server_messages_valid(alpha, beta)
    for client in (alpha, beta):
        client.close()
    code, err = service.stop()
    assert code == 0, err
    verify(url, "alpha")
    verify(url, "beta")


def test_sigterm_says_goodbye_and_exits_cleanly(serve: Callable[..., Service], tmp_path: Path) -> None:
    url = str(tmp_path / "log.sqlite")
    service = serve(url)
    client = Client(service.socket_path)
    client.hello("alpha")
    client.observe(peer_added(0, candidates=["198.51.100.7:51820"]))
    code, err = service.stop()
    assert code == 0, err
    assert client.read() == {"type": "goodbye", "reason": "shutdown"}
    assert not os.path.exists(service.socket_path)
    server_messages_valid(client)
    verify(url, "alpha")


def test_stdio_serves_one_agent_and_ends_cleanly_with_stdin(tmp_path: Path) -> None:
    url = str(tmp_path / "log.sqlite")
    lines = [
        {"type": "hello", "protocol": 1, "node": "alpha"},
        {"type": "observe", "id": 1, "event": peer_added(0, candidates=["198.51.100.7:51820"])},
        {"type": "observe", "id": 2, "event": {"type": "tick", "at": "soon"}},
        {"type": "observe", "id": 3, "event": {"type": "tick", "at": 1000}},
    ]
    done = subprocess.run(
        [*NATRELAY, "serve", "--stdio", "--log", url],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    # the agent hung up (stdin closed): every line answered, then a clean exit without goodbye
    assert [a["type"] for a in answers] == ["welcome", "reaction", "error", "reaction"]
    assert answers[2]["field"] == "event.at"
    assert [d["type"] for d in answers[3]["decisions"]] == ["direct_round_failed"]
    client = Client.__new__(Client)
    client.received = answers
    server_messages_valid(client)
    verify(url, "alpha")


def test_a_second_service_on_the_same_log_is_refused(
    log_url: str, serve: Callable[..., Service], short_dir: Path
) -> None:
    serve(log_url)
    second = subprocess.run(
        [*NATRELAY, "serve", "--log", log_url, "--socket", str(short_dir / "other.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert "already served" in second.stderr and "Traceback" not in second.stderr


def test_a_live_socket_is_not_taken_over(serve: Callable[..., Service], tmp_path: Path) -> None:
    service = serve(str(tmp_path / "a.sqlite"))
    other = subprocess.run(
        [*NATRELAY, "serve", "--log", str(tmp_path / "b.sqlite"), "--socket", service.socket_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 2 and "another process serves on" in other.stderr
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(service.socket_path)  # the first service still listens
    probe.close()


def test_serve_without_a_transport_is_a_one_line_error(tmp_path: Path) -> None:
    result = natrelay("serve", "--log", str(tmp_path / "log.sqlite"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--socket" in result.stderr


def test_the_schema_is_valid_and_printed_by_the_cli() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    printed = natrelay("serve", "--schema")
    assert printed.returncode == 0 and json.loads(printed.stdout) == SCHEMA


def test_docs_protocol_md_is_what_the_generator_renders() -> None:
    doc = Path(__file__).parents[2] / "docs" / "protocol.md"
    text = doc.read_text()
    assert protocol_doc.update(text) == text, (
        "docs/protocol.md is stale: run python -m natrelay.tools.protocol_doc docs/protocol.md"
    )
