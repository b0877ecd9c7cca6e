"""Candidate kinds in the log: schema version 2 of peer_added and candidates_updated."""

from __future__ import annotations

import orjson
import pytest

from natrelay.adapters.mesh import intake
from natrelay.core import codec
from natrelay.core import values as v
from natrelay.core.events import CandidatesUpdated, PeerAdded
from tests.conftest import make_key

KEY = make_key(1)


def test_version_1_events_upcast_to_unknown_kinds() -> None:
    old = orjson.dumps({"at": 5, "peer": KEY, "candidates": ["10.1.0.2:51820"], "nat_type": None})
    event = codec.decode("candidates_updated", 1, old)
    assert event == CandidatesUpdated(at=5, peer=KEY, candidates=("10.1.0.2:51820",), kinds=())
    added = codec.decode("peer_added", 1, orjson.dumps({"at": 5, "peer": KEY, "candidates": []}))
    assert isinstance(added, PeerAdded) and added.kinds == ()


def test_kinds_roundtrip_and_must_match_the_candidates() -> None:
    event = CandidatesUpdated(
        at=1, peer=KEY, candidates=("10.1.0.2:51820", "1.2.3.4:51820"), kinds=("host", "")
    )
    encoded = codec.encode(event)
    assert encoded.schema_version == 2
    assert codec.decode(encoded.type, encoded.schema_version, encoded.payload) == event
    with pytest.raises(v.InvalidValue, match="2 kinds for 1 candidates"):
        CandidatesUpdated(at=1, peer=KEY, candidates=("10.1.0.2:51820",), kinds=("host", "mapped"))
    with pytest.raises(v.InvalidValue, match="is not one of"):
        CandidatesUpdated(at=1, peer=KEY, candidates=("10.1.0.2:51820",), kinds=("wormhole",))


def test_published_kinds_follow_the_canonical_candidates() -> None:
    update = intake.candidates_updated(
        1,
        "rendezvous",
        peer=KEY,
        candidates=["10.1.0.2:51820", "198.51.99.101:51820"],
        kinds={"198.51.99.101:51820": "mapped", "10.1.0.2:51820": "host", "9.9.9.9:1": "bogus"},
    )
    assert isinstance(update, CandidatesUpdated)
    assert update.kinds == ("host", "mapped")


def test_the_nat_is_named_from_one_sockets_mapped_addresses_at_two_stun_servers() -> None:
    """Kills a classifier that calls a port-changing NAT a cone (the engine would then never
    try a hard-NAT attempt), one that calls silence 'udp_blocked', and one that sees a NAT
    where the servers saw our own address."""
    from natrelay.adapters.mesh.candidates import nat_type_of

    local = ("10.1.0.2", 40000)
    assert nat_type_of(local, ("203.0.113.101", 61001), ("203.0.113.101", 17322)) == "symmetric"
    assert nat_type_of(local, ("203.0.113.101", 40000), ("203.0.113.101", 40000)) == "port_restricted_cone"
    assert nat_type_of(local, ("203.0.113.101", 5555), ("203.0.113.101", 5555)) == "port_restricted_cone"
    assert nat_type_of(local, None, None) == "unknown"
    assert nat_type_of(local, ("203.0.113.101", 40000), None) == "unknown"
    assert nat_type_of(local, local, local) == "none"
    assert nat_type_of(local, None, local) == "none"


def test_a_port_mapping_makes_wireguards_port_a_full_cone() -> None:
    """Kills an agent that publishes `symmetric` while its router forwards WireGuard's port (the
    peers then spend a birthday attempt, whose punched port wins over the mapped one), and one
    that keeps claiming a full cone after the mapping is gone."""
    from types import SimpleNamespace

    from natrelay.adapters.mesh.startup import Starting

    seen: list[object] = []
    agent = SimpleNamespace(_stun_nat="symmetric", _port_mapper=None, _nat_type=None, now=lambda: 5)
    judge = Starting._judge_nat
    judge(agent, seen.append)  # type: ignore[arg-type]
    agent._port_mapper = SimpleNamespace(external="203.0.113.101:51820")
    judge(agent, seen.append)  # type: ignore[arg-type]
    agent._port_mapper.external = None
    judge(agent, seen.append)  # type: ignore[arg-type]
    assert [e.nat_type for e in seen] == ["symmetric", "full_cone", "symmetric"]  # type: ignore[attr-defined]
    mapped = SimpleNamespace(external="1.2.3.4:1")
    agent = SimpleNamespace(_stun_nat="none", _port_mapper=mapped, _nat_type=None, now=lambda: 6)
    judge(agent, seen.append)  # type: ignore[arg-type]
    assert seen[-1].nat_type == "none"  # type: ignore[attr-defined]
