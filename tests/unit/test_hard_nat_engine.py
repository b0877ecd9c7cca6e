"""Hard NATs in the engine (issue 16): when a birthday punch is tried, its budget, how it ends.

Each test names the wrong decision it kills; the mutation that proved it is in the
commit message that added it.
"""

from __future__ import annotations

from pathlib import Path

from natrelay.core.commands import (
    CloseRelaySession,
    StartHardNatAttempt,
    StopHardNatAttempt,
    SwitchPath,
)
from natrelay.core.engine import Engine, Reaction
from natrelay.core.events import (
    CandidatesUpdated,
    HandshakeObserved,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatPairMet,
    LocalAddressesChanged,
    NatObserved,
    PeerAdded,
    PeerRemoved,
    RelayAnnounced,
    RelaySessionClosed,
    RelaySessionEstablished,
    Tick,
    stream_of,
)
from natrelay.core.hard_nat import explain_line, role_for
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild
from natrelay.tools.inspect_log import explain_lines
from tests.conftest import make_key
from tests.unit.test_engine import Driver, decisions

P, Q = make_key(1), make_key(2)
PUBLIC = "37.0.0.9:40000"
LAN = "192.168.1.2:51820"
ON = Policy(hard_nat_enabled=True)


def relayed(local: str, peer_nat: str, chosen: Policy = ON, key: str = P) -> Driver:
    """A peer relayed (relay-first) whose first probe over the session failed."""
    driver = Driver(chosen)
    driver.feed(NatObserved(at=0, nat_type=local))
    driver.relays("r1")
    driver.feed(PeerAdded(at=10, peer=key, candidates=(PUBLIC, LAN), nat_type=peer_nat))
    driver.feed(RelaySessionEstablished(at=100, peer=key, relay="r1", session="s1"))
    return driver


def keep_relayed(driver: Driver, end: int, key: str = P) -> list[Reaction]:
    """Tick up to `end`, the relay session renewing its handshake every 100 s (as WireGuard does)."""
    reactions = []
    at = driver.engine.now
    while at < end:
        at = min(end, at + 100_000)
        reactions += driver.until(at)
        reactions.append(driver.feed(HandshakeObserved(at=at, peer=key, relay="r1")))
    return reactions


def started(driver: Driver) -> list[HardNatAttemptStarted]:
    return [e for e in driver.log if isinstance(e, HardNatAttemptStarted)]


def test_symmetric_against_port_restricted_tries_once_the_probe_failed() -> None:
    """Kills: never trying a hopeless pairing; trying before a direct round failed; a budget
    other than the policy's; the wrong role."""
    driver = relayed("symmetric", "port_restricted_cone")
    assert not started(driver)  # the probe over the session has not failed yet
    reactions = driver.until(1_200)
    [attempt] = started(driver)
    assert attempt.at == 1_100  # the probe round's deadline, the same advance
    assert (attempt.role, attempt.endpoint, attempt.sockets, attempt.probes) == ("hard", PUBLIC, 256, 1024)
    assert (attempt.rate_per_s, attempt.deadline) == (128, 1_100 + 10_000)
    [command] = [c for r in reactions for c in r.commands if isinstance(c, StartHardNatAttempt)]
    assert (command.role, command.sockets, command.probes, command.deadline) == ("hard", 256, 1024, 11_100)
    assert "port_restricted_cone" in attempt.reason


def test_the_easy_side_probes_and_symmetric_pairs_do_both() -> None:
    """Kills: a role swapped (the easy side would open sockets nobody probes)."""
    easy = relayed("firewall", "symmetric")
    easy.until(1_200)
    assert [(a.role, a.sockets, a.probes) for a in started(easy)] == [("easy", 256, 1024)]
    both = relayed("symmetric", "symmetric")
    both.until(1_200)
    assert [(a.role, a.sockets, a.probes) for a in started(both)] == [("both", 256, 1024)]


def test_pairings_a_plain_punch_opens_are_never_tried() -> None:
    """Kills: spending a budget where a plain punch works or where nothing can (UDP blocked)."""
    for local, peer in [
        ("restricted_cone", "symmetric"),
        ("symmetric", "full_cone"),
        ("port_restricted_cone", "port_restricted_cone"),
        ("udp_blocked", "symmetric"),
        ("unknown", "symmetric"),
    ]:
        driver = relayed(local, peer)
        driver.until(400_000)
        assert not started(driver), (local, peer)
    assert role_for("symmetric", "restricted_cone")[0] is None
    record = relayed("restricted_cone", "symmetric").engine.peers[P]
    engine = relayed("restricted_cone", "symmetric").engine
    assert "a plain punch can work" in (explain_line(engine, record) or "")


