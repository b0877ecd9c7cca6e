"""The orjson codec: exact round trips, and clear errors naming the seq."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natrelay.core import codec
from natrelay.core.events import (
    EVENT_TYPES,
    DirectAttemptStarted,
    HandshakeObserved,
    PeerAdded,
    PolicySet,
    RelayChosen,
    RelayScore,
)
from natrelay.core.policy import Policy, RelayWeights
from tests.conftest import make_key

KEY = make_key(7)

SAMPLES = [
    PeerAdded(
        at=5, peer=KEY, candidates=("1.2.3.4:5", "[2001:db8::1]:7"), name="laptop", preferred_region="eu"
    ),
    HandshakeObserved(at=9, peer=KEY, relay="r1"),
    RelayChosen(
        at=10,
        peer=KEY,
        relay="r1",
        ranking=(RelayScore(relay="r1", score=0.91), RelayScore(relay="r2", score=0.5)),
        deadline=5010,
        reason="r1 ranks best of 2",
    ),
    PolicySet(at=0, policy=Policy(name="custom", min_direct_attempts=5, weights=RelayWeights(latency=0.5))),
    DirectAttemptStarted(
        at=1, peer=KEY, endpoint="1.2.3.4:5", attempt=2, deadline=1001, purpose="upgrade_probe"
    ),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.TYPE)
def test_round_trip_is_exact(event: object) -> None:
    encoded = codec.encode(event)  # type: ignore[arg-type]
    decoded = codec.decode(encoded.type, encoded.schema_version, encoded.payload)
    assert decoded == event
    assert codec.encode(decoded) == encoded


@given(
    at=st.integers(0, 2**61),
    attempt=st.integers(1, 10**6),
    reason=st.text(max_size=200),
    port=st.integers(1, 65535),
)
def test_round_trip_holds_for_any_valid_values(at: int, attempt: int, reason: str, port: int) -> None:
    event = DirectAttemptStarted(
        at=at, peer=KEY, endpoint=f"203.0.113.9:{port}", attempt=attempt, deadline=at, reason=reason
    )
    encoded = codec.encode(event)
    assert codec.decode(encoded.type, encoded.schema_version, encoded.payload) == event


def test_every_event_type_has_a_unique_stable_name() -> None:
    assert len(EVENT_TYPES) == len({cls.__name__ for cls in EVENT_TYPES.values()})
    assert all(name == name.lower() for name in EVENT_TYPES)


def payload(**fields: object) -> bytes:
    return orjson.dumps({"at": 1, "peer": KEY, **fields})


@pytest.mark.parametrize(
    ("type_name", "version", "data", "problem"),
    [
        ("no_such_event", 1, payload(), "unknown event type 'no_such_event'"),
        ("peer_added", 99, payload(), "schema version 99, newer than"),
        ("peer_added", 1, b"{not json", "not valid JSON"),
        ("peer_added", 1, b"[1, 2]", "not a JSON object"),
        ("peer_removed", 1, orjson.dumps({"at": 1}), "incomplete"),
        ("peer_added", 1, payload(candidates="1.2.3.4:5"), "invalid"),
        ("peer_removed", 1, payload(at="yesterday"), "at='yesterday'"),
        ("peer_removed", 1, payload(colour="blue"), "unknown fields: colour"),
    ],
)
def test_bad_rows_raise_one_clear_error_naming_the_seq(
    type_name: str, version: int, data: bytes, problem: str
) -> None:
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(type_name, version, data, seq=42)
    assert caught.value.seq == 42
    assert str(caught.value).startswith("event seq 42: ")
    assert problem in str(caught.value)


def test_an_upcaster_turns_an_old_schema_into_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real shape of change: v1 of a renamed field, upcast to v2."""
    monkeypatch.setattr(PeerAdded, "VERSION", 2)
    monkeypatch.setattr(codec, "_UPCASTERS", dict(codec._UPCASTERS))

    @codec.register_upcaster("peer_added", 1)
    def rename_endpoints(data: dict[str, object]) -> dict[str, object]:
        data["candidates"] = data.pop("endpoints")
        return data

    old = orjson.dumps({"at": 3, "peer": KEY, "endpoints": ["1.2.3.4:5"]})
    assert codec.decode("peer_added", 1, old) == PeerAdded(at=3, peer=KEY, candidates=("1.2.3.4:5",))
    with pytest.raises(codec.DecodeError, match="no upcaster"):
        codec.decode("peer_removed", 0, old)
