"""A hard-NAT attempt beside a new peer's first direct round (`Policy.hard_nat_with_first_round`).

Issue 13's relay-scarce goal: a hard pair that waits one failed round (1 s) before its
birthday punch holds a scarce relay slot, or has no path, that much longer. Each test names
the wrong decision it kills; the mutations that proved them are in the commit message.
"""

from __future__ import annotations

from natrelay.core.commands import CloseRelaySession, StopHardNatAttempt, SwitchPath
from natrelay.core.events import (
    HandshakeObserved,
    HardNatAttemptStarted,
    HardNatPairMet,
    NatObserved,
    PathSilent,
    PeerAdded,
    RelaySessionEstablished,
)
from natrelay.core.policy import Policy
from natrelay.core.presets import preset
from tests.conftest import make_key
from tests.unit.test_engine import Driver

P = make_key(1)
PUBLIC = "37.0.0.9:40000"
LAN = "192.168.1.2:51820"
EARLY = Policy(hard_nat_enabled=True, hard_nat_with_first_round=True)
DIRECT_FIRST = Policy(mode="direct_first", hard_nat_enabled=True, hard_nat_with_first_round=True)


def joined(chosen: Policy, local: str = "symmetric", peer_nat: str = "port_restricted_cone") -> Driver:
    driver = Driver(chosen)
    driver.feed(NatObserved(at=0, nat_type=local))
    driver.relays("r1")
    driver.feed(PeerAdded(at=10, peer=P, candidates=(PUBLIC, LAN), nat_type=peer_nat))
    return driver


def started(driver: Driver) -> list[HardNatAttemptStarted]:
    return [e for e in driver.log if isinstance(e, HardNatAttemptStarted)]


def test_natrelay_starts_a_known_hard_pairs_attempt_with_its_first_round() -> None:
    """Kills: waiting for a failed round (1 s) when both NAT types already say a plain punch is
    hopeless; doing so with the switch off (recorded logs would re-decide otherwise)."""
    assert preset("natrelay").hard_nat_with_first_round and not Policy().hard_nat_with_first_round
    early = joined(EARLY)  # relay-first: the relay connect is in flight beside the round
    [attempt] = started(early)
    assert attempt.at == 10 and attempt.reason.startswith("beside the peer's first direct round")
    assert early.state() == "relay_eligible" and early.engine.peers[P].relay_pending == "r1"
    late = joined(Policy(hard_nat_enabled=True))
    late.feed(RelaySessionEstablished(at=100, peer=P, relay="r1", session="s1"))
    assert not started(late)
    late.until(1_200)
    assert [a.at for a in started(late)] == [1_100]  # after the probe over the session failed
    plain = joined(EARLY, "symmetric", "full_cone")  # a plain punch works: nothing to start
    plain.until(1_200)
    assert not started(plain)


def test_direct_first_starts_it_too_and_a_meeting_takes_the_path_at_once() -> None:
    """Kills: no attempt in direct-trying (direct-first policies keep the peer there for
    several rounds); a meeting there rejected or left waiting for an upgrade that only a
    relayed peer gets."""
    driver = joined(DIRECT_FIRST, "port_restricted_cone", "symmetric")
    [attempt] = started(driver)
    assert (attempt.at, attempt.role, driver.state()) == (10, "easy", "direct_trying")
    reaction = driver.feed(
        HardNatPairMet(at=700, peer=P, attempt=1, endpoint=PUBLIC, local_port=51_820, probes_sent=80)
    )
    assert [d.TYPE for d in reaction.decisions] == ["hard_nat_attempt_succeeded", "direct_path_selected"]
    assert SwitchPath(peer=P, endpoint=PUBLIC) in reaction.commands
    assert driver.state() == "direct_connected"
    assert driver.engine.attempts.open_round(P) is None  # the plain round is over too


def test_a_meeting_before_the_relay_answers_takes_the_path_and_drops_the_connect() -> None:
    """Kills: a relay session opened for a peer whose punch already met (a slot taken from
    peers that have no other way, relay-scarce)."""
    driver = joined(EARLY)
    reaction = driver.feed(
        HardNatPairMet(at=60, peer=P, attempt=1, endpoint=PUBLIC, local_port=40_001, probes_sent=7)
    )
    assert CloseRelaySession(peer=P, relay="r1") in reaction.commands
    assert driver.state() == "direct_connected" and driver.engine.peers[P].relay_pending is None


def test_a_plain_answer_ends_the_attempt_a_misreported_nat_type_started() -> None:
    """Kills: sockets and probes left running after the first round found the path anyway."""
    driver = joined(DIRECT_FIRST)
    reaction = driver.feed(HandshakeObserved(at=80, peer=P, endpoint=PUBLIC))
    assert "direct_path_selected" in [d.TYPE for d in reaction.decisions]
    assert StopHardNatAttempt(peer=P, attempt=1) in reaction.commands
    assert P not in driver.engine.hard_nat.open


def test_a_peer_that_lost_its_direct_path_waits_for_a_failed_round() -> None:
    """Kills: an attempt aimed at where a peer was the moment its path dies (it may be asleep
    or gone: the wasted attempt backs the right one off by `hard_nat_retry_ms`)."""
    driver = joined(DIRECT_FIRST)
    driver.feed(HardNatPairMet(at=500, peer=P, attempt=1, endpoint=PUBLIC, local_port=40_001, probes_sent=50))
    assert driver.state() == "direct_connected"
    driver.feed(PathSilent(at=30_000, peer=P, silent_ms=2_500))
    assert driver.state() == "direct_trying"
    assert len(started(driver)) == 1  # the round that reconnects runs alone
    line = [d for d in driver.log if getattr(d, "at", 0) >= 30_000 and isinstance(d, HardNatAttemptStarted)]
    assert not line