def test_the_knob_is_off_by_default_and_per_peer() -> None:
    """Kills: attempts made with the knob off, or for a peer the policy excludes."""
    default = relayed("symmetric", "port_restricted_cone", Policy())
    default.until(100_000)
    assert not started(default)
    line = explain_line(default.engine, default.engine.peers[P])
    assert line == "hard NAT: no attempt — hard-NAT attempts are off in this policy"
    excluded = relayed(
        "symmetric", "port_restricted_cone", Policy(hard_nat_enabled=True, hard_nat_off_peers=(P,))
    )
    excluded.until(100_000)
    assert not started(excluded)


def test_a_meeting_upgrades_hitlessly_and_closes_the_relay_only_then() -> None:
    """Kills: leaving the relay before a pair met; not upgrading after it met."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    assert driver.state() == "relay_connected"
    reaction = driver.feed(
        HardNatPairMet(at=3_000, peer=P, attempt=1, endpoint=PUBLIC, local_port=61_234, probes_sent=0)
    )
    assert [d.TYPE for d in reaction.decisions] == ["hard_nat_attempt_succeeded", "path_upgraded"]
    assert SwitchPath(peer=P, endpoint=PUBLIC) in reaction.commands
    assert CloseRelaySession(peer=P, relay="r1", session="s1") in reaction.commands
    assert driver.state() == "direct_connected"
    assert P not in driver.engine.hard_nat.open


def test_a_late_or_foreign_meeting_is_rejected() -> None:
    """Kills: upgrading on a report of an attempt that is not open."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    reaction = driver.feed(
        HardNatPairMet(at=2_000, peer=P, attempt=7, endpoint=PUBLIC, local_port=1, probes_sent=0)
    )
    assert [d.TYPE for d in reaction.decisions] == ["observation_rejected"]
    assert driver.state() == "relay_connected"


def test_deadlines_backoff_and_the_attempt_limit() -> None:
    """Kills: an attempt that never ends, retries without backoff, more attempts than allowed."""
    driver = relayed("symmetric", "port_restricted_cone")
    reactions = keep_relayed(driver, 3_600_000)
    failed = [e for e in driver.log if isinstance(e, HardNatAttemptFailed)]
    starts = [a.at for a in started(driver)]
    assert len(starts) == len(failed) == 4  # hard_nat_max_attempts
    assert [f.at - s for f, s in zip(failed, starts, strict=True)] == [10_000] * 4
    gaps = [starts[i + 1] - failed[i].at for i in range(3)]
    assert gaps == [60_000, 240_000, 960_000]
    assert failed[-1].retry_at is None
    stops = [c for r in reactions for c in r.commands if isinstance(c, StopHardNatAttempt)]
    assert [s.attempt for s in stops] == [1, 2, 3, 4]
    # a new network: the pairing may differ, the count starts again
    driver.feed(LocalAddressesChanged(at=3_600_001, addresses=("37.0.0.1:51820",)))
    keep_relayed(driver, 3_700_000)
    again = started(driver)[4:]
    assert len(again) == 2 and again[1].at - again[0].at == 10_000 + 60_000  # backoff from the start


