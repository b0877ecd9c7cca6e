"""The agent: one node's real loop — engine, event log, WireGuard, TURN relays, rendezvous.

This module owns the shell around the sans-I/O engine for a real mesh node:

    WireGuard / TURN sessions / rendezvous ──► observation ──► engine.handle ──► log.append
                                                                     │
                 WireGuard set / TURN allocate, bind, close ◄── commands ┘

Start-up is ``startup.py`` and the loop with its observations ``observe.py`` (mixins of
``Agent``); this module keeps feeding the engine, the log and carrying out commands.

Rules of this module:

- Every observation is appended to the log together with the decisions it caused, in one
  atomic batch, so a node's view of the log (``eventlog.replay.node_view``) always shows
  an observation followed by its own decisions and ``replay --verify`` re-decides it
  exactly. Appends carry the versions of the shared ``relay/`` streams this node has
  read; if another node wrote to one meanwhile, the engine is rebuilt from the log, the
  new events are taken in, and the observation is decided again.
- Relays are announced once per log (only when their stream is still empty): a later
  announcement by another node would make this node decide at a place in the log it did
  not see live.
- Observations are facts measured here: a handshake is reported when WireGuard's latest
  handshake changes; a relay session when its allocation and channel exist; a relay
  health measurement when a TURN round trip was timed. Direct rounds end by deadline in
  the engine (ticks), so no timeout is invented here.
- A WireGuard or TURN failure is logged with its message and the loop goes on; it never
  takes the node down. TURN credentials are read once at start and never logged.
- Restart resumes from the log: the engine is rebuilt, relay sessions that the log says
  were open are reported closed ("agent restarted"), direct paths are re-pointed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import attrs

from natrelay.adapters.mesh import data_plane as dp
from natrelay.adapters.mesh.agent_config import AgentConfig
from natrelay.adapters.mesh.observe import Inbox, Observing, Watch
from natrelay.adapters.mesh.path_proxy import PathProxy, parse_addr
from natrelay.adapters.mesh.rendezvous import Rendezvous
from natrelay.adapters.mesh.startup import Starting
from natrelay.adapters.mesh.turn_relay import TurnCredentials, TurnError, TurnSession
from natrelay.adapters.mesh.wireguard import WireGuard, WireGuardError
from natrelay.core.commands import (
    CloseRelaySession,
    Command,
    ConnectViaRelay,
    ForgetPeer,
    SwitchPath,
    TryDirectEndpoint,
)
from natrelay.core.engine import Engine
from natrelay.core.events import (
    DirectRoundFailed,
    Event,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    stream_of,
)
from natrelay.eventlog import ConcurrencyError, EventLog
from natrelay.eventlog.replay import node_view, rebuild, save_snapshot

log = logging.getLogger(__name__)

#: Emit a relay's measured round trip into the log at most this often (per relay).
HEALTH_EVERY_MS = 30_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.define
class _Attempt:
    command: TryDirectEndpoint
    start_at: int
    started: bool = False


@attrs.define(eq=False)
class Agent(Starting, Observing):
    """Runs one node until ``stop`` is set."""

    config: AgentConfig
    interface: str
    log_url: str
    #: How often WireGuard (and the rendezvous) are read while a handshake is awaited.
    poll_interval: float = 0.05
    #: At start, wait this long for new peers to publish their candidates.
    startup_wait: float = 2.0
    wireguard: WireGuard | None = None
    watch: Watch = attrs.field(factory=Watch)

    engine: Engine = attrs.field(init=False)
    log: EventLog = attrs.field(init=False)
    rendezvous: Rendezvous = attrs.field(init=False)
    me: str = attrs.field(init=False, default="")
    listen_port: int = attrs.field(init=False, default=0)
    _seen_seq: int = 0
    _relay_versions: dict[str, int] = attrs.field(factory=dict)
    _now: int = 0
    _credentials: dict[str, TurnCredentials] = attrs.field(factory=dict)
    _sessions: dict[tuple[str, str], TurnSession] = attrs.field(factory=dict)
    _attempts: dict[str, list[_Attempt]] = attrs.field(factory=dict)
    _path: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    _last_handshake: dict[str, int] = attrs.field(factory=dict)
    _remote: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    _published: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    _rv_seq: int = 0
    _rv_records: list[Any] = attrs.field(factory=list)
    _pending: list[Event] = attrs.field(factory=Inbox)
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    _health_at: dict[str, int] = attrs.field(factory=dict)
    _first_handshake_ms: dict[str, int] = attrs.field(factory=dict)
    #: peer -> (received bytes, when that count was first seen): the liveness signal.
    _rx: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    _silence_reported: set[str] = attrs.field(factory=set)
    #: The data plane: a PathProxy (data_plane = "proxy") or a SharedPlane ("shared").
    proxy: PathProxy | Any = None
    #: Relay sessions the engine closed at an upgrade, kept open until the given time (ms).
    _warm: dict[tuple[str, str], tuple[TurnSession, int]] = attrs.field(factory=dict)
    _port_mapper: Any = None
    #: What this node published last (host, mapped, reflexive, configured endpoints).
    _own_candidates: tuple[str, ...] = ()
    #: Local address changes, from the kernel (``address_watch``).
    _address_watch: Any = None
    #: Observations fed since the last automatic snapshot.
    _since_snapshot: int = 0
    #: This node's NAT as the engine knows it (``NatObserved``), and as STUN named it last.
    _nat_type: str | None = None
    _stun_nat: str = "unknown"
    #: peer -> {endpoint: kind} from the rendezvous at start (for PeerAdded).
    _published_kinds: dict[str, dict[str, str]] = attrs.field(factory=dict)
    #: peer -> its NAT type as it published it (for PeerAdded).
    _published_nat: dict[str, str] = attrs.field(factory=dict)

    # ---- time --------------------------------------------------------------------------

    def now(self) -> int:
        """Wall milliseconds, never going backwards (the engine's clock is event time)."""
        self._now = max(self._now, wall_ms())
        return self._now

    # ---- start and stop ----------------------------------------------------------------

    def _announce_once(self, relay: str, region: str, address: str) -> None:
        stream = f"relay/{relay}"
        if self._relay_versions.get(stream, 0) != 0:
            return
        event = RelayAnnounced(at=self.now(), relay=relay, region=region, address=address)
        self._catch_up()
        reaction = self.engine.handle(event)
        items = [(stream, event)] + [(stream_of(d, self.config.node), d) for d in reaction.decisions]
        try:
            stored = self.log.append(items, expected_versions={stream: 0})
        except ConcurrencyError:
            # Another node announced it first: take its announcement instead of ours.
            self._rebuild()
            return
        self._after_append(stored)
        self._execute_all(reaction.decisions, reaction.commands)

    async def stop(self) -> None:
        """Close relay sessions (withdrawing their rendezvous records) and the log."""
        for task in list(self._tasks):
            task.cancel()
        for (peer, relay), session in list(self._sessions.items()):
            await self._close_session(peer, relay, session)
        self._sessions.clear()
        for (peer, relay), (session, _until) in list(self._warm.items()):
            await self._close_session(peer, relay, session)
        self._warm.clear()
        if self._address_watch is not None:
            self._address_watch.close()
        await dp.close_port_mapping(self)
        dp.close_data_plane(self)
        self.rendezvous.close()
        self.log.close()

    # ---- feeding the engine ------------------------------------------------------------

    def feed(self, observation: Event) -> None:
        """Decide on ``observation``, log it with its decisions, execute the commands."""
        for _ in range(8):
            self._catch_up()
            reaction = self.engine.handle(observation)
            items = [(stream_of(observation, self.config.node), observation)]
            items += [(stream_of(d, self.config.node), d) for d in reaction.decisions]
            try:
                stored = self.log.append(items, expected_versions=dict(self._relay_versions))
            except ConcurrencyError:
                log.info("another node wrote a relay stream; rebuilding before deciding again")
                self._rebuild()
                continue
            self._after_append(stored)
            self._snapshot_when_due()
            self._execute_all(reaction.decisions, reaction.commands)
            return
        log.error("could not append %s after 8 tries; dropped", observation.TYPE)

    def _snapshot_when_due(self) -> None:
        """Every ``snapshot_every`` observations, store the engine's state at the seq it has seen.

        The engine has folded this node's whole view up to ``_seen_seq`` (the append was
        checked against the relay streams' versions), so a rebuild from this snapshot plus
        the tail is the rebuild from the start; views and restarts read only the tail.
        """
        every = self.config.snapshot_every
        self._since_snapshot += 1
        if every is None or self._since_snapshot < every or not self._seen_seq:
            return
        try:
            save_snapshot(self.log, self.config.node, self.engine, self._seen_seq)
        except Exception as exc:  # a snapshot is an optimisation: the log stays whole without it
            log.error("storing a snapshot at seq %d failed: %s", self._seen_seq, exc)
        self._since_snapshot = 0

    def _rebuild(self) -> None:
        """Start over from the log (versions first: a later write makes the next append retry)."""
        self._relay_versions = self.log.stream_versions(
            [f"relay/{r.server.relay_id}" for r in self.config.relays]
        )
        self.engine, self._seen_seq = rebuild(self.log, self.config.node)

    def _after_append(self, stored: Sequence[Any]) -> None:
        for item in stored:
            if item.stream.startswith("relay/"):
                self._relay_versions[item.stream] = item.stream_version
        if stored:
            self._seen_seq = max(self._seen_seq, stored[-1].seq)

    def _catch_up(self) -> None:
        """Take in events of this node's view that other nodes wrote (relay health)."""
        for seq, stream, event in self.log.read_events(self._seen_seq + 1, **node_view(self.config.node)):
            self._seen_seq = seq
            if stream.startswith("relay/"):
                self._relay_versions[stream] = self._relay_versions.get(stream, 0) + 1
            if event.KIND != "observation":
                continue
            reaction = self.engine.handle(event)
            if reaction.decisions:
                # Cannot happen with announce-once relays; log loudly if it does.
                log.warning(
                    "a foreign %s at seq %d led to %d decisions", event.TYPE, seq, len(reaction.decisions)
                )
                stored = self.log.append([(stream_of(d, self.config.node), d) for d in reaction.decisions])
                self._after_append(stored)
            self._execute_all(reaction.decisions, reaction.commands)

    def _execute_all(self, decisions: Sequence[Event], commands: Sequence[Command]) -> None:
        for decision in decisions:
            peer = getattr(decision, "peer", None) or ""
            log.info("%s %s: %s", decision.TYPE, peer[:8], getattr(decision, "reason", ""))
            if isinstance(decision, DirectRoundFailed) and decision.purpose == "upgrade_probe":
                self._restore_relay(decision.peer)
        for command in commands:
            try:
                self.execute(command)
            except (WireGuardError, TurnError) as exc:
                log.error("%s for %s failed: %s", type(command).__name__, command.peer[:8], exc)

    # ---- commands ----------------------------------------------------------------------

    def execute(self, command: Command) -> None:
        if isinstance(command, SwitchPath) and command.relay is not None:
            dp.watch_rendezvous_now(self)
        if self.proxy is not None and dp.execute(self, command):
            return
        if isinstance(command, TryDirectEndpoint):
            queue = self._attempts.setdefault(command.peer, [])
            queue[:] = [a for a in queue if a.command.deadline > self.now()]
            # One WireGuard peer has one endpoint: endpoints of one round share the time.
            now = self.now()
            slot = max(1, (command.deadline - now) // 2)
            start_at = now if not queue else max(q.start_at for q in queue) + slot
            queue.append(_Attempt(command, start_at))
            self._start_due_attempts()
        elif isinstance(command, ConnectViaRelay):
            self._spawn(self._connect_via_relay(command))
        elif isinstance(command, SwitchPath):
            self._switch_path(command)
        elif isinstance(command, CloseRelaySession):
            for (peer, relay), session in list(self._sessions.items()):
                if (
                    peer == command.peer
                    and relay == command.relay
                    and (command.session is None or session.session_id == command.session)
                ):
                    del self._sessions[(peer, relay)]
                    self._spawn(self._close_session(peer, relay, session))
        elif isinstance(command, ForgetPeer):
            self._attempts.pop(command.peer, None)
            self._path.pop(command.peer, None)
            assert self.wireguard is not None
            self.wireguard.remove_peer(command.peer)
            for (peer, relay), session in list(self._sessions.items()):
                if peer == command.peer:
                    del self._sessions[(peer, relay)]
                    self._spawn(self._close_session(peer, relay, session))

    def _start_due_attempts(self) -> None:
        now = self.now()
        for peer, queue in self._attempts.items():
            for attempt in queue:
                if not attempt.started and attempt.start_at <= now < attempt.command.deadline:
                    attempt.started = True
                    try:
                        self._set_endpoint(peer, attempt.command.endpoint)
                    except WireGuardError as exc:
                        log.error("direct attempt to %s failed: %s", attempt.command.endpoint, exc)

    def _set_endpoint(self, peer: str, endpoint: str) -> None:
        if self.proxy is not None:
            # WireGuard keeps its loopback endpoint; the proxy sends to the peer.
            self.proxy.use_direct(peer, parse_addr(endpoint))
            return
        assert self.wireguard is not None
        self.wireguard.set_endpoint(peer, endpoint, handshake_now=True)
        # Re-creating the peer zeroes its latest handshake: any later value is new.
        self._last_handshake[peer] = 0

    def _switch_path(self, command: SwitchPath) -> None:
        peer = command.peer
        self._attempts.pop(peer, None)
        if command.endpoint is not None:
            self._path[peer] = ("direct", command.endpoint)
            assert self.wireguard is not None
            current = self.wireguard.show().peer(peer)
            if current is None or current.endpoint != command.endpoint:
                self._set_endpoint(peer, command.endpoint)
        elif command.relay is not None:
            session = self._sessions.get((peer, command.relay))
            if session is None or session.local_endpoint is None:
                log.error("switch to relay %s for %s: no open session", command.relay, peer[:8])
                return
            self._path[peer] = ("relay", command.relay)
            self._set_endpoint(peer, session.local_endpoint)

    def _restore_relay(self, peer: str) -> None:
        """A failed upgrade probe moved WireGuard off the relay: point it back."""
        if self.proxy is not None:
            return  # probes never moved it
        kind, relay = self._path.get(peer, ("", ""))
        session = self._sessions.get((peer, relay)) if kind == "relay" else None
        if session is not None and session.local_endpoint is not None:
            self._attempts.pop(peer, None)
            try:
                self._set_endpoint(peer, session.local_endpoint)
            except WireGuardError as exc:
                log.error("restoring the relay path of %s failed: %s", peer[:8], exc)

    # ---- relays ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_via_relay(self, command: ConnectViaRelay) -> None:
        peer, relay = command.peer, command.relay
        spec = self.config.relay(relay)
        if spec is None:
            self._pending.append(
                RelaySessionFailed(
                    at=self.now(), peer=peer, relay=relay, reason="relay not in this node's config"
                )
            )
            return
        if dp.rewarm(self, peer, relay):
            return
        old = self._sessions.pop((peer, relay), None)
        if old is not None:
            await self._close_session(peer, relay, old)
        session = TurnSession(
            spec.server,
            self._credentials[relay],
            peer,
            on_dead=self._session_dead,
            **dp.relay_datapath(self, peer),
        )
        self._sessions[(peer, relay)] = session
        try:
            budget = max(0.5, (command.deadline - self.now()) / 1000)
            relayed = await session.open(timeout=budget)
            self.rendezvous.publish_relay_address(
                self.now(), self.me, peer, relay, session.session_id, relayed
            )
            while self.now() < command.deadline:
                remote = self._remote.get(peer)
                if remote is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise TurnError(f"relay {relay}: the peer published no relayed address in time")
            await session.bind_remote(remote[1])
        except TurnError as exc:
            if self._sessions.get((peer, relay)) is session:
                del self._sessions[(peer, relay)]
            await self._close_session(peer, relay, session)
            self._pending.append(
                RelaySessionFailed(at=self.now(), peer=peer, relay=relay, reason=str(exc)[:200])
            )
            return
        if self._sessions.get((peer, relay)) is not session:
            await session.close()  # closed or replaced meanwhile
            return
        self._spawn(self._report_health(session))
        self._pending.append(
            RelaySessionEstablished(at=self.now(), peer=peer, relay=relay, session=session.session_id)
        )

    async def _report_health(self, session: TurnSession) -> None:
        relay = session.server.relay_id
        while not session.closed:
            await asyncio.sleep(1.0)
            rtt = session.last_rtt_ms
            now = self.now()
            if rtt is not None and now - self._health_at.get(relay, 0) >= HEALTH_EVERY_MS:
                self._health_at[relay] = now
                self._pending.append(RelayHealthMeasured(at=now, relay=relay, rtt_ms=round(rtt), load=0))

    def _session_dead(self, session: TurnSession, reason: str) -> None:
        key = (session.peer, session.server.relay_id)
        if self._warm.get(key, (None, 0))[0] is session:
            del self._warm[key]  # the engine closed it already: nothing to report
            self._spawn(self._close_session(session.peer, session.server.relay_id, session))
            return
        if self._sessions.get(key) is not session:
            return
        del self._sessions[key]
        self._pending.append(
            RelaySessionClosed(
                at=self.now(),
                peer=session.peer,
                relay=session.server.relay_id,
                session=session.session_id,
                reason=reason[:200],
            )
        )
        self._spawn(self._close_session(session.peer, session.server.relay_id, session))

    async def _close_session(self, peer: str, relay: str, session: TurnSession) -> None:
        if self.proxy is not None:
            self.proxy.drop_relay(peer, session)
        with contextlib.suppress(Exception):
            self.rendezvous.withdraw_relay_address(self.now(), self.me, peer, relay, session.session_id)
        with contextlib.suppress(Exception):
            await session.close()

    # ---- relays (continued) ----------------------------------------------------------

    async def _rebind(self, session: TurnSession, remote: str) -> None:
        try:
            await session.bind_remote(remote)
        except TurnError as exc:
            log.error("rebinding %r to the peer's new relayed address failed: %s", session, exc)


async def run_agent(
    config: AgentConfig, interface: str, log_url: str, stop: asyncio.Event | None = None
) -> None:
    """Run until ``stop`` is set, or until SIGINT/SIGTERM."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await Agent(config, interface, log_url).run(stop)
