"""The NAT model: each RFC 4787 behaviour, and the hole-punching truth table for every NAT pair."""

from __future__ import annotations

import itertools

import pytest

from natrelay.adapters.sim.nat_model import (
    NAT_TYPES,
    NatBehaviour,
    NatBox,
    hairpin_works,
    punch,
    roaming_survives,
)

A, B = ("198.51.100.7", 1000), ("198.51.100.8", 2000)


def test_endpoint_independent_mapping_reuses_the_port_for_every_destination() -> None:
    box = NatBox(NAT_TYPES["full_cone"], "203.0.113.1")
    assert box.outbound(A) == box.outbound(B)


def test_endpoint_dependent_mapping_gives_each_destination_its_own_port() -> None:
    box = NatBox(NAT_TYPES["symmetric"], "203.0.113.1")
    assert box.outbound(A) != box.outbound(B)


def test_no_translation_keeps_the_inside_port() -> None:
    box = NatBox(NAT_TYPES["none"], "203.0.113.1", inside_port=51820)
    assert box.outbound(A) == ("203.0.113.1", 51820)


@pytest.mark.parametrize(
    ("nat", "same_address_other_port", "other_address"),
    [
        ("full_cone", True, True),  # endpoint-independent filtering
        ("restricted_cone", True, False),  # address-dependent filtering
        ("port_restricted_cone", False, False),  # address-and-port-dependent filtering
    ],
)
def test_filtering_admits_what_rfc_4787_says(
    nat: str, same_address_other_port: bool, other_address: bool
) -> None:
    box = NatBox(NAT_TYPES[nat], "203.0.113.1")
    _, port = box.outbound(A)  # type: ignore[misc]
    assert box.admits(port, A)
    assert box.admits(port, (A[0], 9999)) is same_address_other_port
    assert box.admits(port, B) is other_address


def test_a_port_without_a_mapping_admits_nothing() -> None:
    box = NatBox(NAT_TYPES["full_cone"], "203.0.113.1")
    assert not box.admits(12345, A)


def test_the_stateful_firewall_drops_unsolicited_udp_but_admits_replies() -> None:
    box = NatBox(NAT_TYPES["firewall"], "203.0.113.1")
    assert not box.admits(51820, A)
    box.outbound(A)
    assert box.admits(51820, A)
    assert not box.admits(51820, B)


def test_udp_blocked_drops_everything() -> None:
    box = NatBox(NAT_TYPES["udp_blocked"], "203.0.113.1")
    assert box.outbound(A) is None
    assert not box.admits(51820, A)


#: Pairs (local, remote) where no direct path exists; every other pair punches through.
IMPOSSIBLE = (
    {
        ("port_restricted_cone", "symmetric"),
        ("symmetric", "port_restricted_cone"),
        ("symmetric", "symmetric"),
        ("symmetric", "firewall"),
        ("firewall", "symmetric"),
    }
    | {(n, "udp_blocked") for n in NAT_TYPES}
    | {("udp_blocked", n) for n in NAT_TYPES}
)


@pytest.mark.parametrize(("local", "remote"), list(itertools.product(NAT_TYPES, NAT_TYPES)))
def test_hole_punching_truth_table(local: str, remote: str) -> None:
    result = punch(NAT_TYPES[local], NAT_TYPES[remote])
    assert result.works is ((local, remote) not in IMPOSSIBLE)


def test_punching_is_symmetric() -> None:
    for a, b in itertools.product(NAT_TYPES.values(), NAT_TYPES.values()):
        assert punch(a, b).works == punch(b, a).works


def test_a_symmetric_peer_is_reached_on_the_mapping_it_made_for_us() -> None:
    result = punch(NAT_TYPES["full_cone"], NAT_TYPES["symmetric"])
    assert result.works and result.peer_endpoint == "dedicated"
    assert punch(NAT_TYPES["full_cone"], NAT_TYPES["restricted_cone"]).peer_endpoint == "reflexive"


def test_a_stale_endpoint_works_only_when_our_filter_lets_the_peer_roam_in() -> None:
    assert punch(NAT_TYPES["full_cone"], NAT_TYPES["port_restricted_cone"], "stale").works
    assert not punch(NAT_TYPES["port_restricted_cone"], NAT_TYPES["full_cone"], "stale").works


def test_hairpinning() -> None:
    assert hairpin_works(NatBehaviour(hairpinning=True))
    assert not hairpin_works(NatBehaviour(hairpinning=False))
    assert not hairpin_works(NatBehaviour(mapping="endpoint_dependent", hairpinning=True))


def test_roaming_after_a_rebinding_depends_on_our_filter() -> None:
    assert roaming_survives(NAT_TYPES["restricted_cone"])
    assert not roaming_survives(NAT_TYPES["port_restricted_cone"])
