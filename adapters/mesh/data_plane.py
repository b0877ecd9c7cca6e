"""The agent's data plane in proxy mode: commands to paths, probe answers to observations.

This module owns what the agent does with the engine's commands when it owns WireGuard's
public port through a ``PathProxy`` (``data_plane = "proxy"``, the default):

- ``TryDirectEndpoint``: probe the endpoint from the public port (authenticated ping/pong,
  every endpoint of a round at once), and ask the peer through its relay session to probe
  back now (CALL), so both NATs open together. WireGuard is not touched.
- A probe answered becomes ``HandshakeObserved(endpoint=...)``: a confirmed round trip on
  that endpoint, from WireGuard's port, between the two agents. The engine decides with it
  exactly as with a WireGuard handshake (``DirectPathSelected`` or ``PathUpgraded``).
- ``SwitchPath``: the proxy sends the peer's packets over the chosen path; WireGuard's
  endpoint stays the peer's loopback link port, so its session survives every switch.
- ``CloseRelaySession`` at an upgrade: the session is kept warm (allocated, bound,
  refreshed) for ``Policy.relay_keep_warm_ms``; a ``ConnectViaRelay`` to the same relay
  meanwhile reuses it at once (``rewarm``), so falling back costs no allocation.
- An active direct path that stops answering becomes ``PathSilent`` (the proxy's
  heartbeat), which the engine turns into a lost path and a relay.
- Candidates: host addresses, the port mapping, the reflexive address, configured ones,
  published with their kinds (``candidates``).

The agent module keeps the loop, the log and the observation side; this one only the
paths, so the two can change apart.
"""

from __future__ import annotations

import logging
from typing import Any

from natrelay.adapters.mesh import candidates as cand
from natrelay.adapters.mesh.agent_config import ConfigError
from natrelay.adapters.mesh.path_proxy import Addr, PathProxy, fmt, parse_addr
from natrelay.adapters.mesh.turn_relay import TurnSession
from natrelay.adapters.mesh.wireguard import InterfaceStatus, WireGuardError
from natrelay.core import lifecycle as lc
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ForgetPeer,
    StartHardNatAttempt,
    StopHardNatAttempt,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.events import HandshakeObserved, HardNatPairMet, PathSilent, RelaySessionEstablished

#: The agent (``adapters.mesh.agent.Agent``); not imported, so the two modules form no cycle.
Agent = Any

log = logging.getLogger(__name__)

#: A CALL makes the peer probe our candidates for this long (s).
CALL_PROBE_S = 1.5


def open_data_plane(agent: Agent, status: InterfaceStatus) -> None:
    """Proxy mode: move WireGuard off the public port, bind it here, start the proxy.

    Shared mode (``shared_plane``): WireGuard keeps (or gets) the public port; probes share it.
    """
    cfg = agent.config
    if cfg.data_plane == "shared":
        _open_shared(agent, status)
        return
    if cfg.data_plane != "proxy":
        return
    assert agent.wireguard is not None
    secret = cfg.probe_secret()
    public = cfg.listen_port
    if status.listen_port == public or status.listen_port == 0:
        agent.wireguard.set_listen_port(0)
        status = agent.wireguard.show()
    proxy = PathProxy(
        me=agent.me,
        secret=secret,
        public_port=public,
        wg_port=status.listen_port,
        **_plane_callbacks(agent),
    )
    try:
        proxy.start()
    except OSError as exc:
        proxy.close()
        raise ConfigError(f"listen_port: cannot bind udp port {public}: {exc.strerror}") from None
    agent.proxy = proxy
    agent.listen_port = public
    log.info("data plane: proxy on udp port %d, WireGuard on 127.0.0.1:%d", public, status.listen_port)
    if cfg.port_mapping:
        _map_port(agent, public)


def _plane_callbacks(agent: Agent) -> dict[str, Any]:
    """What a data plane reports to the agent: probe answers, dead paths, CALLs."""
    return {
        "on_answer": lambda peer, addr, rtt, seen: _answered(agent, peer, addr, rtt, seen),
        "on_dead": lambda peer, silent: _dead(agent, peer, silent),
        "on_call": lambda peer: _called(agent, peer),
    }


