"""The TURN relay datapath: a local UDP proxy that carries WireGuard through a coturn allocation.

This module owns one relay session's plumbing:

    wireguard ──udp──► 127.0.0.1:<proxy port> ──► TURN allocation ──► peer's relayed address
    wireguard ◄──────── 127.0.0.1:<proxy port> ◄── TURN channel data ◄──┘

WireGuard's peer endpoint is pointed at the proxy port; the proxy forwards every datagram
through a TURN allocation made with aioice's TURN client (``create_turn_endpoint``) to the
remote peer's relayed address (learned through the rendezvous), and hands what comes back
to WireGuard. Both peers allocate, so each side only ever talks to a TURN server: that works
behind any NAT, symmetric ones included.

Rules of this module:

- The permission and channel to the remote are created (``bind_remote``) before WireGuard
  is pointed at the proxy, so the first handshake already goes through.
- Channel bindings (which also refresh the permission) are renewed every
  ``refresh_interval`` seconds, well inside coturn's 300 s permission lifetime, whether
  or not data flows: aioice's own refresh happens only on send and after 500 s.
- ``probe()`` measures the relay's round trip with an authenticated Refresh request; the
  session's monitor declares it dead after ``max_probe_failures`` probes in a row fail and
  calls ``on_dead`` once, so the node can report the session closed and fail over.
- TURN credentials never appear in a repr, a log line, an exception or any output:
  ``TurnCredentials`` hides them, errors name the relay, not the user, and aioice's debug
  log (which prints USERNAME attributes) is filtered while sessions exist.
- No decisions here: which relay, when to fail over, when to leave are the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs

log = logging.getLogger(__name__)

#: Renew channel bindings (and so permissions) this often; coturn forgets after 300 s.
DEFAULT_REFRESH_INTERVAL = 120.0
#: Ask aioice to rebind on send only after this long; our own timer does it earlier.
AIOICE_CHANNEL_REFRESH = 240


class TurnError(RuntimeError):
    """A relay session could not be opened, bound or kept; the message names the relay."""


@attrs.frozen
class TurnServer:
    """Where a relay is: its id in the mesh, region, host and port (UDP)."""

    relay_id: str
    host: str
    port: int = 3478
    region: str = "default"

    @classmethod
    def from_url(cls, relay_id: str, url: str, region: str = "default") -> TurnServer:
        """Parse ``turn:host[:port][?transport=udp]`` (only UDP is supported)."""
        if not url.startswith("turn:"):
            raise TurnError(f"relay {relay_id}: only turn: URLs are supported, got {url!r}")
        rest = url[len("turn:") :]
        hostport, _, query = rest.partition("?")
        transport = urllib.parse.parse_qs(query).get("transport", ["udp"])[0]
        if transport != "udp":
            raise TurnError(f"relay {relay_id}: transport {transport!r} is not supported")
        host, sep, port = hostport.rpartition(":")
        if not sep:
            host, port = hostport, "3478"
        if not host or not port.isdigit():
            raise TurnError(f"relay {relay_id}: bad TURN URL {url!r}")
        return cls(relay_id=relay_id, host=host.strip("[]"), port=int(port), region=region)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen(repr=False)
class TurnCredentials:
    """A TURN username and password; never printed."""

    username: str
    password: str

    def __repr__(self) -> str:
        return "TurnCredentials(<hidden>)"

    __str__ = __repr__

    @classmethod
    def from_env_or_file(
        cls,
        *,
        username_env: str | None = None,
        password_env: str | None = None,
        file: str | os.PathLike[str] | None = None,
    ) -> TurnCredentials:
        """Read credentials from environment variables, or a file holding ``user:password``."""
        if file is not None:
            text = Path(file).read_text().strip()
            username, sep, password = text.partition(":")
            if not sep or not username:
                raise TurnError(f"credential file {file} must hold one line user:password")
            return cls(username, password)
        username = os.environ.get(username_env or "") if username_env else None
        password = os.environ.get(password_env or "") if password_env else None
        if not username or password is None:
            raise TurnError(f"TURN credentials not found: set {username_env} and {password_env}")
        return cls(username, password)


class _RedactSecrets(logging.Filter):
    """Drops log records of aioice that would print a credential."""

    secrets: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:
            return False
        return not any(secret in text for secret in self.secrets)


_FILTER = _RedactSecrets()
logging.getLogger("aioice.turn").addFilter(_FILTER)
logging.getLogger("aioice.stun").addFilter(_FILTER)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _fmt(addr: tuple[str, int] | None) -> str | None:
    return None if addr is None else f"{addr[0]}:{addr[1]}"


class _FromRelay(asyncio.DatagramProtocol):
    """Receives what the TURN allocation delivers and hands it to WireGuard."""

    def __init__(self, session: TurnSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.session._from_relay(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.session._send_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session._relay_lost(exc)


class _FromWireGuard(asyncio.DatagramProtocol):
    """Receives WireGuard's datagrams on the local proxy port."""

    def __init__(self, session: TurnSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.session._from_wireguard(data, addr)


@attrs.define(eq=False, repr=False)
class TurnSession:
    """One allocation on one relay, carrying one peer's WireGuard traffic."""

    server: TurnServer
    credentials: TurnCredentials
    peer: str
    #: Where WireGuard listens, to deliver to before it has sent anything to the proxy.
    wireguard_addr: tuple[str, int] | None = None
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    max_probe_failures: int = 3
    lifetime: int = 600
    on_dead: Callable[[TurnSession, str], None] | None = None
    #: With a sink (the path proxy), what the relay delivers goes to it and no local
    #: proxy port is opened; the proxy sends with ``send``.
    sink: Callable[[bytes], None] | None = None
    #: Sees what the relay delivers before WireGuard does; True: consumed (the shared
    #: data plane's probes), False: forwarded as usual.
    tap: Callable[[bytes], bool] | None = None
    session_id: str = attrs.field(factory=lambda: secrets.token_hex(6))

    relayed_address: str | None = None
    mapped_address: str | None = None
    remote: str | None = None
    last_rtt_ms: float | None = None
    forwarded_out: int = 0
    forwarded_in: int = 0
    closed: bool = False
    _turn: Any = None
    _inner: Any = None
    _local: asyncio.DatagramTransport | None = None
    _channel: int | None = None
    _tasks: list[asyncio.Task[None]] = attrs.field(factory=list)
    _dead_reported: bool = False
    _last_refresh: float = 0.0

    def __repr__(self) -> str:
        return (
            f"TurnSession(relay={self.server.relay_id!r}, session={self.session_id!r}, "
            f"relayed={self.relayed_address!r}, remote={self.remote!r}, "
            f"local={self.local_endpoint!r})"
        )

    @property
    def local_endpoint(self) -> str | None:
        """``127.0.0.1:port`` to point WireGuard's peer endpoint at."""
        if self._local is None:
            return None
        return _fmt(self._local.get_extra_info("sockname"))

    # ---- opening -----------------------------------------------------------------------

    async def open(self, timeout: float = 5.0) -> str:
        """Allocate on the relay and open the local proxy port; return the relayed address."""
        from aioice.turn import create_turn_endpoint

        _RedactSecrets.secrets.update({self.credentials.username, self.credentials.password})
        loop = asyncio.get_running_loop()
        try:
            self._turn, _ = await asyncio.wait_for(
                create_turn_endpoint(
                    lambda: _FromRelay(self),
                    (self.server.host, self.server.port),
                    self.credentials.username,
                    self.credentials.password,
                    lifetime=self.lifetime,
                    channel_refresh_time=AIOICE_CHANNEL_REFRESH,
                ),
                timeout,
            )
        except TimeoutError:
            raise TurnError(
                f"relay {self.server.relay_id} ({self.server.address}): no allocation within {timeout} s"
            ) from None
        except Exception as exc:
            raise TurnError(
                f"relay {self.server.relay_id} ({self.server.address}): allocation failed: {_describe(exc)}"
            ) from None
        self._inner = _inner_protocol(self._turn)
        self.relayed_address = _fmt(self._turn.get_extra_info("sockname"))
        self.mapped_address = _fmt(self._turn.get_extra_info("related_address"))
        if self.sink is None:
            self._local, _ = await loop.create_datagram_endpoint(
                lambda: _FromWireGuard(self), local_addr=("127.0.0.1", 0)
            )
        self._last_refresh = time.monotonic()
        self._tasks.append(asyncio.create_task(self._monitor(), name=f"turn-{self.session_id}"))
        return self.relayed_address or ""

    async def bind_remote(self, remote: str, timeout: float = 3.0) -> None:
        """Create the permission and channel to ``remote`` (the peer's relayed address) now."""
        if self._inner is None:
            raise TurnError(f"relay {self.server.relay_id}: session is not open")
        addr = _addr(remote)
        channel = self._inner.peer_to_channel.get(addr)
        if channel is None:
            channel = self._inner.channel_number
            self._inner.channel_number += 1
        try:
            await asyncio.wait_for(self._inner.channel_bind(channel, addr), timeout)
        except Exception as exc:
            raise TurnError(
                f"relay {self.server.relay_id}: channel to {remote} failed: {_describe(exc)}"
            ) from None
        # Tell aioice the channel exists so its send path uses it without binding again.
        self._inner.channel_to_peer[channel] = addr
        self._inner.peer_to_channel[addr] = channel
        self._inner.channel_refresh_at[channel] = time.time() + AIOICE_CHANNEL_REFRESH
        self._channel = channel
        self.remote = remote

    # ---- forwarding --------------------------------------------------------------------

    def _from_wireguard(self, data: bytes, addr: tuple[str, int]) -> None:
        self.wireguard_addr = addr
        if self.remote is None or self._turn is None or self.closed:
            return
        self._turn.sendto(data, _addr(self.remote))
        self.forwarded_out += 1

    def send(self, data: bytes) -> bool:
        """Send one datagram to the peer's relayed address; False when not bound yet."""
        if self.remote is None or self._turn is None or self.closed:
            return False
        self._turn.sendto(data, _addr(self.remote))
        self.forwarded_out += 1
        return True

    def _from_relay(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.sink is not None:
            if not self.closed:
                self.forwarded_in += 1
                self.sink(data)
            return
        if self._local is None or self.wireguard_addr is None or self.closed:
            return
        if self.tap is not None and self.tap(data):
            return
        self._local.sendto(data, self.wireguard_addr)
        self.forwarded_in += 1

    def _send_failed(self, exc: Exception) -> None:
        log.info("relay %s: send failed: %s", self.server.relay_id, _describe(exc))

    def _relay_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._report_dead("TURN allocation lost")

    # ---- health ------------------------------------------------------------------------

    async def probe(self) -> float:
        """One authenticated round trip to the relay (a Refresh); return it in ms."""
        from aioice import stun

        if self._inner is None or self._inner.transport.is_closing():
            raise TurnError(f"relay {self.server.relay_id}: allocation is gone")
        request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
        request.attributes["LIFETIME"] = self.lifetime
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._inner.request_with_retry(request), self.probe_timeout)
        except TimeoutError:
            raise TurnError(
                f"relay {self.server.relay_id}: no answer within {self.probe_timeout} s"
            ) from None
        except Exception as exc:
            raise TurnError(f"relay {self.server.relay_id}: {_describe(exc)}") from None
        self.last_rtt_ms = (time.monotonic() - started) * 1000
        return self.last_rtt_ms

    async def refresh_channel(self) -> None:
        """Renew the channel binding (and the permission it carries) to the remote."""
        if self._channel is None or self.remote is None or self._inner is None:
            return
        await asyncio.wait_for(
            self._inner.channel_bind(self._channel, _addr(self.remote)), self.probe_timeout * 3
        )
        self._inner.channel_refresh_at[self._channel] = time.time() + AIOICE_CHANNEL_REFRESH
        self._last_refresh = time.monotonic()

    async def _monitor(self) -> None:
        failures = 0
        while not self.closed:
            await asyncio.sleep(self.probe_interval)
            if self.closed:
                return
            try:
                if time.monotonic() - self._last_refresh >= self.refresh_interval:
                    await self.refresh_channel()
                await self.probe()
                failures = 0
            except (TurnError, TimeoutError, OSError) as exc:
                failures += 1
                log.info("relay %s probe %d failed: %s", self.server.relay_id, failures, exc)
                if failures >= self.max_probe_failures:
                    self._report_dead(f"{failures} probes failed: {exc}")
                    return
            except Exception as exc:  # aioice errors; the session is unusable either way
                self._report_dead(f"relay error: {_describe(exc)}")
                return

    def _report_dead(self, reason: str) -> None:
        if self._dead_reported:
            return
        self._dead_reported = True
        if self.on_dead is not None:
            self.on_dead(self, reason)

    # ---- closing -----------------------------------------------------------------------

    async def close(self, timeout: float = 1.0) -> None:
        """Delete the allocation (best effort) and close the proxy port; idempotent."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._local is not None:
            self._local.close()
        if self._turn is not None and self._inner is not None:
            if self._inner.transport.is_closing():
                return
            self._turn.close()
            with contextlib.suppress(Exception):
                # Deleting waits for the relay's answer; a dead relay must not hold us up.
                await asyncio.wait_for(self._wait_closed(), timeout)
            if not self._inner.transport.is_closing():
                self._inner.transport.close()

    async def _wait_closed(self) -> None:
        while not self._inner.transport.is_closing():
            await asyncio.sleep(0.01)


def _inner_protocol(turn_transport: Any) -> Any:
    """aioice keeps the TURN client protocol private; the session needs it to bind channels."""
    inner = getattr(turn_transport, "_TurnTransport__inner_protocol", None)
    if inner is None or not hasattr(inner, "channel_bind"):
        raise TurnError(
            "this aioice version hides its TURN client protocol; "
            "natrelay needs aioice>=0.9 with TurnTransport.__inner_protocol"
        )
    return inner


def _describe(exc: BaseException) -> str:
    """An exception in words, without anything a credential could hide in."""
    text = str(exc)
    for secret in _RedactSecrets.secrets:
        if secret:
            text = text.replace(secret, "<hidden>")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
