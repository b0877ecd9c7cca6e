"""The WireGuard adapter: drive one interface, without forking where WireGuard allows it.

This module owns everything natrelay says to WireGuard: adding and removing peers,
pointing a peer at an endpoint (and starting its handshake at once), and reading the
interface into frozen values (latest handshakes, endpoints, counters). ``WireGuard``
picks the cheapest way in: wireguard-go's UAPI socket (``wg_uapi``: reads and writes, no
process), kernel netlink (``wg_netlink``: reads; writes through `wg set`), or the `wg`
tool (``WgTool``: `wg show <if> dump` and `wg set`, one fork a call), which works for both.

Rules of this module:

- Parsing and argument building are pure functions (``parse_dump``, ``set_peer_args``,
  ``wg_uapi.parse_get``, ``wg_uapi.set_request``, ``wg_netlink.status_from_messages``),
  tested without WireGuard; the transports only move their bytes.
- Every write to a peer bumps its ``generation``: a reading taken before it is stale for
  that peer (the agent re-reads instead of trusting it).
- Every failure is a ``WireGuardError`` subclass with a message naming what failed:
  ``WgNotFound`` (no `wg` binary), ``InterfaceNotFound``, ``WgCommandFailed``. The node
  turns these into events and keeps running; nothing here exits or retries on its own.
- The interface's private key, which the first line of a dump (and of a UAPI answer)
  carries, is dropped while parsing: it never reaches a value, a log line or an exception.
- Changing only an endpoint makes WireGuard wait up to 5 s (its handshake retry) before it
  tries the new path. ``set_endpoint(..., handshake_now=True)`` re-creates the peer in the
  same `wg set` call (or UAPI transaction) instead; the new peer's persistent keepalive
  goes out immediately and starts a handshake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from natrelay.adapters.mesh.wg_netlink import NetlinkTransport, kernel_interface
from natrelay.adapters.mesh.wg_uapi import SOCKET_DIR, UapiTransport
from natrelay.adapters.mesh.wg_values import (
    DumpParseError,
    InterfaceNotFound,
    InterfaceStatus,
    PeerConfig,
    PeerStatus,
    WgCommandFailed,
    WgNotFound,
    WireGuardError,
)

__all__ = [
    "DumpParseError",
    "InterfaceNotFound",
    "InterfaceStatus",
    "PeerConfig",
    "PeerStatus",
    "WgCommandFailed",
    "WgNotFound",
    "WireGuard",
    "WireGuardError",
    "parse_dump",
    "set_peer_args",
]

#: Runs an argv and returns the finished process; replaced in unit tests.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _none(field: str) -> str | None:
    return None if field in ("(none)", "") else field


def _keepalive(field: str) -> int | None:
    return None if field in ("off", "0", "(none)") else int(field)


def parse_dump(text: str) -> InterfaceStatus:
    """Parse `wg show <if> dump` (one interface; tab separated)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DumpParseError("empty dump")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise DumpParseError(f"interface line has {len(head)} fields, expected 4")
    # head[0] is the private key: deliberately never kept.
    try:
        listen_port = int(head[2])
        fwmark = None if head[3] in ("off", "0") else int(head[3], 0)
    except ValueError as exc:
        raise DumpParseError(f"interface line: {exc}") from None
    peers = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise DumpParseError(f"peer line {number} has {len(fields)} fields, expected 8")
        key, psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
        try:
            peers.append(
                PeerStatus(
                    public_key=key,
                    endpoint=_none(endpoint),
                    allowed_ips=tuple(a for a in (_none(allowed) or "").split(",") if a),
                    latest_handshake=int(handshake),
                    rx_bytes=int(rx),
                    tx_bytes=int(tx),
                    persistent_keepalive=_keepalive(keepalive),
                    has_preshared_key=_none(psk) is not None,
                    latest_handshake_ns=int(handshake) * 1_000_000_000,
                )
            )
        except ValueError as exc:
            raise DumpParseError(f"peer line {number}: {exc}") from None
    return InterfaceStatus(
        public_key=head[1],
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(sorted(peers, key=lambda p: p.public_key)),
    )


