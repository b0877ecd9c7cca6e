"""Validation of keys, endpoints and times at the edges."""

from __future__ import annotations

import pytest

from natrelay.core import values as v
from natrelay.core.events import HandshakeObserved, PeerAdded
from tests.conftest import make_key

KEY = make_key(1)


def test_a_public_key_is_base64_of_exactly_32_bytes() -> None:
    assert v.public_key_problem(KEY) is None
    assert "44 base64 characters" in (v.public_key_problem(KEY[:-4]) or "")
    assert "base64" in (v.public_key_problem("!" * 43 + "=") or "")
    assert v.public_key_problem(32) is not None


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1.2.3.4:51820", "1.2.3.4:51820"),
        (" 10.0.0.1:1 ", "10.0.0.1:1"),
        ("[2001:db8:0::1]:65535", "[2001:db8::1]:65535"),
        ("127.0.0.1:40000", "127.0.0.1:40000"),
    ],
)
def test_endpoints_parse_to_a_canonical_form(text: str, canonical: str) -> None:
    assert v.parse_endpoint(text) == canonical


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.2.3.4:0", "outside 1-65535"),
        ("1.2.3.4:65536", "outside 1-65535"),
        ("1.2.3.4", "address:port"),
        ("host.example:80", "not an IP address"),
        ("0.0.0.0:5", "unspecified"),
        ("224.0.0.1:5", "multicast"),
        ("255.255.255.255:5", "broadcast"),
        ("[::]:5", "unspecified"),
        ("::1:5", "brackets"),
        ("[1.2.3.4]:5", "brackets"),
        ("1.2.3.4:x", "not a number"),
    ],
)
def test_bad_endpoints_are_rejected_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(v.InvalidValue, match=problem):
        v.parse_endpoint(text)


def test_events_accept_only_canonical_endpoints_and_name_the_field() -> None:
    with pytest.raises(v.InvalidValue, match=r"endpoint=.*not canonical"):
        HandshakeObserved(at=0, peer=KEY, endpoint="[2001:db8:0::1]:5")
    with pytest.raises(v.InvalidValue, match=r"candidates.*duplicate"):
        PeerAdded(at=0, peer=KEY, candidates=("1.2.3.4:5", "1.2.3.4:5"))
    with pytest.raises(v.InvalidValue, match="peer="):
        PeerAdded(at=0, peer="not-a-key")


@pytest.mark.parametrize("bad", [-1, 1.5, "5", True, 2**63])
def test_times_are_integer_milliseconds(bad: object) -> None:
    with pytest.raises(v.InvalidValue, match="at="):
        PeerAdded(at=bad, peer=KEY)  # type: ignore[arg-type]


def test_a_handshake_names_exactly_one_path() -> None:
    with pytest.raises(v.InvalidValue, match="exactly one"):
        HandshakeObserved(at=0, peer=KEY)
    with pytest.raises(v.InvalidValue, match="exactly one"):
        HandshakeObserved(at=0, peer=KEY, endpoint="1.2.3.4:5", relay="r1")


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "x" * 129, "\x1b[31m"])
def test_identifiers_are_short_printable_and_slash_free(bad: str) -> None:
    assert v.identifier_problem(bad) is not None


@pytest.mark.parametrize("bad", [["x"], {"a": 1}, None, 3.5])
def test_checks_of_unhashable_or_odd_values_answer_with_a_reason(bad: object) -> None:
    assert v.public_key_problem(bad) is not None
    assert v.endpoint_problem(bad) is not None
    assert v.identifier_problem(bad) is not None