def test_losing_the_relay_keeps_the_attempt_and_its_meeting_takes_the_path_at_once() -> None:
    """Kills: an attempt stopped when the relay goes (the punch is then the only way to a path);
    a meeting that a peer no relay carries cannot use (rejected, or waiting for an upgrade that
    only a relayed peer gets)."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    reaction = driver.feed(RelaySessionClosed(at=3_000, peer=P, relay="r1", session="s1"))
    assert "hard_nat_attempt_failed" not in [d.TYPE for d in reaction.decisions]
    assert driver.state() == "relay_eligible" and P in driver.engine.hard_nat.open
    reaction = driver.feed(
        HardNatPairMet(at=4_000, peer=P, attempt=1, endpoint=PUBLIC, local_port=61_234, probes_sent=9)
    )
    assert [d.TYPE for d in reaction.decisions] == ["hard_nat_attempt_succeeded", "direct_path_selected"]
    assert SwitchPath(peer=P, endpoint=PUBLIC) in reaction.commands
    assert driver.state() == "direct_connected"


def test_a_peer_no_relay_has_room_for_gets_an_attempt() -> None:
    """Kills: attempts only for relayed peers, which leaves a hard pair without any path while
    every relay is full (relay-scarce: the oracle connects them all directly)."""
    driver = Driver(ON)
    driver.feed(NatObserved(at=0, nat_type="port_restricted_cone"))
    driver.feed(RelayAnnounced(at=0, relay="r1", region="eu", capacity=1))
    driver.feed(PeerAdded(at=10, peer=Q, candidates=("37.0.0.8:40000",), nat_type="udp_blocked"))
    driver.feed(RelaySessionEstablished(at=100, peer=Q, relay="r1", session="q1"))  # r1 is full now
    driver.feed(PeerAdded(at=200, peer=P, candidates=(PUBLIC, LAN), nat_type="symmetric"))
    driver.until(20_000)
    assert driver.state() == "relay_eligible"
    [attempt] = started(driver)
    assert attempt.role == "easy" and attempt.reason.startswith("no relay carries the peer")
    assert attempt.deadline <= 20_000  # it ended without a meeting; explain still speaks of it
    line = explain_line(driver.engine, driver.engine.peers[P])
    assert line is not None and line.startswith("hard NAT: no attempt — ")


def test_replay_and_snapshots_give_the_live_state() -> None:
    """Kills: a hard-NAT fact folded live but not on replay (or lost in a snapshot)."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.feed(PeerAdded(at=20, peer=Q, candidates=(PUBLIC,), nat_type="firewall"))
    driver.until(80_000)
    driver.feed(HardNatPairMet(at=80_001, peer=P, attempt=2, endpoint=PUBLIC, local_port=9, probes_sent=0))
    live = driver.engine.state()
    # P met (its count starts again); Q, whose relay connect was never answered, is likely away:
    # it waits for a relay without an attempt aimed at where it was
    assert live["hard_nat"]["tries"] == {} and live["hard_nat"]["numbers"][P] == 2
    assert Engine.rebuilt(driver.log).state() == live
    restored = Engine.from_state(live)
    assert restored.state() == live
    old = dict(live)
    del old["hard_nat"]  # a snapshot written before issue 16
    assert Engine.from_state(old).hard_nat.open == {}
    assert decisions([]) == []


def test_an_engine_restored_mid_attempt_ends_it_as_the_live_one_does() -> None:
    """Kills: an open attempt lost in a snapshot (the restored engine would never end it)."""
    live = relayed("symmetric", "port_restricted_cone")
    live.until(2_000)
    assert P in live.engine.hard_nat.open
    restored = Engine.from_state(live.engine.state())
    assert restored.next_deadline() == live.engine.next_deadline()
    tick_live = live.feed(Tick(at=11_100))
    tick_restored = restored.handle(Tick(at=11_100))
    assert tick_live == tick_restored
    assert "hard_nat_attempt_failed" in [d.TYPE for d in tick_restored.decisions]


