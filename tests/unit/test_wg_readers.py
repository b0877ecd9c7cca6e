"""Reading and configuring WireGuard without `wg`: UAPI text, the UAPI socket, kernel netlink messages."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from natrelay.adapters.mesh.wg_netlink import status_from_messages
from natrelay.adapters.mesh.wg_uapi import UapiTransport, parse_get, set_request
from natrelay.adapters.mesh.wireguard import (
    DumpParseError,
    InterfaceNotFound,
    PeerConfig,
    WgCommandFailed,
    WireGuard,
)
from tests.conftest import make_key
from tests.unit.fake_wireguard_go import FakeWireGuardGo

B, C = make_key(2), make_key(3)
PRIVATE_HEX = "a8" * 32


def hexk(key: str) -> str:
    return base64.b64decode(key).hex()


GET = (
    f"private_key={PRIVATE_HEX}\nlisten_port=51820\nfwmark=0\n"
    f"public_key={hexk(B)}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
    "endpoint=203.0.113.102:51820\nlast_handshake_time_sec=1795561845\n"
    "last_handshake_time_nsec=250000000\ntx_bytes=272\nrx_bytes=180\n"
    "persistent_keepalive_interval=1\nallowed_ip=10.77.0.2/32\n"
    f"public_key={hexk(C)}\npreshared_key={'1f' * 32}\nprotocol_version=1\n"
    "endpoint=[2001:db8::7]:51820\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
    "tx_bytes=296\nrx_bytes=0\npersistent_keepalive_interval=0\n"
    "allowed_ip=10.77.0.3/32\nallowed_ip=10.78.0.0/16\nerrno=0\n\n"
)


def test_uapi_get_parses_handshakes_endpoints_counters_and_drops_the_private_key() -> None:
    status = parse_get(GET)
    assert status.listen_port == 51820
    assert status.fwmark is None
    b, c = status.peer(B), status.peer(C)
    assert b is not None and c is not None
    assert (b.endpoint, b.latest_handshake, b.rx_bytes, b.tx_bytes) == (
        "203.0.113.102:51820",
        1795561845,
        180,
        272,
    )
    assert b.latest_handshake_ns == 1795561845_250000000
    assert b.persistent_keepalive == 1 and not b.has_preshared_key
    assert c.endpoint == "[2001:db8::7]:51820"
    assert c.allowed_ips == ("10.77.0.3/32", "10.78.0.0/16")
    assert c.persistent_keepalive is None and c.has_preshared_key
    assert c.latest_handshake == 0
    assert PRIVATE_HEX not in repr(status)


def test_uapi_get_with_only_parses_just_those_peers() -> None:
    status = parse_get(GET, only={C})
    assert [p.public_key for p in status.peers] == [C]
    full = parse_get(GET)
    for key in (B, C):
        assert parse_get(GET, only={key, make_key(9)}).peers == (full.peer(key),)
    many = {make_key(i) for i in range(10, 80)} | {B}  # past the find-each-key shortcut
    assert parse_get(GET, only=many).peers == (full.peer(B),)


def test_uapi_get_with_a_memo_reuses_unchanged_peers_and_reparses_a_changed_one() -> None:
    """Kills a memo that serves a peer's old counters after they moved (a dead path would
    look alive), and one that grows without bound with peers long gone."""
    memo: dict[str, object] = {}
    assert parse_get(GET, None, memo) == parse_get(GET)  # type: ignore[arg-type]
    assert len(memo) == 2
    moved = GET.replace("rx_bytes=180", "rx_bytes=4242")
    again = parse_get(moved, None, memo)  # type: ignore[arg-type]
    assert again == parse_get(moved)
    b = again.peer(B)
    assert b is not None and b.rx_bytes == 4242
    assert again.peer(C) is parse_get(moved, None, memo).peer(C)  # type: ignore[arg-type]
    only_b = moved[: moved.index(f"public_key={hexk(C)}")] + "errno=0\n\n"
    parse_get(only_b, None, memo)  # type: ignore[arg-type]
    assert len(memo) == 1, "a peer no longer configured leaves the memo"


@pytest.mark.parametrize(
    ("text", "error", "names"),
    [
        (GET.replace("errno=0", "errno=19"), WgCommandFailed, "errno=19"),
        (GET.replace("errno=0\n", ""), DumpParseError, "errno="),
        (GET.replace("rx_bytes=180", "rx_bytes=lots"), DumpParseError, "peer 1"),
        (GET.replace("protocol_version=1\nendpoint=203", "garbage\nendpoint=203"), DumpParseError, "garbage"),
    ],
)
def test_uapi_get_refuses_what_it_does_not_understand(text: str, error: type, names: str) -> None:
    with pytest.raises(error, match=names):
        parse_get(text)


def test_uapi_set_recreates_a_peer_in_one_transaction_and_removes_others() -> None:
    config = PeerConfig(B, ("10.77.0.2/32",), "203.0.113.102:51820", 1)
    request = set_request([(config, True)], removals=[C]).decode()
    assert request == (
        "set=1\n"
        f"public_key={hexk(C)}\nremove=true\n"
        f"public_key={hexk(B)}\nremove=true\n"
        f"public_key={hexk(B)}\nreplace_allowed_ips=true\nendpoint=203.0.113.102:51820\n"
        "persistent_keepalive_interval=1\nallowed_ip=10.77.0.2/32\n\n"
    )


def test_uapi_set_refuses_a_key_that_is_not_32_bytes() -> None:
    with pytest.raises(WgCommandFailed, match="not a WireGuard key"):
        set_request([(PeerConfig("bm90LWEta2V5", ("10.0.0.1/32",)), False)])


@pytest.fixture
def wggo() -> Iterator[FakeWireGuardGo]:
    server = FakeWireGuardGo()
    yield server
    server.close()


def test_the_facade_reads_and_writes_through_the_socket_and_counts_writes(wggo: FakeWireGuardGo) -> None:
    wg = WireGuard("wgtest", socket_dir=wggo.dir, public_key=make_key(1))
    assert wg.kind == "uapi"
    wg.add_peers([PeerConfig(B, ("10.77.0.2/32",), None, 1), PeerConfig(C, ("10.77.0.3/32",), None, 1)])
    assert wggo.count("set=1") == 1  # one transaction for both
    wggo.set_handshake(B, 1795561845)
    before = wg.generation(B)
    wg.set_endpoint(B, "203.0.113.102:51820")
    assert wg.generation(B) == before + 1
    status = wg.show()
    assert status.public_key == make_key(1)
    b = status.peer(B)
    assert b is not None
    # Re-created: the handshake of the old session is gone, the endpoint is new.
    assert (b.endpoint, b.latest_handshake, b.allowed_ips) == ("203.0.113.102:51820", 0, ("10.77.0.2/32",))
    wg.remove_peer(C)
    assert wg.show().peer(C) is None


def test_a_missing_socket_is_interface_not_found(wggo: FakeWireGuardGo) -> None:
    with pytest.raises(InterfaceNotFound, match="wgnone"):
        UapiTransport("wgnone", wggo.dir).show()


def test_a_refused_set_names_the_interface_and_errno(wggo: FakeWireGuardGo) -> None:
    wggo.set_errno = 22
    with pytest.raises(WgCommandFailed, match=r"wgtest.*errno=22"):
        UapiTransport("wgtest", wggo.dir).apply([(PeerConfig(B, ("10.77.0.2/32",)), False)])


# ---- kernel WireGuard: netlink messages as the kernel sends them ----------------------------


def _peer(key: str, **attrs: object) -> dict[str, object]:
    return {"attrs": [["WGPEER_A_PUBLIC_KEY", key], *([k, v] for k, v in attrs.items())]}


def _allowed(*cidrs: str) -> list[dict[str, object]]:
    out = []
    for cidr in cidrs:
        addr, mask = cidr.split("/")
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        out.append(
            {
                "attrs": [
                    ["WGALLOWEDIP_A_FAMILY", family],
                    ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(family, addr)],
                    ["WGALLOWEDIP_A_CIDR_MASK", int(mask)],
                ]
            }
        )
    return out


def _kernel_message(peers: list[dict[str, object]]) -> wgmsg:
    """Encode a WG_CMD_GET_DEVICE answer to bytes and decode it back, as a netlink socket would."""
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["attrs"] = [
        ["WGDEVICE_A_IFNAME", "wg0"],
        ["WGDEVICE_A_PUBLIC_KEY", make_key(1)],
        ["WGDEVICE_A_LISTEN_PORT", 51820],
        ["WGDEVICE_A_PEERS", peers],
    ]
    msg.encode()
    received = wgmsg(msg.data)
    received.decode()
    return received


def test_netlink_messages_merge_into_one_status_peers_split_across_messages_included() -> None:
    first = _kernel_message(
        [
            _peer(
                B,
                WGPEER_A_ENDPOINT={"addr": "203.0.113.102", "port": 51820},
                WGPEER_A_LAST_HANDSHAKE_TIME={"tv_sec": 1795561845, "tv_nsec": 7},
                WGPEER_A_RX_BYTES=180,
                WGPEER_A_TX_BYTES=272,
                WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL=25,
                WGPEER_A_ALLOWEDIPS=_allowed("10.77.0.2/32"),
            ),
            _peer(C, WGPEER_A_ALLOWEDIPS=_allowed("10.77.0.3/32")),
        ]
    )
    # The kernel ran out of room: C's further allowed IPs come in the next message.
    second = _kernel_message([_peer(C, WGPEER_A_ALLOWEDIPS=_allowed("fd00::/64"))])
    status = status_from_messages([first, second])
    assert status.public_key == make_key(1)
    assert status.listen_port == 51820
    b, c = status.peer(B), status.peer(C)
    assert b is not None and c is not None
    assert (b.endpoint, b.latest_handshake, b.rx_bytes, b.tx_bytes) == (
        "203.0.113.102:51820",
        1795561845,
        180,
        272,
    )
    assert b.latest_handshake_ns == 1795561845_000000007
    assert b.persistent_keepalive == 25
    assert c.allowed_ips == ("10.77.0.3/32", "fd00::/64")
    assert c.endpoint is None and c.latest_handshake == 0


def test_netlink_ipv6_endpoint_is_bracketed_like_wg_prints_it() -> None:
    message = _kernel_message([_peer(B, WGPEER_A_ENDPOINT={"addr": "2001:db8::7", "port": 51820})])
    b = status_from_messages([message]).peer(B)
    assert b is not None and b.endpoint == "[2001:db8::7]:51820"


def test_netlink_no_answer_is_an_error() -> None:
    with pytest.raises(DumpParseError, match="no answer"):
        status_from_messages([])
