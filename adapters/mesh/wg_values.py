"""The values and errors of the WireGuard adapter, shared by its three ways to reach WireGuard.

This module owns what ``wireguard`` (the facade and `wg`), ``wg_uapi`` (wireguard-go's
socket) and ``wg_netlink`` (kernel WireGuard) all return or raise, so that none of those
imports another and the agent sees one interface whichever is in use.
"""

from __future__ import annotations

import attrs


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
    #: The latest handshake in unix nanoseconds, when the reader knows it (UAPI, netlink);
    #: `wg show dump` has whole seconds only (then ``latest_handshake * 10**9``).
    latest_handshake_ns: int = 0


@attrs.frozen
class InterfaceStatus:
    """A whole dump, without the private key."""

    public_key: str
    listen_port: int
    fwmark: int | None
    peers: tuple[PeerStatus, ...]

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


@attrs.frozen
class PeerConfig:
    """What this adapter sets on a peer."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    persistent_keepalive: int | None = None
