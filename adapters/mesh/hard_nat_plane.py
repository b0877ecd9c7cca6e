"""The agent's side of a hard-NAT attempt: the engine's budget carried out on the shared plane (issue 16).

This module owns turning ``StartHardNatAttempt`` / ``StopHardNatAttempt`` into packets
(``birthday_punch``) and a meeting into ``HardNatPairMet``:

- hard side (we are behind the symmetric NAT): ``HardSide`` opens the engine's ``sockets``
  towards the peer's endpoint. The socket that a probe of the peer reached becomes a
  ``PunchedPath``: WireGuard's endpoint for the peer is then a loopback port whose
  packets leave through that socket, so they use the one NAT mapping the peer can reach.
  The plane sends and answers the path's probes through it too (heartbeats included);
- easy side: up to ``probes`` pings from WireGuard's port, ``rate_per_s`` at most, to
  random ports of the peer's public address, through the shared plane's raw socket (so
  they open WireGuard's own NAT mapping towards each port); the first authenticated pong
  from that address is the meeting;
- both: the two at once.

Either way the relay stays the path: the engine upgrades on the meeting, and the
ordinary ``SwitchPath`` then points WireGuard at the found path (``SharedPlane.use_direct``
knows a punched path). Nothing here decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from natrelay.adapters.mesh.birthday_punch import HardSide, PunchedPath, spray, spray_ports
from natrelay.adapters.mesh.path_proxy import fmt, parse_addr
from natrelay.adapters.mesh.probing import Addr
from natrelay.core.commands import StartHardNatAttempt

if TYPE_CHECKING:
    from natrelay.adapters.mesh.shared_plane import SharedPlane

log = logging.getLogger(__name__)

#: (peer, attempt, the endpoint that met, our local port, probes sent) -> None
MetCallback = Callable[[str, int, Addr, int, int], None]


@attrs.define(eq=False)
class Spray:
    """An easy side's attempt in flight: where its pings go, and whether one was answered."""

    attempt: int
    ip: str
    sent: int = 0
    met: bool = False


@attrs.define(eq=False)
class HardNatRunner:
    """Carries out the engine's hard-NAT attempts on one ``SharedPlane``."""

    plane: SharedPlane
    on_met: MetCallback
    _tasks: dict[tuple[str, int], list[asyncio.Task[Any]]] = attrs.field(factory=dict)
    _sprays: dict[str, Spray] = attrs.field(factory=dict)
    #: The hard side's found paths, by the peer's address as the meeting socket saw it.
    punched: dict[Addr, PunchedPath] = attrs.field(factory=dict)

    def start(self, command: StartHardNatAttempt, duration: float) -> None:
        """Start ``command``'s attempt for at most ``duration`` s (its deadline)."""
        plane, peer = self.plane, command.peer
        if plane.link(peer) is None or plane.closed:
            return
        target = parse_addr(command.endpoint)
        tasks = self._tasks.setdefault((peer, command.attempt), [])
        if command.role in ("hard", "both"):
            tasks.append(plane._spawn(self._hard(command, target, duration)))
        if command.role in ("easy", "both"):
            self._sprays[peer] = Spray(command.attempt, target[0])
            tasks.append(plane._spawn(self._easy(command, target[0], duration)))
        log.info(
            "hard-NAT attempt %d with %s: %s side, toward %s, %d sockets / %d probes at %d/s",
            command.attempt,
            peer[:8],
            command.role,
            command.endpoint,
            command.sockets,
            command.probes,
            command.rate_per_s,
        )

    def stop(self, peer: str, attempt: int) -> None:
        """The attempt is over: its sockets close, its probes stop (a found path stays)."""
        for task in self._tasks.pop((peer, attempt), []):
            task.cancel()
        spray_state = self._sprays.get(peer)
        if spray_state is not None and spray_state.attempt == attempt:
            del self._sprays[peer]

    async def _hard(self, command: StartHardNatAttempt, target: Addr, duration: float) -> None:
        plane, peer = self.plane, command.peer
        side = HardSide(
            plane.me,
            peer,
            plane._keys[peer],
            target,
            sockets=command.sockets,
            # One destination from many sockets: not a scan; open every mapping within a second.
            rate=float(max(command.sockets, command.rate_per_s)),
            duration=duration,
        )
        outcome, sock = await side.run()
        if sock is None or outcome.remote is None:
            log.info(
                "hard-NAT attempt %d with %s: no meeting (%d pings)",
                command.attempt,
                peer[:8],
                outcome.probes_sent,
            )
            return
        remote = outcome.remote
        path = PunchedPath(sock, ("127.0.0.1", plane.public_port))
        path.answer_probe = lambda data: plane.on_probe(data, remote)
        await path.open()
        old = self.punched.pop(remote, None)
        if old is not None:
            old.close()
        self.punched[remote] = path
        local_port = sock.getsockname()[1]
        log.info(
            "hard-NAT attempt %d with %s met at %s from our socket %d after %.2f s",
            command.attempt,
            peer[:8],
            fmt(remote),
            local_port,
            outcome.took_s,
        )
        self.on_met(peer, command.attempt, remote, local_port, outcome.probes_sent)

    async def _easy(self, command: StartHardNatAttempt, ip: str, duration: float) -> None:
        plane, peer = self.plane, command.peer
        state = self._sprays[peer]
        ports = spray_ports(command.probes, random.Random())

        def send(addr: Addr) -> None:
            state.sent += 1
            plane._send_ping(peer, addr)

        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                spray(send, ip, ports, float(command.rate_per_s), lambda: state.met), max(0.1, duration)
            )
        if not state.met:
            took = time.monotonic() - started
            log.info(
                "hard-NAT attempt %d with %s: %d probes in %.1f s, none answered",
                state.attempt,
                peer[:8],
                state.sent,
                took,
            )

    def answered(self, peer: str, addr: Addr) -> bool:
        """A pong from ``addr`` answered our ping: the meeting of an easy side's spray? (consumed)"""
        state = self._sprays.get(peer)
        if state is None or state.met or addr[0] != state.ip:
            return False
        state.met = True
        self.on_met(peer, state.attempt, addr, self.plane.public_port, state.sent)
        return True

    def close(self) -> None:
        for tasks in self._tasks.values():
            for task in tasks:
                task.cancel()
        self._tasks.clear()
        for path in self.punched.values():
            path.close()
        self.punched.clear()