def _map_port(agent: Agent, public: int) -> None:
    """Ask the router for a mapping of the public port; a new mapping is republished."""
    from natrelay.adapters.mesh.port_mapping import PortMapper

    agent._port_mapper = PortMapper(internal_port=public, on_change=lambda: _mapping_changed(agent))
    agent._spawn(agent._port_mapper.run())


def _mapping_changed(agent: Agent) -> None:
    """A port mapping came or went: judge this node's NAT again (a mapping makes WireGuard's
    port a full cone), then republish the candidates with it."""
    agent._judge_nat(agent._pending.append)
    publish_candidates(agent)


def _open_shared(agent: Agent, status: InterfaceStatus) -> None:
    from natrelay.adapters.mesh.hard_nat_plane import HardNatRunner
    from natrelay.adapters.mesh.shared_plane import SharedPlane
    from natrelay.adapters.mesh.wg_counters import Uapi

    cfg = agent.config
    assert agent.wireguard is not None
    secret = cfg.probe_secret()
    public = cfg.listen_port
    if status.listen_port != public:
        try:
            agent.wireguard.set_listen_port(public)
        except WireGuardError as exc:
            raise ConfigError(f"listen_port: WireGuard cannot listen on udp port {public}: {exc}") from None
    plane = SharedPlane(
        me=agent.me,
        secret=secret,
        public_port=public,
        wireguard=agent.wireguard,
        uapi=Uapi(agent.interface),
        keepalive=cfg.persistent_keepalive,
        **_plane_callbacks(agent),
    )
    try:
        plane.start()
    except OSError as exc:
        plane.close()
        raise ConfigError(f"data_plane = shared: no raw socket ({exc.strerror}); run as root") from None
    plane.hard_nat = HardNatRunner(plane, lambda *met: _pair_met(agent, *met))
    agent.proxy = plane
    agent.listen_port = public
    log.info("data plane: shared, WireGuard on udp port %d, probes through raw sockets", public)
    if cfg.port_mapping:
        _map_port(agent, public)


def share_reading(agent: Agent, status: InterfaceStatus) -> None:
    """Hand the agent's full reading of WireGuard to the shared plane's liveness check.

    The proxy sees every packet and needs none; the shared plane would otherwise read
    WireGuard on its own beside the agent (twice the idle cost, issue 18).
    """
    from natrelay.adapters.mesh.shared_plane import SharedPlane

    if isinstance(agent.proxy, SharedPlane):
        agent.proxy.take_reading(status.peers)


def relay_datapath(agent: Agent, peer: str) -> dict[str, Any]:
    """How a TURN session for ``peer`` meets WireGuard (keyword arguments of ``TurnSession``)."""
    plane = agent.proxy
    if isinstance(plane, PathProxy):
        return {"wireguard_addr": None, "sink": plane.sink_for(peer)}
    wireguard = ("127.0.0.1", agent.listen_port)
    if plane is None:
        return {"wireguard_addr": wireguard}
    return {"wireguard_addr": wireguard, "tap": plane.tap_for(peer)}


def close_data_plane(agent: Agent) -> None:
    """Give WireGuard its public port back (a later start moves it again)."""
    if agent._port_mapper is not None:
        agent._port_mapper.stop()
    proxy, agent.proxy = agent.proxy, None
    if proxy is None:
        return
    proxy.close()
    if not isinstance(proxy, PathProxy):
        # shared: WireGuard never left its port. What its liveness check cost, for tuning:
        log.info("shared data plane: %d readings of its own", proxy.own_readings)
        return
    if agent.wireguard is not None:
        try:
            agent.wireguard.set_listen_port(proxy.public_port)
        except WireGuardError as exc:
            log.error("giving WireGuard its port %d back failed: %s", proxy.public_port, exc)


async def close_port_mapping(agent: Agent) -> None:
    if agent._port_mapper is not None:
        await agent._port_mapper.delete()


# ---- commands ----------------------------------------------------------------------------


