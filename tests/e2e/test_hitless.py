"""End to end, the hitless data plane: ping at 5/s through the tunnel and count every loss.

Real wireguard-go, coturn and NATs in namespaces, the DEFAULT policy (relay first, probe
for a direct path meanwhile), each case with the agents in proxy mode and in shared mode
(``data_plane``). Each scenario pings a -> b every
200 ms while the agents probe, upgrade, fall back and come back, and asserts how many
packets were lost and the longest gap. Measured numbers are printed (run with -s) and
recorded in BENCHMARKS.md ("Hitless data plane").

NATRELAY_E2E_RELAYED_S sets the length of the relayed run (default 180 s, the only long
case).
"""

from __future__ import annotations

import os
import time

import pytest
from mesh import Mesh
from pingloss import PingRecorder

pytestmark = pytest.mark.e2e

RELAYED_S = float(os.environ.get("NATRELAY_E2E_RELAYED_S", "180"))


@pytest.fixture(params=["proxy", "shared"])
def data_plane(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _default_policy(mesh: Mesh, data_plane: str) -> Mesh:
    mesh.policy = {}
    mesh.settings["data_plane"] = data_plane
    return mesh


def _pinger(mesh: Mesh, src: str = "a", dst: str = "b") -> PingRecorder:
    return PingRecorder(mesh.topo.peers[src].ns, mesh.topo.peers[dst].tunnel_ip).start()


def _stop_and_verify(mesh: Mesh) -> None:
    assert mesh.stop_agent("a") == 0, mesh.agent_log("a")[-2000:]
    assert mesh.stop_agent("b") == 0, mesh.agent_log("b")[-2000:]
    for node in ("a", "b"):
        print(mesh.verify(node))


def test_relayed_pair_loses_nothing_to_upgrade_probes(mesh_factory, data_plane: str) -> None:
    mesh = _default_policy(mesh_factory("symmetric", "symmetric"), data_plane)
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("relay", 40)
    probes_before = mesh.decisions("a").count("direct_attempt_started")
    ping = _pinger(mesh)
    time.sleep(RELAYED_S)
    result = ping.stop()
    probes = mesh.decisions("a").count("direct_attempt_started") - probes_before
    print(f"relayed symmetric/symmetric, {RELAYED_S:.0f} s, {probes} upgrade probes by a: {result.summary()}")
    assert probes >= 3, "the scenario must include upgrade probes"
    assert result.sent >= RELAYED_S / 0.2 * 0.9
    assert not result.lost, result.summary()
    assert mesh.path_kind("a", "b") == "relay"
    _stop_and_verify(mesh)


def test_upgrade_to_a_new_direct_path_loses_nothing(mesh_factory, data_plane: str) -> None:
    mesh = _default_policy(mesh_factory("preserving", "symmetric"), data_plane)
    # The upgrade under test is the one b's new NAT opens, not a birthday punch (issue 16, in
    # tests/e2e/test_hard_nat_agent.py), which would otherwise find a direct path first.
    mesh.policy = {"hard_nat_enabled": False}
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("relay", 40)
    ping = _pinger(mesh)
    time.sleep(2)
    switched = time.monotonic()
    mesh.topo.set_nat("b", "preserving", flush="wireguard")
    took = mesh.wait_path("direct", 90)
    time.sleep(3)
    result = ping.stop()
    print(f"upgraded {took:.1f} s after b's NAT started preserving ports; {result.summary()}")
    assert "path_upgraded" in mesh.decisions("a") + mesh.decisions("b")
    assert time.monotonic() - switched > took
    assert not result.lost, result.summary()
    _stop_and_verify(mesh)


def test_blocked_direct_path_falls_back_fast_and_comes_back_hitless(mesh_factory, data_plane: str) -> None:
    mesh = _default_policy(mesh_factory("preserving", "preserving"), data_plane)
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("direct", 60)
    ping = _pinger(mesh)
    time.sleep(3)
    mesh.topo.block_direct("a", "b")
    blocked_at = time.monotonic()
    mesh.wait_for(
        "both on the relay after the block",
        lambda: mesh.path_kind("a", "b") == "relay" and mesh.path_kind("b", "a") == "relay",
        30,
    )
    on_relay = time.monotonic() - blocked_at
    time.sleep(3)
    fallback = ping.stop()
    print(f"direct path blocked: both on the relay after {on_relay:.1f} s; {fallback.summary()}")
    assert fallback.longest_gap_s <= 4.0, fallback.summary() + "\n" + mesh.diagnostics()
    assert len(fallback.gaps) == 1, fallback.summary() + "\n" + mesh.diagnostics()

    ping = _pinger(mesh)
    time.sleep(1)
    mesh.topo.block_direct("a", "b", blocked=False)
    took = mesh.wait_path("direct", 90)
    time.sleep(3)
    back = ping.stop()
    print(f"unblocked: direct again after {took:.1f} s; {back.summary()}")
    assert not back.lost, back.summary()
    _stop_and_verify(mesh)


def _topology(internet_net: str | None = None):
    from natrelay.tools.topology import Topology

    topo = Topology() if internet_net is None else Topology(internet_net=internet_net)
    topo.start()
    topo.add_relay("r1")
    topo.add_relay("r2")
    return topo


def test_two_peers_on_one_lan_connect_over_the_lan(data_plane: str) -> None:
    topo = _topology()
    try:
        topo.add_peer("a", "symmetric")
        topo.add_peer("b", lan_of="a")  # same LAN, same NAT; the router does not hairpin
        mesh = _default_policy(Mesh(topo), data_plane)
        mesh.start_agent("a")
        mesh.start_agent("b")
        took = mesh.wait_path("direct", 60)
        a, b = topo.peers["a"], topo.peers["b"]
        assert mesh.proxy_path("a", "b") == ("direct", f"{b.lan_ip}:51820")
        assert mesh.proxy_path("b", "a") == ("direct", f"{a.lan_ip}:51820")
        assert f"{b.lan_ip}:51820 (host)" in mesh.agent_log("b")
        print(f"one LAN behind one NAT: direct over the LAN {took:.1f} s after the agents started")
        _stop_and_verify(mesh)
    finally:
        topo.teardown()


@pytest.mark.parametrize("protocol", ["upnp", "pcp"])
def test_symmetric_nat_with_upnp_connects_through_the_mapped_port(protocol: str, data_plane: str) -> None:
    """miniupnpd with UPnP on (the agent maps by UPnP IGD) and off (it maps by PCP)."""
    topo = _topology(internet_net="198.51.99")
    try:
        topo.add_peer("a", "symmetric")
        topo.add_peer("b", "preserving")
        topo.start_miniupnpd("a", upnp=protocol == "upnp")
        mesh = _default_policy(Mesh(topo), data_plane)
        mesh.settings["port_mapping"] = True
        mesh.start_agent("a")
        mesh.start_agent("b")
        mapped = f"{topo.peers['a'].wan_ip}:51820"
        mesh.wait_for("a's mapped candidate", lambda: f"{mapped} (mapped)" in mesh.agent_log("a"), 30)
        assert "dnat" in topo.upnp_mappings("a") and "51820" in topo.upnp_mappings("a")
        assert f"port mapping by {protocol}: {mapped}" in mesh.agent_log("a")
        took = mesh.wait_path("direct", 90)
        # A birthday punch (issue 16) may open a path before the router grants the mapping (a's
        # STUN verdict, symmetric, comes first); the mapped candidate is then probed beside it and
        # taken: the mapped port is where b must end up (WireGuard's own port, no punched socket).
        mesh.wait_for("b on a's mapped port", lambda: mesh.proxy_path("b", "a") == ("direct", mapped), 30)
        print(f"symmetric NAT + miniupnpd ({protocol}): direct through {mapped} after {took:.1f} s")
        _stop_and_verify(mesh)
        assert topo.upnp_mappings("a") == "", "the mapping must be gone after the agent stops"
    finally:
        topo.teardown()
