"""PCP and NAT-PMP messages, and host candidates, without a router or a network."""

from __future__ import annotations

import struct

import pytest

from natrelay.adapters.mesh import candidates as cand
from natrelay.adapters.mesh import port_mapping as pm


def _ip16(ip: str) -> bytes:
    return pm._ip16(ip)


def test_pcp_map_request_and_response() -> None:
    nonce = bytes(range(12))
    request = pm.pcp_map_request("10.1.0.2", 51820, 51820, 3600, nonce)
    assert len(request) == 60
    assert request[:2] == b"\x02\x01" and request[8:24] == _ip16("10.1.0.2")
    assert request[24:36] == nonce and struct.unpack("!B3xHH", request[36:44]) == (17, 51820, 51820)
    response = (
        struct.pack("!BBxBII", 2, 0x81, 0, 1800, 7)
        + b"\0" * 12
        + nonce
        + struct.pack("!B3xHH", 17, 51820, 40000)
        + _ip16("198.51.99.101")
    )
    assert pm.pcp_parse_map(response, nonce, 51820) == ("198.51.99.101", 40000, 1800)
    with pytest.raises(pm.MappingError, match="nonce"):
        pm.pcp_parse_map(response, bytes(12), 51820)
    refused = response[:3] + b"\x02" + response[4:]
    with pytest.raises(pm.MappingError, match="refused"):
        pm.pcp_parse_map(refused, nonce, 51820)


def test_natpmp_messages() -> None:
    assert pm.natpmp_map_request(51820, 51820, 3600) == struct.pack("!BBHHHI", 0, 1, 0, 51820, 51820, 3600)
    assert pm.natpmp_parse_address(struct.pack("!BBHI", 0, 128, 0, 5) + bytes([198, 51, 99, 101])) == (
        "198.51.99.101"
    )
    response = struct.pack("!BBHIHHI", 0, 129, 0, 5, 51820, 40001, 3600)
    assert pm.natpmp_parse_map(response, 51820) == (40001, 3600)
    with pytest.raises(pm.MappingError, match="refused"):
        pm.natpmp_parse_map(struct.pack("!BBHIHHI", 0, 129, 2, 5, 51820, 0, 0), 51820)


def test_host_candidates_skip_loopback_link_local_and_the_tunnel() -> None:
    pairs = [
        ("lo", "127.0.0.1"),
        ("eth0", "10.1.0.2"),
        ("wg0", "10.77.0.1"),
        ("eth1", "169.254.3.4"),
        ("eth2", "fe80::1"),
    ]
    assert cand.usable_addresses(pairs, ("wg0",)) == ["10.1.0.2"]
    kinds = {"203.0.113.1:51820": "reflexive", "10.1.0.2:51820": "host", "198.51.99.1:5": "mapped"}
    assert cand.ordered(kinds) == ("10.1.0.2:51820", "198.51.99.1:5", "203.0.113.1:51820")


def test_host_addresses_read_over_netlink_agree_with_iproute2() -> None:
    """The rtnetlink reader (no fork) sees the addresses `ip -4 addr show up` lists."""
    import json
    import subprocess

    listed = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "up"], capture_output=True, text=True, check=True
        ).stdout
    )
    expected = sorted((i["ifname"], a["local"]) for i in listed for a in i.get("addr_info", []))
    assert sorted(cand._netlink_ipv4_addresses()) == expected
