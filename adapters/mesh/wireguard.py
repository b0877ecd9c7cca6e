"""The WireGuard adapter: drive one interface through the `wg` tool.

This module owns everything natrelay says to WireGuard: adding and removing peers,
pointing a peer at an endpoint (and starting its handshake at once), and reading
`wg show <if> dump` into frozen values (latest handshakes, endpoints, counters). It works
the same for kernel WireGuard and for wireguard-go, since both answer `wg`.

Rules of this module:

- Parsing and argument building are pure functions (``parse_dump``, ``set_peer_args``),
  tested without WireGuard; ``WireGuard`` only runs them through a subprocess.
- Every failure is a ``WireGuardError`` subclass with a message naming what failed:
  ``WgNotFound`` (no `wg` binary), ``InterfaceNotFound``, ``WgCommandFailed``. The node
  turns these into events and keeps running; nothing here exits or retries on its own.
- The interface's private key, which the first line of a dump carries, is dropped while
  parsing: it never reaches a value, a log line or an exception.
- Changing only an endpoint makes WireGuard wait up to 5 s (its handshake retry) before it
  tries the new path. ``set_endpoint(..., handshake_now=True)`` re-creates the peer in the
  same `wg set` call instead; the new peer's persistent keepalive goes out immediately and
  starts a handshake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence

import attrs

#: Runs an argv and returns the finished process; replaced in unit tests.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class WireGuardError(RuntimeError):
    """Base of every error this adapter raises."""


class WgNotFound(WireGuardError):
    """The `wg` binary is not installed or not on PATH."""


class InterfaceNotFound(WireGuardError):
    """The interface does not exist or its wireguard-go control socket is gone."""


class WgCommandFailed(WireGuardError):
    """`wg` refused a command (bad key, bad endpoint, permission denied, ...)."""


class DumpParseError(WireGuardError):
    """`wg show <if> dump` printed something this parser does not understand."""


@attrs.frozen
class PeerStatus:
    """One peer line of a dump."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    #: Unix seconds of the latest handshake; 0 when there was none.
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    #: Seconds, or None when off.
    persistent_keepalive: int | None
    has_preshared_key: bool = False


@attrs.frozen
class InterfaceStatus:
    """A whole dump, without the private key."""

    public_key: str
    listen_port: int
    fwmark: int | None
    peers: tuple[PeerStatus, ...]

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


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


@attrs.frozen
class PeerConfig:
    """What this adapter sets on a peer."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    persistent_keepalive: int | None = None


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
class WireGuard:
    """One WireGuard interface, driven through `wg`."""

    interface: str
    wg_binary: str = "wg"
    runner: Runner = _default_runner
    _configs: dict[str, PeerConfig] = attrs.field(factory=dict)

    def _run(self, args: list[str]) -> str:
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

    def show(self) -> InterfaceStatus:
        """The interface's current state."""
        return parse_dump(self._run(["wg", "show", self.interface, "dump"]))

    def add_peer(self, peer: PeerConfig) -> None:
        """Add ``peer``, or update it in place when it exists."""
        self._run(set_peer_args(self.interface, peer))
        self._configs[peer.public_key] = peer

    def set_listen_port(self, port: int) -> None:
        """Listen on ``port`` (0: a free one the kernel picks)."""
        self._run(["wg", "set", self.interface, "listen-port", str(port)])

    def remove_peer(self, public_key: str) -> None:
        self._run(["wg", "set", self.interface, "peer", public_key, "remove"])
        self._configs.pop(public_key, None)

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
        self._run(set_peer_args(self.interface, config, recreate=recreate))
        self._configs[public_key] = config
