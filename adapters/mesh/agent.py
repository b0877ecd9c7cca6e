"""The agent: one node's real loop — engine, event log, WireGuard, TURN relays, rendezvous.

This module owns the shell around the sans-I/O engine for a real mesh node:

    wg show / TURN sessions / rendezvous ──► observation ──► engine.handle ──► log.append
                                                                   │
                  wg set / TURN allocate, bind, close ◄── commands ┘

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
- Observations are facts measured here: a handshake is reported when `wg show`'s latest
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
from natrelay.adapters.mesh import intake
from natrelay.adapters.mesh.agent_config import AgentConfig
from natrelay.adapters.mesh.candidates import stun_public_ip
from natrelay.adapters.mesh.path_proxy import PathProxy, parse_addr
from natrelay.adapters.mesh.rendezvous import Rendezvous, latest_relay_address
from natrelay.adapters.mesh.turn_relay import TurnCredentials, TurnError, TurnSession
from natrelay.adapters.mesh.wireguard import PeerConfig, WireGuard, WireGuardError
from natrelay.core import lifecycle as lc
from natrelay.core import values as v
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
    CandidatesUpdated,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    InputRejected,
    PathSilent,
    PeerAdded,
    PeerRemoved,
    PolicySet,
    RelayAnnounced,
    RelayHealthMeasured,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    Tick,
    stream_of,
)
from natrelay.eventlog import ConcurrencyError, EventLog
from natrelay.eventlog.replay import node_view, rebuild

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
class Agent:
    """Runs one node until ``stop`` is set."""

    config: AgentConfig
    interface: str
    log_url: str
    poll_interval: float = 0.1
    #: At start, wait this long for new peers to publish their candidates.
    startup_wait: float = 2.0
    wireguard: WireGuard | None = None

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
    _pending: list[Event] = attrs.field(factory=list)
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
    #: peer -> {endpoint: kind} from the rendezvous at start (for PeerAdded).
    _published_kinds: dict[str, dict[str, str]] = attrs.field(factory=dict)

    # ---- time --------------------------------------------------------------------------

    def now(self) -> int:
        """Wall milliseconds, never going backwards (the engine's clock is event time)."""
        self._now = max(self._now, wall_ms())
        return self._now

    # ---- start and stop ----------------------------------------------------------------

    def start(self) -> None:
        """Open the log, rebuild the engine, configure WireGuard, announce, publish."""
        cfg = self.config
        self.log = EventLog.open(self.log_url)
        self.rendezvous = Rendezvous(self.log_url)
        self._rebuild()
        self.wireguard = self.wireguard or WireGuard(self.interface)
        status = self.wireguard.show()
        self.me, self.listen_port = status.public_key, status.listen_port
        for spec in cfg.relays:
            self._credentials[spec.server.relay_id] = spec.credentials.load()
        dp.open_data_plane(self, status)
        for peer in cfg.peers:
            self.wireguard.add_peer(
                PeerConfig(
                    peer.public_key,
                    peer.allowed_ips,
                    self.proxy.add_peer(peer.public_key) if self.proxy else None,
                    cfg.persistent_keepalive,
                )
            )
        fresh = self._seen_seq == 0
        if fresh or self.engine.policy != cfg.policy:
            if fresh:
                self.engine = Engine(cfg.policy)
            self.feed(PolicySet(at=self.now(), policy=cfg.policy))
        for spec in cfg.relays:
            self._announce_once(spec.server.relay_id, spec.server.region, spec.server.address)
        self._resume()
        self._publish_candidates()
        live = {k for k, r in self.engine.peers.items() if r.state != lc.REMOVED}
        new = [p for p in cfg.peers if p.public_key not in live]
        published = self._await_candidates([p.public_key for p in new])
        for peer in new:
            candidates = tuple(dict.fromkeys(peer.endpoints + published.get(peer.public_key, ())))
            named = {
                **self._published_kinds.get(peer.public_key, {}),
                **dict.fromkeys(peer.endpoints, "configured"),
            }
            self.feed(
                PeerAdded(
                    at=self.now(),
                    peer=peer.public_key,
                    name=peer.name,
                    candidates=candidates,
                    kinds=tuple(named.get(c, "") for c in candidates) if named else (),
                    access=peer.access,  # type: ignore[arg-type]
                    preferred_region=peer.preferred_region,
                )
            )
        configured = {p.public_key for p in cfg.peers}
        for key in sorted(live - configured):
            self.feed(PeerRemoved(at=self.now(), peer=key))

    def _await_candidates(self, peers: list[str]) -> dict[str, tuple[str, ...]]:
        """Candidates new peers published, waiting up to `startup_wait` s for those not yet."""
        found: dict[str, tuple[str, ...]] = {}
        rejected: set[int] = set()
        deadline = time.monotonic() + self.startup_wait
        while True:
            for record in self.rendezvous.poll(self.me, 0):
                if record.kind == "candidates" and record.sender in peers:
                    update = self._published_candidates(record, ())
                    if isinstance(update, InputRejected):
                        if record.seq not in rejected:
                            rejected.add(record.seq)
                            self._pending.append(update)  # recorded at the first step
                    else:
                        found[record.sender] = update.candidates
                        self._published_kinds[record.sender] = dict(
                            zip(update.candidates, update.kinds, strict=False)
                        )
            if len(found) == len(peers) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

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

    def _resume(self) -> None:
        """Put the data plane back where the log says the engine is."""
        for key, record in sorted(self.engine.peers.items()):
            if record.state == lc.RELAY_CONNECTED and record.path and record.session:
                self.feed(
                    RelaySessionClosed(
                        at=self.now(),
                        peer=key,
                        relay=record.path,
                        session=record.session,
                        reason="agent restarted",
                    )
                )
            elif record.relay_pending is not None:
                self.feed(
                    RelaySessionFailed(
                        at=self.now(), peer=key, relay=record.relay_pending, reason="agent restarted"
                    )
                )
            elif record.state == lc.DIRECT_CONNECTED and record.path:
                self._set_endpoint(key, record.path)
                self._path[key] = ("direct", record.path)

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
        await dp.close_port_mapping(self)
        dp.close_data_plane(self)
        self.rendezvous.close()
        self.log.close()

    # ---- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        log.info(
            "agent running: node %s, interface %s, %d peers, %d relays",
            self.config.node,
            self.interface,
            len(self.config.peers),
            len(self.config.relays),
        )
        try:
            while not stop.is_set():
                self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
        finally:
            await self.stop()

    def step(self) -> None:
        """One turn: drain async results, read WireGuard and the rendezvous, tick."""
        pending, self._pending = self._pending, []
        for event in pending:
            self.feed(event)
        self._poll_wireguard()
        self._poll_rendezvous()
        self._start_due_attempts()
        self._catch_up()
        deadline = self.engine.next_deadline()
        now = self.now()
        if deadline is not None and deadline <= now:
            self.feed(Tick(at=now))

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
            self._execute_all(reaction.decisions, reaction.commands)
            return
        log.error("could not append %s after 8 tries; dropped", observation.TYPE)

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

    # ---- observing ---------------------------------------------------------------------

    def _poll_wireguard(self) -> None:
        assert self.wireguard is not None
        try:
            status = self.wireguard.show()
        except WireGuardError as exc:
            log.error("reading WireGuard failed: %s", exc)
            return
        proxies = {s.local_endpoint: relay for (p, relay), s in self._sessions.items() if s.local_endpoint}
        for peer in status.peers:
            key = peer.public_key
            if key not in self.engine.peers:
                continue
            self._watch_silence(key, peer.rx_bytes)
            last = self._last_handshake.get(key)
            self._last_handshake[key] = peer.latest_handshake
            # last None: the first look after start, an old handshake, not a new one.
            if peer.latest_handshake == 0 or last is None or peer.latest_handshake == last:
                continue
            endpoint = peer.endpoint
            if endpoint is None:
                continue
            relay = proxies.get(endpoint)
            if self.proxy is not None:
                endpoint, relay = dp.handshake_path(self, key)
                if endpoint is None and relay is None:
                    continue
            if relay is not None:
                event = HandshakeObserved(at=self.now(), peer=key, relay=relay)
            else:
                try:
                    endpoint = v.parse_endpoint(endpoint)
                except v.InvalidValue:
                    continue
                if endpoint.startswith("127."):
                    continue  # a proxy port of a session already closed
                event = HandshakeObserved(at=self.now(), peer=key, endpoint=endpoint)
            self._first_handshake_ms.setdefault(key, event.at)
            self.feed(event)

    def silence_limit_ms(self) -> int:
        """Nothing received for three keepalive intervals (plus slack): the path is dead."""
        return 3 * self.config.persistent_keepalive * 1000 + 1000

    def _watch_silence(self, peer: str, rx_bytes: int) -> None:
        """Report PathSilent once when a connected peer's receive counter stops moving.

        WireGuard renews a handshake only every two minutes, so the handshake age
        shows a dead path after up to 180 s; with persistent keepalive on, a live
        path receives something every interval, so a still counter says it sooner.
        """
        now = self.now()
        seen = self._rx.get(peer)
        if seen is None or seen[0] != rx_bytes:
            self._rx[peer] = (rx_bytes, now)
            self._silence_reported.discard(peer)
            return
        record = self.engine.peers[peer]
        limit = self.silence_limit_ms()
        if (
            record.state in lc.CONNECTED_STATES
            and peer not in self._silence_reported
            and now - seen[1] >= limit
            and now - record.since >= limit
        ):
            self._silence_reported.add(peer)
            self.feed(PathSilent(at=now, peer=peer, silent_ms=now - seen[1]))

    def _poll_rendezvous(self) -> None:
        try:
            records = self.rendezvous.poll(self.me, self._rv_seq)
        except Exception as exc:  # a busy database must not stop the node
            log.error("reading the rendezvous failed: %s", exc)
            return
        if not records:
            return
        self._rv_seq = records[-1].seq
        self._rv_records.extend(r for r in records if r.recipient == self.me)
        for record in records:
            if record.kind == "candidates" and record.sender in self.engine.peers:
                spec = self.config.peer(record.sender)
                update = self._published_candidates(record, spec.endpoints if spec else ())
                if isinstance(update, InputRejected):
                    self.feed(update)  # recorded, and the node goes on
                    continue
                peer = self.engine.peers[record.sender]
                if update.candidates != peer.candidates and peer.state != lc.REMOVED:
                    self.feed(update)
        for peer in {r.sender for r in records if r.recipient == self.me}:
            latest = latest_relay_address(self._rv_records, peer)
            current = self._remote.get(peer)
            if latest is None:
                self._remote.pop(peer, None)
                continue
            if current is not None and current[0] == latest.seq:
                continue
            self._remote[peer] = (latest.seq, latest.payload["address"])
            for (p, _relay), session in self._sessions.items():
                if p == peer and session.remote is not None:
                    self._spawn(self._rebind(session, latest.payload["address"]))

    def _published_candidates(self, record: Any, known: tuple[str, ...]) -> CandidatesUpdated | InputRejected:
        """The candidates a rendezvous record publishes (after the configured ones), or their refusal."""
        payload = record.payload if isinstance(record.payload, dict) else {}
        published = payload.get("candidates", ())
        if not isinstance(published, list):
            published = [published]
        kinds = payload.get("kinds")
        kinds = {**dict.fromkeys(known, "configured"), **(kinds if isinstance(kinds, dict) else {})}
        return intake.candidates_updated(
            self.now(), "rendezvous", peer=record.sender, candidates=list(known) + published, kinds=kinds
        )

    async def _rebind(self, session: TurnSession, remote: str) -> None:
        try:
            await session.bind_remote(remote)
        except TurnError as exc:
            log.error("rebinding %r to the peer's new relayed address failed: %s", session, exc)

    def _publish_candidates(self) -> None:
        if self.proxy is not None or self.config.advertise_host or self.config.port_mapping:
            dp.publish_candidates(self)
            return
        candidates = list(self.config.extra_candidates)
        if self.config.advertise_reflexive:
            for spec in self.config.relays:
                ip = stun_public_ip(spec.server.host, spec.server.port)
                if ip is not None:
                    candidates.append(f"{ip}:{self.listen_port}")
                    break
        unique = tuple(dict.fromkeys(candidates))
        if unique:
            self.rendezvous.publish_candidates(self.now(), self.me, unique)


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
