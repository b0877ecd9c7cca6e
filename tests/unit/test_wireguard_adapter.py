"""The WireGuard adapter's pure parts: dump parsing, `wg set` arguments, error mapping."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from natrelay.adapters.mesh.wireguard import (
    DumpParseError,
    InterfaceNotFound,
    PeerConfig,
    WgCommandFailed,
    WgNotFound,
    WireGuard,
    parse_dump,
    set_peer_args,
)

PRIVATE = "UMc/btFDxw3NEWyAWUARME18eAjzTSTXT/c2y7d13FU="
PUB_IF = "BxqM17qHTPnOSkpkALzFR7nx8N0jnttcNpNL9V7TeQo="
PUB_B = "vR2GGioLuZKfV/xl/IrJjXMP8Dn4Svvu5fD8UUyoQBY="
PUB_C = "FSt7DyeRmJiLUQKdYFVrlS0MYcYAR755apQ9YfiGtnk="
DUMP = (
    f"{PRIVATE}\t{PUB_IF}\t51820\toff\n"
    f"{PUB_B}\t(none)\t203.0.113.102:51820\t10.77.0.2/32\t1795561845\t180\t272\t1\n"
    f"{PUB_C}\t(none)\t(none)\t10.77.0.3/32,10.78.0.0/16\t0\t0\t296\toff\n"
)


def test_dump_parses_handshakes_endpoints_and_counters() -> None:
    status = parse_dump(DUMP)
    assert status.public_key == PUB_IF
    assert status.listen_port == 51820
    assert status.fwmark is None
    b = status.peer(PUB_B)
    assert b is not None
    assert b.endpoint == "203.0.113.102:51820"
    assert b.latest_handshake == 1795561845
    assert (b.rx_bytes, b.tx_bytes) == (180, 272)
    assert b.persistent_keepalive == 1
    c = status.peer(PUB_C)
    assert c is not None
    assert c.endpoint is None
    assert c.latest_handshake == 0
    assert c.allowed_ips == ("10.77.0.3/32", "10.78.0.0/16")
    assert c.persistent_keepalive is None


def test_dump_never_keeps_the_private_key() -> None:
    status = parse_dump(DUMP)
    assert PRIVATE not in repr(status)


def test_dump_of_an_interface_without_peers() -> None:
    status = parse_dump(f"{PRIVATE}\t{PUB_IF}\t0\t0x1234\n")
    assert status.peers == ()
    assert status.fwmark == 0x1234


@pytest.mark.parametrize(
    "text", ["", "a\tb\n", f"{PRIVATE}\t{PUB_IF}\t51820\toff\nx\ty\n", f"{PRIVATE}\t{PUB_IF}\tport\toff\n"]
)
def test_malformed_dump_raises_a_named_error_without_secrets(text: str) -> None:
    with pytest.raises(DumpParseError) as info:
        parse_dump(text)
    assert PRIVATE not in str(info.value)


def test_set_peer_args_recreate_removes_and_adds_in_one_call() -> None:
    peer = PeerConfig(PUB_B, ("10.77.0.2/32",), "127.0.0.1:40000", 1)
    assert set_peer_args("wg0", peer, recreate=True) == [
        "wg",
        "set",
        "wg0",
        "peer",
        PUB_B,
        "remove",
        "peer",
        PUB_B,
        "allowed-ips",
        "10.77.0.2/32",
        "endpoint",
        "127.0.0.1:40000",
        "persistent-keepalive",
        "1",
    ]
    assert "remove" not in set_peer_args("wg0", peer)


class FakeWg:
    """Answers like `wg` would, and records the argv it got."""

    def __init__(self, returncode: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.result = (returncode, stdout, stderr)

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        code, out, err = self.result
        return subprocess.CompletedProcess(list(argv), code, out, err)


def test_missing_interface_is_interface_not_found() -> None:
    wg = WireGuard("wg9", runner=FakeWg(1, "", "Unable to access interface: No such device\n"))
    with pytest.raises(InterfaceNotFound, match="wg9"):
        wg.show()


def test_refused_command_is_wg_command_failed() -> None:
    wg = WireGuard("wg0", runner=FakeWg(1, "", "Key is not the correct length or format\n"))
    with pytest.raises(WgCommandFailed, match="correct length"):
        wg.add_peer(PeerConfig("bad", ("10.0.0.1/32",)))


def test_missing_wg_binary_is_wg_not_found() -> None:
    def runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(WgNotFound, match="wireguard-tools"):
        WireGuard("wg0", runner=runner).show()


def test_set_endpoint_recreates_a_known_peer_so_the_handshake_starts_now() -> None:
    fake = FakeWg()
    wg = WireGuard("wg0", runner=fake)
    wg.add_peer(PeerConfig(PUB_B, ("10.77.0.2/32",), None, 1))
    wg.set_endpoint(PUB_B, "203.0.113.102:51820")
    assert fake.calls[-1][:6] == ["wg", "set", "wg0", "peer", PUB_B, "remove"]
    assert "203.0.113.102:51820" in fake.calls[-1]
    wg.set_endpoint(PUB_B, "203.0.113.102:51821", handshake_now=False)
    assert "remove" not in fake.calls[-1]


def test_set_endpoint_of_an_unknown_peer_reads_its_config_first() -> None:
    fake = FakeWg(0, DUMP)
    wg = WireGuard("wg0", runner=fake)
    wg.set_endpoint(PUB_B, "127.0.0.1:40000")
    assert fake.calls[0] == ["wg", "show", "wg0", "dump"]
    assert fake.calls[1][-2:] == ["persistent-keepalive", "1"]