def test_explain_tells_the_attempt_and_why_not(tmp_path: Path) -> None:
    """Kills: an explain that is silent about hard NATs (tried or not)."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(12_000)
    path = tmp_path / "log.db"
    with EventLog.open(str(path)) as log:
        log.append([(stream_of(e, "local"), e) for e in driver.log])
        engine, _ = rebuild(log, "local")
        lines = explain_lines(log, "local", P, engine, full=True)
    text = "\n".join(lines)
    assert "hard-NAT attempt 1 as the hard side" in text and "symmetric" in text
    assert "hard-NAT attempt 1 failed — no pair met within 10000 ms" in text
    assert "hard NAT: no attempt — the next attempt is due at 71100 ms" in lines[-1]


def test_the_attempt_aims_at_the_candidate_beyond_the_nat_documentation_ranges_included() -> None:
    """Found by the real agents' e2e (issue 16): on the lab internet (203.0.113.0/24, which
    Python calls private) every peer had 'no public endpoint to aim at'. Kills a target
    rule that refuses documentation ranges, and one that aims at a LAN or CGNAT address."""
    from natrelay.core.hard_nat import beyond_nat

    assert beyond_nat("203.0.113.102:51820") and beyond_nat("37.0.0.9:40000")
    assert not any(beyond_nat(e) for e in ("10.2.0.2:51820", "100.64.3.4:1", "192.168.1.2:5", "[fe80::1]:5"))
    driver = Driver(ON)
    driver.feed(NatObserved(at=0, nat_type="symmetric"))
    driver.relays("r1")
    lab = "203.0.113.102:51820"
    driver.feed(PeerAdded(at=10, peer=P, candidates=("10.2.0.2:51820", lab), nat_type="port_restricted_cone"))
    driver.feed(RelaySessionEstablished(at=100, peer=P, relay="r1", session="s1"))
    driver.until(1_200)
    assert [a.endpoint for a in started(driver)] == [lab]


def test_an_attempt_ends_when_the_pairing_stops_being_hard() -> None:
    """Kills: spraying on after the peer said a plain punch now works (a port mapping made its
    WireGuard port a full cone: the mapped candidate is probed, the attempt must stop)."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    assert P in driver.engine.hard_nat.open
    reaction = driver.feed(
        CandidatesUpdated(at=2_000, peer=P, candidates=("37.0.0.9:51820", PUBLIC), nat_type="full_cone")
    )
    [failed] = [d for d in reaction.decisions if isinstance(d, HardNatAttemptFailed)]
    assert failed.reason.startswith("the pairing is no longer hard")
    assert StopHardNatAttempt(peer=P, attempt=1) in reaction.commands


def test_removing_the_peer_closes_its_attempts_sockets() -> None:
    """Kills: a removal that forgets the attempt in the book but leaves its sockets spraying."""
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    reaction = driver.feed(PeerRemoved(at=2_000, peer=P))
    assert StopHardNatAttempt(peer=P, attempt=1) in reaction.commands
    assert P not in driver.engine.hard_nat.open


def test_a_mapped_port_that_comes_after_the_punch_takes_over_the_punched_path() -> None:
    """Kills: staying on a punched port (a socket the hard side's agent relays) once the peer's
    router granted a mapping of WireGuard's own port (tests/e2e/test_hitless.py, UPnP)."""
    mapped = "37.0.0.9:51820"
    driver = relayed("symmetric", "port_restricted_cone")
    driver.until(1_200)
    driver.feed(HardNatPairMet(at=2_000, peer=P, attempt=1, endpoint=PUBLIC, local_port=9, probes_sent=0))
    assert driver.engine.peers[P].path == PUBLIC
    reaction = driver.feed(
        CandidatesUpdated(at=3_000, peer=P, candidates=(mapped, PUBLIC), nat_type="full_cone")
    )
    reactions = [reaction, *driver.until(3_000)]
    probed = [c.endpoint for r in reactions for c in r.commands if type(c).__name__ == "TryDirectEndpoint"]
    assert mapped in probed
    roam = driver.feed(HandshakeObserved(at=3_050, peer=P, endpoint=mapped))
    assert SwitchPath(peer=P, endpoint=mapped) in roam.commands
    assert driver.engine.peers[P].path == mapped


def test_a_mapping_of_the_same_endpoint_is_probed_when_the_peers_nat_changes() -> None:
    """Kills: staying on the punched port when the router maps WireGuard's own port at the very
    endpoint that failed before (the e2e PCP case: 198.51.99.101:51820 went from reflexive to
    mapped, the peer's NAT from symmetric to full cone; the candidates did not change)."""
    same = "37.0.0.9:51820"
    driver = relayed("symmetric", "port_restricted_cone")
    driver.feed(CandidatesUpdated(at=500, peer=P, candidates=(same, LAN), nat_type="symmetric"))
    driver.until(1_600)
    [attempt] = started(driver)
    driver.feed(
        HardNatPairMet(at=attempt.at + 900, peer=P, attempt=1, endpoint=PUBLIC, local_port=9, probes_sent=0)
    )
    assert driver.engine.peers[P].path == PUBLIC
    reaction = driver.feed(CandidatesUpdated(at=4_000, peer=P, candidates=(same, LAN), nat_type="full_cone"))
    reactions = [reaction, *driver.until(4_000)]
    probed = [c.endpoint for r in reactions for c in r.commands if type(c).__name__ == "TryDirectEndpoint"]
    assert same in probed
