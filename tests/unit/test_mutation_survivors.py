"""Tests written for mutants cosmic-ray found surviving in core/ (docs/fuzzing.md, "Mutation testing").

Each test names the mutant it kills; each was checked to fail with that
mutant applied (tools/mutation.py's survivors, re-applied one by one).
"""

from __future__ import annotations

import pytest

from natrelay.core import values
from natrelay.core.engine import Engine
from natrelay.core.events import (
    HandshakeObserved,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelayWithdrawn,
    Tick,
)
from natrelay.core.policy import Policy
from natrelay.core.presets import formnet, innernet, tailscale
from tests.conftest import make_key

P = make_key(1)
A = "198.51.100.1:51820"


def _relayed(policy: Policy | None = None) -> Engine:
    engine = Engine(policy or Policy(upgrade_enabled=False))
    engine.handle(RelayAnnounced(at=0, relay="relay-b", region="eu"))
    engine.handle(PeerAdded(at=0, peer=P))
    engine.handle(RelaySessionEstablished(at=10, peer=P, relay="relay-b", session="s5"))
    assert engine.peers[P].state == "relay_connected"
    return engine


def test_a_public_key_must_be_exactly_44_characters() -> None:
    # mutant values.py `len(value) != 44` -> `> 44`; `canonical != value` -> `>`
    assert values.public_key_problem(P) is None
    assert values.public_key_problem(P[:40]) is not None
    # endpoint_problem `canonical != value` -> `>`: non-canonical forms sorting before and
    # after their canonical one must both be refused
    assert values.endpoint_problem("[2001:db8::1]:51820") is None
    assert values.endpoint_problem("[2001:0db8::1]:51820") is not None
    assert values.endpoint_problem("10.0.0.1:51820 ") is not None


@pytest.mark.parametrize("session", ["s1", "s9"])
def test_closing_a_session_the_peer_does_not_use_is_rejected(session: str) -> None:
    # mutant checks.py `(path, session) != (relay, session)` -> `<`: s1 < s5 would slip through
    engine = _relayed()
    decided = engine.handle(RelaySessionClosed(at=20, peer=P, relay="relay-b", session=session))
    assert [d.TYPE for d in decided.decisions] == ["observation_rejected"]
    assert engine.peers[P].state == "relay_connected"


def test_withdrawing_another_relay_leaves_a_relayed_peer_alone() -> None:
    # mutant decide.py (react_relay_withdrawn) `record.path == event.relay` -> `<=`
    engine = _relayed()
    engine.handle(RelayAnnounced(at=20, relay="relay-c", region="eu"))
    decided = engine.handle(RelayWithdrawn(at=30, relay="relay-c"))  # "relay-b" <= "relay-c"
    assert decided.decisions == ()
    assert engine.peers[P].state == "relay_connected"


def test_a_relay_handshake_refreshes_only_the_relay_in_use() -> None:
    engine = _relayed()
    engine.handle(HandshakeObserved(at=50_000, peer=P, relay="relay-a"))
    engine.handle(HandshakeObserved(at=50_000, peer=P, relay="relay-c"))
    assert engine.peers[P].last_handshake_at == 10
    engine.handle(HandshakeObserved(at=60_000, peer=P, relay="relay-b"))
    assert engine.peers[P].last_handshake_at == 60_000


def test_the_preferred_region_scores_only_its_own_relays() -> None:
    # mutant relay_registry.py `info.region == preferred_region` -> `>=`
    engine = Engine(Policy())
    engine.handle(RelayAnnounced(at=0, relay="relay-us", region="us"))
    engine.handle(RelayAnnounced(at=0, relay="relay-eu", region="eu"))
    engine.handle(PeerAdded(at=0, peer=P, preferred_region="eu"))
    scores = {s.relay: s.score for s in engine.get_relay_candidates(P)}
    assert scores["relay-eu"] > scores["relay-us"]
    assert [s.relay for s in engine.get_relay_candidates(P)] == ["relay-eu", "relay-us"]


def test_should_attempt_relay_holds_past_the_threshold_too() -> None:
    # mutant seed_api.py `count >= min_direct_attempts` -> `==`
    engine = Engine(Policy(mode="direct_first", min_direct_attempts=3))
    engine.handle(PeerAdded(at=0, peer=P, candidates=(A,)))
    assert not engine.should_attempt_relay(P, 2)
    assert engine.should_attempt_relay(P, 3)
    assert engine.should_attempt_relay(P, 7)


def test_lowering_the_threshold_below_the_failed_rounds_makes_the_peer_eligible() -> None:
    # mutant stepping.py `failed >= policy.min_direct_attempts` -> `==`
    engine = Engine(Policy(mode="direct_first", min_direct_attempts=5, step_interval_ms=100))
    engine.handle(RelayAnnounced(at=0, relay="relay-a", region="eu"))
    engine.handle(PeerAdded(at=0, peer=P, candidates=(A,)))
    while engine.attempts.attempts(P) < 3:
        deadline = engine.next_deadline()
        assert deadline is not None
        engine.handle(Tick(at=deadline))
    decided = engine.handle(
        PolicySet(at=engine.now, policy=Policy(mode="direct_first", min_direct_attempts=1))
    )
    assert decided.decisions == ()
    deadline = engine.next_deadline()
    assert deadline is not None
    types = [d.TYPE for d in engine.handle(Tick(at=deadline)).decisions]
    assert "relay_eligibility_reached" in types


def test_an_announcement_valid_for_more_than_24_hours_is_rejected() -> None:
    # mutant checks.py `expires_at - at > MAX` -> `expires_at | at > MAX`
    engine = Engine(Policy())
    day = 86_400_000
    ok = engine.handle(RelayAnnounced(at=day, relay="relay-a", region="eu", expires_at=day + 1_000))
    assert [d.TYPE for d in ok.decisions] == []
    late = engine.handle(RelayAnnounced(at=day, relay="relay-b", region="eu", expires_at=2 * day + 1))
    assert [d.TYPE for d in late.decisions] == ["observation_rejected"]


def test_the_anchor_presets_keep_their_documented_values() -> None:
    # mutants presets.py: formnet tries one candidate per step; tailscale re-probes once a minute
    assert formnet().parallel_endpoints == 1
    assert innernet().parallel_endpoints == 1
    assert tailscale().upgrade_probe_cap_ms == 60_000
