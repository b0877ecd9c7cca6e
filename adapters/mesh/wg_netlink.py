"""Reading kernel WireGuard over generic netlink (pyroute2), without forking `wg`.

This module owns turning the kernel's ``WG_CMD_GET_DEVICE`` answer into the same
``InterfaceStatus`` the UAPI and `wg show dump` readers return. The kernel splits a
device with many peers over several messages (each repeats the device attributes and
carries the next peers; a peer whose allowed IPs do not fit continues in the next
message with the same public key): ``status_from_messages`` merges them.

What differs from wireguard-go's UAPI, and why this module exists beside it:

- Kernel WireGuard has no control socket; netlink is its only interface (`wg` uses it).
- The kernel gives the interface's public key; UAPI does not.
- Endpoints arrive as a sockaddr (family, port, address), not as text: IPv6 is printed
  ``[addr]:port`` here, like `wg` and UAPI.
- Writes stay with `wg set` (``WireGuard`` forks it, on changes only): natrelay is not
  tested against kernel WireGuard in this environment, and configuring it is rare.

pyroute2 is an optional dependency (the ``kernel`` extra): it is imported only when a
kernel interface is read, and its absence is a one-line ``WireGuardError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from natrelay.adapters.mesh.wg_values import (
    DumpParseError,
    InterfaceNotFound,
    InterfaceStatus,
    PeerStatus,
    WireGuardError,
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _endpoint(value: Any) -> str | None:
    if not value:
        return None
    addr, port = value.get("addr"), value.get("port")
    if not addr or not port or addr in ("0.0.0.0", "::"):
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _allowed(values: Any) -> list[str]:
    found = []
    for item in values or ():
        addr = item.get("addr") if hasattr(item, "get") else None
        if addr:
            found.append(addr)
    return found


def status_from_messages(messages: Iterable[Any]) -> InterfaceStatus:
    """Merge the netlink messages of one ``WG_CMD_GET_DEVICE`` dump into one status."""
    public_key = ""
    listen_port = 0
    fwmark: int | None = None
    peers: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    seen_any = False
    for message in messages:
        header = message.get("header", {}) if hasattr(message, "get") else {}
        if header.get("error"):
            raise WireGuardError(f"netlink: {header['error']}")
        seen_any = True
        key = message.get_attr("WGDEVICE_A_PUBLIC_KEY")
        if key:
            public_key = _text(key)
        port = message.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = int(port)
        mark = message.get_attr("WGDEVICE_A_FWMARK")
        if mark is not None:
            fwmark = int(mark) or None
        for peer in message.get_attr("WGDEVICE_A_PEERS") or ():
            raw_key = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            if not raw_key:
                raise DumpParseError("netlink: a peer without WGPEER_A_PUBLIC_KEY")
            pk = _text(raw_key)
            entry = peers.get(pk)
            if entry is None:
                entry = peers[pk] = {"allowed": []}
                order.append(pk)
            handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if handshake is not None:
                entry["sec"] = int(handshake.get("tv_sec", 0))
                entry["nsec"] = int(handshake.get("tv_nsec", 0))
            for attr, field in (("WGPEER_A_RX_BYTES", "rx"), ("WGPEER_A_TX_BYTES", "tx")):
                value = peer.get_attr(attr)
                if value is not None:
                    entry[field] = int(value)
            keepalive = peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
            if keepalive is not None:
                entry["keepalive"] = int(keepalive) or None
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            if endpoint is not None:
                entry["endpoint"] = _endpoint(endpoint)
            psk = peer.get_attr("WGPEER_A_PRESHARED_KEY")
            if psk is not None:
                entry["psk"] = _text(psk).strip("A=") != ""
            entry["allowed"] += _allowed(peer.get_attr("WGPEER_A_ALLOWEDIPS"))
    if not seen_any:
        raise DumpParseError("netlink: no answer to WG_CMD_GET_DEVICE")
    return InterfaceStatus(
        public_key=public_key,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(
            PeerStatus(
                public_key=pk,
                endpoint=e.get("endpoint"),
                allowed_ips=tuple(e["allowed"]),
                latest_handshake=e.get("sec", 0),
                rx_bytes=e.get("rx", 0),
                tx_bytes=e.get("tx", 0),
                persistent_keepalive=e.get("keepalive"),
                has_preshared_key=bool(e.get("psk", False)),
                latest_handshake_ns=e.get("sec", 0) * 1_000_000_000 + e.get("nsec", 0),
            )
            for pk, e in sorted(peers.items())
        ),
    )


def kernel_interface(interface: str) -> bool:
    """Whether ``interface`` is a kernel WireGuard link (read from sysfs, no netlink needed)."""
    try:
        with open(f"/sys/class/net/{interface}/uevent") as uevent:
            return "DEVTYPE=wireguard" in uevent.read()
    except OSError:
        return False


@attrs.define
class NetlinkTransport:
    """Reads a kernel WireGuard interface through one generic-netlink socket, kept open."""

    interface: str
    _socket: Any = None

    def _open(self) -> Any:
        if self._socket is None:
            try:
                from pyroute2 import WireGuard as NetlinkWireGuard
            except ImportError:
                raise WireGuardError(
                    "reading kernel WireGuard needs pyroute2: pip install 'natrelay[kernel]'"
                ) from None
            self._socket = NetlinkWireGuard()
        return self._socket

    def show(self) -> InterfaceStatus:
        try:
            messages = self._open().info(self.interface)
        except WireGuardError:
            raise
        except Exception as exc:  # pyroute2 raises NetlinkError, OSError, ...
            if "No such device" in str(exc) or getattr(exc, "code", None) == 19:
                raise InterfaceNotFound(f"WireGuard interface {self.interface!r} not found") from None
            raise WireGuardError(f"netlink read of {self.interface!r} failed: {exc}") from None
        return status_from_messages(messages)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
