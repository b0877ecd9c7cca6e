"""End to end, a change of the node's own addresses (issue 13): noticed from the kernel, hitless.

Real wireguard-go, coturn and NATs in namespaces, the default policy and data plane. Agent
``a``'s host gains an address while its direct path to ``b`` carries pings at 5/s: the
agent must notice it from rtnetlink (no polling), log ``local_addresses_changed`` with
the new candidate, re-probe ``b`` beside the live path, and lose no ping; the log must
verify afterwards.
"""

from __future__ import annotations

import time

import pytest
from mesh import Mesh
from pingloss import PingRecorder

from natrelay.tools.topology_shell import run

pytestmark = pytest.mark.e2e


def _events(mesh: Mesh, node: str) -> list[object]:
    from natrelay.eventlog import EventLog
    from natrelay.eventlog.replay import node_events

    with EventLog.open(str(mesh.log_path), create=False) as log:
        return [e for _s, _st, e in node_events(log, node)]


def test_a_new_local_address_is_observed_at_once_and_reprobes_the_peer_without_loss(mesh_factory) -> None:
    """Kills an agent that never reports its own address changes (the engine then waits for
    the old path to age out, issue 13's 'wake' complaint), and one that drops the live path
    to probe (a lost ping)."""
    mesh = mesh_factory("preserving", "preserving")
    mesh.policy = {}
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("direct", 40)
    ping = PingRecorder(mesh.topo.peers["a"].ns, mesh.topo.peers["b"].tunnel_ip).start()
    time.sleep(2)
    peer = mesh.topo.peers["a"]
    new_ip = peer.lan_ip.rsplit(".", 1)[0] + ".200"
    added_at = time.time()
    run(["ip", "addr", "add", f"{new_ip}/24", "dev", f"{mesh.topo.prefix}l{peer.index}p"], ns=peer.ns)

    def observed() -> list[object]:
        return [e for e in _events(mesh, "a") if getattr(e, "TYPE", "") == "local_addresses_changed"]

    took = mesh.wait_for("a's local_addresses_changed", lambda: bool(observed()), 10)
    change = observed()[0]
    assert any(a.startswith(new_ip + ":") for a in change.addresses), change  # type: ignore[attr-defined]
    lag_ms = change.at - added_at * 1000  # type: ignore[attr-defined]
    after = [e for e in _events(mesh, "a") if getattr(e, "at", 0) >= change.at]  # type: ignore[attr-defined]
    probes = [e for e in after if getattr(e, "TYPE", "") == "direct_attempt_started"]
    assert probes and all(p.purpose == "upgrade_probe" for p in probes), probes  # type: ignore[attr-defined]
    time.sleep(4)
    result = ping.stop()
    print(
        f"new address {new_ip}: in the log {lag_ms:.0f} ms after `ip addr add` (seen {took:.2f} s), "
        f"{len(probes)} probes beside the live path; {result.summary()}"
    )
    assert not result.lost, result.summary()
    assert mesh.path_kind("a", "b") == "direct"
    assert mesh.stop_agent("a") == 0, mesh.agent_log("a")[-2000:]
    assert mesh.stop_agent("b") == 0, mesh.agent_log("b")[-2000:]
    for node in ("a", "b"):
        print(mesh.verify(node))


def test_each_agent_names_its_own_nat_from_two_relays_stun_answers(mesh_factory) -> None:
    """Issue 16: the engine judges a hard pairing by both sides' NAT types; the local one comes
    from the agent. Kills an agent that reports nothing, or a cone behind --random-fully."""
    mesh = mesh_factory("symmetric", "preserving")
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_running("a")
    mesh.wait_running("b")
    seen = {
        node: [e.nat_type for e in _events(mesh, node) if getattr(e, "TYPE", "") == "nat_observed"]  # type: ignore[attr-defined]
        for node in ("a", "b")
    }
    print(f"NAT types observed: {seen}")
    assert seen == {"a": ["symmetric"], "b": ["port_restricted_cone"]}
    assert mesh.stop_agent("a") == 0
    assert mesh.stop_agent("b") == 0
    for node in ("a", "b"):
        print(mesh.verify(node))
