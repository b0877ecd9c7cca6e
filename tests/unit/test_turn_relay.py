"""The TURN relay adapter's pure parts: URLs, credentials that never print, log redaction."""

from __future__ import annotations

import logging

import pytest

from natrelay.adapters.mesh.turn_relay import (
    TurnCredentials,
    TurnError,
    TurnServer,
    TurnSession,
    _describe,
    _RedactSecrets,
)


def test_turn_url_with_port_and_transport() -> None:
    server = TurnServer.from_url("r1", "turn:203.0.113.11:3479?transport=udp", region="eu")
    assert (server.host, server.port, server.region) == ("203.0.113.11", 3479, "eu")
    assert server.address == "203.0.113.11:3479"


def test_turn_url_default_port() -> None:
    assert TurnServer.from_url("r1", "turn:relay.example").port == 3478


@pytest.mark.parametrize("url", ["turns:x:5349", "turn:x:3478?transport=tcp", "turn::abc", "x"])
def test_unsupported_turn_urls_are_refused_by_name(url: str) -> None:
    with pytest.raises(TurnError, match="r9"):
        TurnServer.from_url("r9", url)


def test_credentials_never_print() -> None:
    creds = TurnCredentials("alice-user", "s3cret-pass")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "alice-user" not in text
        assert "s3cret-pass" not in text


def test_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_USER", "u1")
    monkeypatch.setenv("T_PASS", "p1")
    creds = TurnCredentials.from_env_or_file(username_env="T_USER", password_env="T_PASS")
    assert (creds.username, creds.password) == ("u1", "p1")


def test_missing_credentials_name_the_variables_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_USER", raising=False)
    monkeypatch.setenv("T_PASS", "p1-secret")
    with pytest.raises(TurnError, match="T_USER") as info:
        TurnCredentials.from_env_or_file(username_env="T_USER", password_env="T_PASS")
    assert "p1-secret" not in str(info.value)


def test_credentials_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "turn.cred"
    path.write_text("bob:pa:ss\n")
    creds = TurnCredentials.from_env_or_file(file=path)
    assert (creds.username, creds.password) == ("bob", "pa:ss")
    path.write_text("no-separator")
    with pytest.raises(TurnError) as info:
        TurnCredentials.from_env_or_file(file=path)
    assert "no-separator" not in str(info.value)


def test_aioice_log_lines_carrying_a_credential_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    _RedactSecrets.secrets.add("user-xyz-123")
    try:
        logger = logging.getLogger("aioice.turn")
        with caplog.at_level(logging.DEBUG, logger="aioice.turn"):
            logger.debug("turn/udp > %s", {"USERNAME": "user-xyz-123"})
            logger.info("TURN allocation created %s", ("203.0.113.11", 49152))
        assert "user-xyz-123" not in caplog.text
        assert "allocation created" in caplog.text
        assert "user-xyz-123" not in _describe(ValueError("bad user-xyz-123"))
    finally:
        _RedactSecrets.secrets.discard("user-xyz-123")


def test_session_repr_hides_credentials() -> None:
    session = TurnSession(TurnServer("r1", "203.0.113.11"), TurnCredentials("uu-1", "pp-1"), "k")
    assert "uu-1" not in repr(session)
    assert "pp-1" not in repr(session)
    assert session.local_endpoint is None