def set_peer_args(interface: str, peer: PeerConfig, *, recreate: bool = False) -> list[str]:
    """The argv of `wg set` that makes ``peer`` look exactly like ``peer``.

    With ``recreate`` the peer is removed and added back in the same call: WireGuard
    forgets its session and the fresh keepalive starts a handshake at once.
    """
    args = ["wg", "set", interface]
    if recreate:
        args += ["peer", peer.public_key, "remove"]
    args += ["peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
    if peer.endpoint is not None:
        args += ["endpoint", peer.endpoint]
    if peer.persistent_keepalive is not None:
        args += ["persistent-keepalive", str(peer.persistent_keepalive)]
    return args


def classify_failure(interface: str, argv: Sequence[str], returncode: int, stderr: str) -> WireGuardError:
    """Turn a failed `wg` run into the right error, with a message a person can act on."""
    message = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
    if "Unable to access interface" in message or "No such device" in message:
        return InterfaceNotFound(f"WireGuard interface {interface!r} not found ({message})")
    verb = argv[1] if len(argv) > 1 else ""
    return WgCommandFailed(f"`wg {verb}` on {interface!r} failed: {message}")


def _default_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)


@attrs.define
class WgTool:
    """The `wg` binary: the way to reach WireGuard that works everywhere, one fork a call."""

    interface: str
    wg_binary: str = "wg"
    runner: Runner = _default_runner

    def run(self, args: list[str]) -> str:
        argv = [self.wg_binary, *args[1:]]
        if self.runner is _default_runner and shutil.which(self.wg_binary) is None:
            raise WgNotFound(f"`{self.wg_binary}` not found on PATH: install wireguard-tools")
        try:
            proc = self.runner(argv)
        except FileNotFoundError:
            raise WgNotFound(f"`{self.wg_binary}` not found on PATH: install wireguard-tools") from None
        except subprocess.TimeoutExpired:
            raise WgCommandFailed(f"`wg` on {self.interface!r} timed out") from None
        if proc.returncode != 0:
            raise classify_failure(self.interface, argv, proc.returncode, proc.stderr or "")
        return proc.stdout

    def show(self, only: Collection[str] | None = None) -> InterfaceStatus:
        return _only(parse_dump(self.run(["wg", "show", self.interface, "dump"])), only)

    def apply(self, peers: Sequence[tuple[PeerConfig, bool]] = (), removals: Sequence[str] = ()) -> None:
        for key in removals:
            self.run(["wg", "set", self.interface, "peer", key, "remove"])
        for config, recreate in peers:
            self.run(set_peer_args(self.interface, config, recreate=recreate))

    def set_listen_port(self, port: int) -> None:
        self.run(["wg", "set", self.interface, "listen-port", str(int(port))])


def _only(status: InterfaceStatus, only: Collection[str] | None) -> InterfaceStatus:
    if only is None:
        return status
    return attrs.evolve(status, peers=tuple(p for p in status.peers if p.public_key in only))


class Transport(Protocol):
    """One way to read and configure a WireGuard interface."""

    def show(self, only: Collection[str] | None = None) -> InterfaceStatus: ...

    def apply(self, peers: Sequence[tuple[PeerConfig, bool]] = (), removals: Sequence[str] = ()) -> None: ...

    def set_listen_port(self, port: int) -> None: ...


@attrs.define
class _KernelTransport:
    """Kernel WireGuard: read over netlink (no fork), configured with `wg set` (on changes)."""

    reader: NetlinkTransport
    writer: WgTool

    def show(self, only: Collection[str] | None = None) -> InterfaceStatus:
        return _only(self.reader.show(), only)

    def apply(self, peers: Sequence[tuple[PeerConfig, bool]] = (), removals: Sequence[str] = ()) -> None:
        self.writer.apply(peers, removals)

    def set_listen_port(self, port: int) -> None:
        self.writer.set_listen_port(port)


