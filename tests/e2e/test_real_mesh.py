"""End to end: real WireGuard (wireguard-go), real NATs (iptables), real TURN (coturn).

Each scenario runs `natrelay agent` in two peer namespaces sharing one SQLite log, and
asserts a real WireGuard handshake on the expected kind of path, a ping through the
tunnel, and that `replay --verify` re-decides every node's log exactly. Measured times
are printed (run with -s) and recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import time

import pytest
from mesh import Mesh

pytestmark = pytest.mark.e2e


def _finish(mesh: Mesh) -> None:
    """Ping through the tunnel, stop the agents like Ctrl-C, verify both logs."""
    assert mesh.ping("a", "b"), "no ping through the tunnel\n" + mesh.diagnostics()
    assert mesh.ping("b", "a"), "no ping back through the tunnel\n" + mesh.diagnostics()
    assert mesh.stop_agent("a") == 0, mesh.agent_log("a")[-2000:]
    assert mesh.stop_agent("b") == 0, mesh.agent_log("b")[-2000:]
    for node in ("a", "b"):
        print(mesh.verify(node))
    for node in ("a", "b"):
        assert mesh.topo.turn_password not in mesh.agent_log(node)


def _relay_in_use(mesh: Mesh, node: str) -> str:
    from natrelay.eventlog import EventLog
    from natrelay.eventlog.replay import node_events

    with EventLog.open(str(mesh.log_path), create=False) as log:
        chosen = [e.relay for _s, _st, e in node_events(log, node) if e.TYPE == "relay_path_selected"]
    assert chosen, f"{node} never selected a relay path"
    return chosen[-1]


def test_port_preserving_nats_connect_directly_without_a_relay(mesh_factory) -> None:
    mesh = mesh_factory("preserving", "preserving")
    mesh.start_agent("a")
    mesh.start_agent("b")
    took = mesh.wait_path("direct", 20)
    print(f"first direct handshake {took:.2f} s after the agents started")
    for node in ("a", "b"):
        decisions = mesh.decisions(node)
        assert "direct_path_selected" in decisions
        assert "relay_chosen" not in decisions, decisions
    _finish(mesh)


@pytest.mark.parametrize("nat_a", ["preserving", "symmetric"])
def test_symmetric_nat_falls_back_to_coturn(mesh_factory, nat_a: str) -> None:
    mesh = mesh_factory(nat_a, "symmetric")  # type: ignore[arg-type]
    # The subject is the fallback to a relay: a hard-NAT attempt beside the first round (the
    # default) would often take the preserving/symmetric pair direct before any relay.
    mesh.policy["hard_nat_with_first_round"] = False
    mesh.start_agent("a")
    mesh.start_agent("b")
    took = mesh.wait_path("relay", 30)
    print(f"first relayed handshake ({nat_a}/symmetric) {took:.2f} s after the agents started")
    for node in ("a", "b"):
        decisions = mesh.decisions(node)
        assert decisions.count("direct_round_failed") >= 2, decisions
        assert "relay_path_selected" in decisions, decisions
    _finish(mesh)


def test_relay_death_fails_over_to_the_second_relay(mesh_factory) -> None:
    mesh = mesh_factory("symmetric", "symmetric")
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("relay", 30)
    first = _relay_in_use(mesh, "a")
    killed_at = int(time.time())
    mesh.topo.kill_relay(first)
    took = mesh.wait_path("relay", 60, since=killed_at)
    print(f"recovered through the other relay {took:.2f} s after {first} died")
    for node in ("a", "b"):
        assert _relay_in_use(mesh, node) != first
    _finish(mesh)


def test_relayed_peer_upgrades_when_its_nat_starts_preserving_ports(mesh_factory) -> None:
    mesh = mesh_factory("preserving", "symmetric")
    mesh.policy["hard_nat_enabled"] = False  # the upgrade under test is the NAT change's, not a punch's
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("relay", 30)
    # Only the WireGuard flow's mappings go: the TURN allocation keeps its own.
    mesh.topo.set_nat("b", "preserving", flush="wireguard")
    took = mesh.wait_path("direct", 60)
    print(f"upgraded to direct {took:.2f} s after b's NAT started preserving ports")
    assert "path_upgraded" in mesh.decisions("a") + mesh.decisions("b")
    _finish(mesh)


def test_nat_rebinding_mid_session_recovers(mesh_factory) -> None:
    mesh = mesh_factory("preserving", "preserving")
    # WireGuard re-handshakes only every 2 min on a live path: the agents notice the dead
    # path from the receive counters instead (PathSilent), with the default 180 s freshness.
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("direct", 20)
    assert mesh.ping("a", "b")
    rebound_at = time.monotonic()
    mesh.topo.rebind("a")
    since = int(time.time())
    took = mesh.wait_for(
        "a handshake after a's NAT rebound",
        lambda: (
            # Through the proxy WireGuard's session survives: a ping is the proof.
            (mesh.proxy_mode or mesh.latest_handshake("a", "b") > since)
            and (mesh.proxy_mode or mesh.latest_handshake("b", "a") > since)
            and mesh.ping("a", "b", tries=1)
        ),
        60,
    )
    print(
        f"path recovered {time.monotonic() - rebound_at:.2f} s after the rebind "
        f"({took:.2f} s after it settled); paths: a={mesh.path_kind('a', 'b')}"
    )
    assert "path_lost" in mesh.decisions("a") + mesh.decisions("b")
    assert "path_silent" in mesh.observations("a") + mesh.observations("b")
    _finish(mesh)


def test_restart_resumes_from_the_log(mesh_factory) -> None:
    mesh = mesh_factory("preserving", "preserving")
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("direct", 20)
    assert mesh.stop_agent("a") == 0
    before = len(mesh.decisions("a"))
    mesh.start_agent("a")
    mesh.wait_running("a")
    mesh.wait_path("direct", 20)
    assert mesh.ping("a", "b")
    assert len(mesh.decisions("a")) >= before
    _finish(mesh)
