"""The path proxy and its probes on loopback: authenticated probes confirm paths, forged ones do not."""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

from natrelay.adapters.mesh import probes as pr
from natrelay.adapters.mesh.path_proxy import PathProxy

SECRET = b"a mesh secret of enough bytes"
A = base64.b64encode(bytes([1]) * 32).decode()
B = base64.b64encode(bytes([2]) * 32).decode()


def test_probe_roundtrip_and_pair_key_symmetry() -> None:
    key = pr.pair_key(SECRET, A, B)
    assert key == pr.pair_key(SECRET, B, A)
    txid = pr.new_txid()
    probe = pr.decode(pr.encode(pr.PONG, B, key, txid, observed=("10.0.0.1", 51820)), key)
    assert probe == pr.Probe(kind=pr.PONG, sender=B, txid=txid, observed=("10.0.0.1", 51820))


@pytest.mark.parametrize(
    "forge",
    [
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # MAC flipped
        lambda data: data[:45] + bytes([data[45] ^ 1]) + data[46:],  # txid changed
        lambda data: pr.encode(
            pr.PONG, B, pr.pair_key(b"another mesh's secret", A, B), data[39:51], ("1.2.3.4", 1)
        ),
    ],
)
def test_a_forged_probe_is_rejected(forge) -> None:
    key = pr.pair_key(SECRET, A, B)
    data = pr.encode(pr.PONG, B, key, pr.new_txid(), observed=("10.0.0.1", 51820))
    with pytest.raises(pr.ProbeError):
        pr.decode(forge(data), key)


def test_a_pong_counts_only_for_a_ping_sent_to_that_address() -> None:
    pending = pr.PendingPings()
    txid = pr.new_txid()
    pending.add(txid, B, ("10.0.0.2", 51820), now=100.0)
    probe = pr.Probe(kind=pr.PONG, sender=B, txid=txid, observed=None)
    assert pending.answer(probe, ("10.0.0.9", 51820), now=100.1) is None  # from elsewhere
    assert pending.answer(pr.Probe(kind=pr.PONG, sender=A, txid=txid), ("10.0.0.2", 51820), 100.1) is None
    assert pending.answer(probe, ("10.0.0.2", 51820), now=100.1) == pytest.approx(0.1)
    assert pending.answer(probe, ("10.0.0.2", 51820), now=100.2) is None  # replayed


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


def test_a_forged_answer_does_not_redirect_traffic() -> None:
    """The proxy probes a candidate; an attacker answers from elsewhere and with a bad MAC.

    Neither answer may confirm a path or make the proxy send WireGuard's packets anywhere;
    the genuine answer confirms it.
    """

    async def scenario() -> None:
        answers: list[tuple[str, tuple[str, int]]] = []
        wg = _udp()
        proxy = PathProxy(
            me=A,
            secret=SECRET,
            public_port=0,
            wg_port=wg.getsockname()[1],
            bind_host="127.0.0.1",
            on_answer=lambda peer, addr, rtt, seen: answers.append((peer, addr)),
        )
        proxy.start()
        endpoint = proxy.add_peer(B)
        public = proxy._public.getsockname()  # type: ignore[union-attr]
        peer_b, attacker = _udp(), _udp()
        proxy.probe(B, peer_b.getsockname(), 1.0)
        ping, _ = await asyncio.to_thread(peer_b.recvfrom, 2048)
        txid = pr.decode(ping, pr.pair_key(SECRET, A, B)).txid
        # 1. a correct pong, but sent from the attacker's address (it saw the ping on the wire)
        good_key = pr.pair_key(SECRET, A, B)
        attacker.sendto(pr.encode(pr.PONG, B, good_key, txid, observed=public), public)
        # 2. from the candidate's address, with a key of another mesh
        bad_key = pr.pair_key(b"not this mesh's secret", A, B)
        attacker_pong = pr.encode(pr.PONG, B, bad_key, txid, observed=public)
        peer_b.sendto(attacker_pong, public)
        await asyncio.sleep(0.1)
        assert answers == []
        assert proxy.rejected_probes >= 2
        assert attacker.getsockname() not in proxy._addr_peer
        # WireGuard's packets have no path yet: nothing reaches the attacker
        wg.sendto(b"\x04" + b"\0" * 100, ("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
        await asyncio.sleep(0.05)
        attacker.setblocking(False)
        with pytest.raises(BlockingIOError):
            attacker.recv(2048)
        # 3. the genuine answer confirms the candidate
        peer_b.sendto(pr.encode(pr.PONG, B, good_key, txid, observed=public), public)
        await asyncio.sleep(0.1)
        assert answers == [(B, peer_b.getsockname())]
        proxy.close()
        for sock in (wg, peer_b, attacker):
            sock.close()

    asyncio.run(scenario())


def test_packets_follow_the_selected_path_and_inbound_reaches_wireguard() -> None:
    async def scenario() -> None:
        wg, peer_b = _udp(), _udp()
        proxy = PathProxy(
            me=A, secret=SECRET, public_port=0, wg_port=wg.getsockname()[1], bind_host="127.0.0.1"
        )
        proxy.start()
        link = int(proxy.add_peer(B).rsplit(":", 1)[1])
        public = proxy._public.getsockname()  # type: ignore[union-attr]
        proxy.use_direct(B, peer_b.getsockname())
        wg.sendto(b"\x04" + b"x" * 60, ("127.0.0.1", link))
        data, source = await asyncio.to_thread(peer_b.recvfrom, 2048)
        assert data == b"\x04" + b"x" * 60 and source == public
        peer_b.sendto(b"\x04" + b"y" * 60, public)
        data, source = await asyncio.to_thread(wg.recvfrom, 2048)
        assert data == b"\x04" + b"y" * 60 and source == ("127.0.0.1", link)
        proxy.close()
        wg.close()
        peer_b.close()

    asyncio.run(scenario())


def test_an_active_direct_path_that_stops_answering_is_reported_dead() -> None:
    async def scenario() -> None:
        dead: list[str] = []
        wg, peer_b = _udp(), _udp()
        proxy = PathProxy(
            me=A,
            secret=SECRET,
            public_port=0,
            wg_port=wg.getsockname()[1],
            bind_host="127.0.0.1",
            on_dead=lambda peer, silent: dead.append(peer),
        )
        proxy.start()
        link = int(proxy.add_peer(B).rsplit(":", 1)[1])
        proxy.use_direct(B, peer_b.getsockname())
        # idle: no heartbeat, nothing reported however long it is silent
        proxy.check_liveness(proxy.link(B).last_rx_direct + 10)  # type: ignore[union-attr]
        assert dead == []
        wg.sendto(b"\x04" + b"d" * 100, ("127.0.0.1", link))  # data, not a keepalive
        await asyncio.sleep(0.05)
        now = proxy.link(B).last_tx_data  # type: ignore[union-attr]
        proxy.link(B).last_rx_direct = now - 1.0  # type: ignore[union-attr]
        proxy.check_liveness(now)
        assert dead == []  # 1 s silent: a heartbeat ping, no verdict yet
        proxy.link(B).last_rx_direct = now - 2.6  # type: ignore[union-attr]
        proxy.check_liveness(now)
        assert dead == [B]
        proxy.close()
        wg.close()
        peer_b.close()

    asyncio.run(scenario())