@attrs.define
class WireGuard:
    """One WireGuard interface, reached the cheapest way it offers.

    ``backend``: ``auto`` picks wireguard-go's UAPI socket when it exists, kernel netlink
    when the link is kernel WireGuard, and the `wg` tool otherwise; ``uapi``, ``netlink``
    and ``wg`` force one. A custom ``runner`` means `wg` (the unit tests' fake).

    Every write to a peer bumps its ``generation``: a reading taken before a write is
    stale for that peer, whatever it says (see ``adapters.mesh.observe``).
    """

    interface: str
    wg_binary: str = "wg"
    runner: Runner = _default_runner
    backend: str = "auto"
    socket_dir: Path = SOCKET_DIR
    _configs: dict[str, PeerConfig] = attrs.field(factory=dict)
    _transport: Transport | None = None
    _public_key: str = ""
    _generations: dict[str, int] = attrs.field(factory=dict)

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self._choose()
        return self._transport

    def _tool(self) -> WgTool:
        return WgTool(self.interface, self.wg_binary, self.runner)

    def _choose(self) -> Transport:
        if self.backend not in ("auto", "uapi", "netlink", "wg"):
            raise WireGuardError(f"unknown WireGuard backend {self.backend!r} (auto, uapi, netlink, wg)")
        uapi = UapiTransport(self.interface, self.socket_dir)
        if self.backend == "wg" or (self.backend == "auto" and self.runner is not _default_runner):
            return self._tool()
        if self.backend == "uapi" or (self.backend == "auto" and uapi.path.exists()):
            return uapi
        if self.backend == "netlink" or kernel_interface(self.interface):
            return _KernelTransport(NetlinkTransport(self.interface), self._tool())
        return self._tool()

    @property
    def kind(self) -> str:
        """Which way this interface is reached: ``uapi``, ``netlink`` or ``wg``."""
        transport = self.transport
        return (
            "uapi"
            if isinstance(transport, UapiTransport)
            else ("netlink" if isinstance(transport, _KernelTransport) else "wg")
        )

    def generations(self) -> dict[str, int]:
        """A copy of every peer's write count (see ``generation``)."""
        return dict(self._generations)

    def generation(self, public_key: str) -> int:
        """How many times this adapter has written ``public_key`` (0: never)."""
        return self._generations.get(public_key, 0)

    def _wrote(self, public_key: str) -> None:
        self._generations[public_key] = self._generations.get(public_key, 0) + 1

    def show(self, only: Collection[str] | None = None) -> InterfaceStatus:
        """The interface's current state (of the peers in ``only``, when given)."""
        status = self.transport.show(only)
        if status.public_key:
            self._public_key = status.public_key
        elif not self._public_key:
            # UAPI does not tell the interface's own key: ask `wg` once, at the first reading.
            self._public_key = self._tool().run(["wg", "show", self.interface, "public-key"]).strip()
        return attrs.evolve(status, public_key=self._public_key) if not status.public_key else status

    def add_peer(self, peer: PeerConfig) -> None:
        """Add ``peer``, or update it in place when it exists."""
        self.add_peers([peer])

    def add_peers(self, peers: Sequence[PeerConfig]) -> None:
        """Add or update many peers in one transaction (one `wg` run per peer without UAPI)."""
        if not peers:
            return
        self.transport.apply([(p, False) for p in peers])
        for peer in peers:
            self._configs[peer.public_key] = peer
            self._wrote(peer.public_key)

    def set_listen_port(self, port: int) -> None:
        """Listen on ``port`` (0: a free one the kernel picks)."""
        self.transport.set_listen_port(port)

    def remove_peer(self, public_key: str) -> None:
        self.transport.apply(removals=[public_key])
        self._configs.pop(public_key, None)
        self._wrote(public_key)

    def set_endpoint(self, public_key: str, endpoint: str, *, handshake_now: bool = True) -> None:
        """Point ``public_key`` at ``endpoint`` ("ip:port").

        With ``handshake_now`` the peer is recreated so that its handshake starts at once
        (needs a persistent keepalive in its config, which ``add_peer`` recorded).
        """
        config = self._configs.get(public_key)
        if config is None:
            current = self.show().peer(public_key)
            if current is None:
                raise WgCommandFailed(f"peer {public_key[:8]}… is not configured on {self.interface!r}")
            config = PeerConfig(
                public_key, current.allowed_ips, current.endpoint, current.persistent_keepalive
            )
        config = attrs.evolve(config, endpoint=endpoint)
        recreate = handshake_now and config.persistent_keepalive is not None
        self.transport.apply([(config, recreate)])
        self._configs[public_key] = config
        self._wrote(public_key)