def execute(agent: Agent, command: Command) -> bool:
    """Carry out ``command`` on the proxy; False when the agent's own handling applies."""
    proxy = agent.proxy
    assert proxy is not None
    if isinstance(command, TryDirectEndpoint):
        duration = max(0.2, (command.deadline - agent.now()) / 1000)
        proxy.probe(command.peer, parse_addr(command.endpoint), duration)
        proxy.call(command.peer)
        return True
    if isinstance(command, SwitchPath):
        peer = command.peer
        agent._attempts.pop(peer, None)
        if command.endpoint is not None:
            agent._path[peer] = ("direct", command.endpoint)
            proxy.use_direct(peer, parse_addr(command.endpoint))
        elif command.relay is not None:
            session = agent._sessions.get((peer, command.relay))
            if session is None:
                log.error("switch to relay %s for %s: no open session", command.relay, peer[:8])
                return True
            agent._path[peer] = ("relay", command.relay)
            proxy.use_relay(peer, session)
        return True
    if isinstance(command, CloseRelaySession):
        return _keep_warm(agent, command)
    if isinstance(command, (StartHardNatAttempt, StopHardNatAttempt)):
        return _hard_nat(agent, command)
    if isinstance(command, ForgetPeer):
        for (peer, relay), (session, _until) in list(agent._warm.items()):
            if peer == command.peer:
                del agent._warm[(peer, relay)]
                agent._spawn(agent._close_session(peer, relay, session))
        proxy.remove_peer(command.peer)
        return False
    return False


def watch_rendezvous_now(agent: Agent) -> None:
    """A relay path was just taken: read the rendezvous at once and keep reading it fast.

    The peer may have opened a new session (its relayed address changed) while ours is one
    kept warm, bound to its old address: on SQLite the backed-off poll (up to 2 s) left the
    relay carrying nothing that long (an e2e fallback gap of 4.4 s instead of 2.5 s).
    """
    watch = agent.watch
    watch.rendezvous_gap_ms = max(1, int(agent.poll_interval * 1000))
    watch.rendezvous_at = min(watch.rendezvous_at, agent.now())
    if watch.wake is not None:
        watch.wake.set()


def _hard_nat(agent: Agent, command: StartHardNatAttempt | StopHardNatAttempt) -> bool:
    """Carry a hard-NAT attempt out on the shared plane (``hard_nat_plane``); the proxy cannot."""
    runner = getattr(agent.proxy, "hard_nat", None)
    if runner is None:
        if isinstance(command, StartHardNatAttempt):
            log.warning(
                "hard-NAT attempt %d with %s: only data_plane = shared carries it out",
                command.attempt,
                command.peer[:8],
            )
        return True
    if isinstance(command, StopHardNatAttempt):
        runner.stop(command.peer, command.attempt)
    else:
        runner.start(command, max(0.5, (command.deadline - agent.now()) / 1000))
    return True


def _pair_met(agent: Agent, peer: str, attempt: int, endpoint: Addr, local_port: int, probes: int) -> None:
    agent._pending.append(
        HardNatPairMet(
            at=agent.now(),
            peer=peer,
            attempt=attempt,
            endpoint=fmt(endpoint),
            local_port=local_port,
            probes_sent=probes,
        )
    )


def _keep_warm(agent: Agent, command: CloseRelaySession) -> bool:
    """At an upgrade, keep the session instead of closing it (True: handled)."""
    keep_ms = agent.engine.policy.relay_keep_warm_ms
    key = (command.peer, command.relay)
    session = agent._sessions.get(key)
    path = agent.proxy.path(command.peer) if agent.proxy else None
    if (
        keep_ms <= 0
        or session is None
        or session.closed
        or session.remote is None
        or (command.session is not None and session.session_id != command.session)
        or path is None
        or path[0] != "direct"
    ):
        return False
    del agent._sessions[key]
    until = agent.now() + keep_ms
    agent._warm[key] = (session, until)
    log.info("relay session %s of %s kept warm for %d ms", session.session_id, command.peer[:8], keep_ms)
    agent._spawn(_expire_warm(agent, key, session, keep_ms / 1000))
    return True


async def _expire_warm(agent: Agent, key: tuple[str, str], session: TurnSession, after: float) -> None:
    import asyncio

    await asyncio.sleep(after)
    if agent._warm.get(key, (None, 0))[0] is session:
        del agent._warm[key]
        log.info("warm relay session %s of %s closed", session.session_id, key[0][:8])
        await agent._close_session(key[0], key[1], session)


def rewarm(agent: Agent, peer: str, relay: str) -> bool:
    """A ``ConnectViaRelay`` finds a warm session: use it at once (True)."""
    warm = agent._warm.pop((peer, relay), None)
    if warm is None:
        return False
    session = warm[0]
    if session.closed:
        return False
    agent._sessions[(peer, relay)] = session
    log.info("relay session %s of %s reused warm", session.session_id, peer[:8])
    remote = agent._remote.get(peer)
    if remote is not None and remote[1] != session.remote:
        # The peer opened a new session while ours was warm (warm sessions are not rebound
        # when the rendezvous changes): without this our relay keeps sending to its old one.
        log.info("warm session %s of %s rebound to %s", session.session_id, peer[:8], remote[1])
        agent._spawn(agent._rebind(session, remote[1]))
    agent._pending.append(
        RelaySessionEstablished(at=agent.now(), peer=peer, relay=relay, session=session.session_id)
    )
    return True


# ---- observations ------------------------------------------------------------------------


def handshake_path(agent: Agent, peer: str) -> tuple[str | None, str | None]:
    """(endpoint, relay) of the path the proxy sends the peer's packets on now."""
    path = agent.proxy.path(peer) if agent.proxy else None
    if path is None:
        return None, None
    return (path[1], None) if path[0] == "direct" else (None, path[1])


def _answered(agent: Agent, peer: str, addr: Addr, rtt: float, seen: Addr | None) -> None:
    proxy = agent.proxy
    if proxy is None or proxy.path(peer) == ("direct", fmt(addr)):
        return  # a heartbeat on the path in use
    record = agent.engine.peers.get(peer)
    if record is None or record.state == lc.REMOVED:
        return
    log.info(
        "probe to %s answered by %s in %.1f ms (it sees us at %s)",
        fmt(addr),
        peer[:8],
        rtt * 1000,
        fmt(seen) if seen else "?",
    )
    agent._pending.append(HandshakeObserved(at=agent.now(), peer=peer, endpoint=fmt(addr)))


def _dead(agent: Agent, peer: str, silent: float) -> None:
    record = agent.engine.peers.get(peer)
    if record is None or record.state != lc.DIRECT_CONNECTED:
        return
    agent._pending.append(PathSilent(at=agent.now(), peer=peer, silent_ms=max(1, int(silent * 1000))))


def _called(agent: Agent, peer: str) -> None:
    record = agent.engine.peers.get(peer)
    if agent.proxy is None or record is None or record.state == lc.REMOVED:
        return
    for endpoint in record.candidates:
        agent.proxy.probe(peer, parse_addr(endpoint), CALL_PROBE_S)


# ---- candidates --------------------------------------------------------------------------


def publish_candidates(agent: Agent) -> tuple[str, ...]:
    """Publish host, mapped, reflexive and configured candidates with their kinds; return them."""
    cfg, port = agent.config, agent.listen_port
    kinds: dict[str, Any] = {}
    if cfg.advertise_host:
        for ip in cand.host_addresses(exclude_interfaces=(agent.interface, "lo")):
            kinds.setdefault(f"{ip}:{port}", "host")
    mapper = agent._port_mapper
    if mapper is not None and mapper.external is not None:
        kinds.setdefault(mapper.external, "mapped")
    if cfg.advertise_reflexive:
        for spec in cfg.relays:
            ip = cand.stun_public_ip(spec.server.host, spec.server.port)
            if ip is not None:
                kinds.setdefault(f"{ip}:{port}", "reflexive")
                break
    for endpoint in cfg.extra_candidates:
        kinds.setdefault(endpoint, "configured")
    ordered = cand.ordered(kinds)
    if ordered:
        log.info("candidates: %s", ", ".join(f"{e} ({kinds[e]})" for e in ordered))
        agent.rendezvous.publish_candidates(agent.now(), agent.me, ordered, kinds, nat_type=agent._nat_type)
    return ordered
