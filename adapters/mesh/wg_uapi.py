"""Talking to wireguard-go over its UAPI socket: read and configure without forking `wg`.

This module owns the cross-platform userspace protocol of WireGuard
(https://www.wireguard.com/xplatform/), spoken on ``/var/run/wireguard/<if>.sock``:
``get=1`` answers ``key=value`` lines ending with ``errno=N``; ``set=1`` takes
``key=value`` lines ending with an empty line and answers ``errno=N``. Keys travel as
hex there and as base64 everywhere else in natrelay; this module converts.

Rules of this module:

- ``parse_get`` and ``set_request`` are pure and tested without WireGuard;
  ``UapiTransport`` only moves their bytes through the socket, one connection per
  operation (wireguard-go serves each connection in its own goroutine).
- The interface's private key (the first line of a ``get``) is skipped while parsing,
  never kept in a value, a log line or an exception. UAPI does not tell the interface's
  public key; ``parse_get`` leaves it empty and ``WireGuard`` fills in the one it learnt
  once at start.
- A missing socket is ``InterfaceNotFound``; a non-zero ``errno`` or a short answer is
  ``WgCommandFailed`` naming the operation and the interface.
"""

from __future__ import annotations

import base64
import binascii
import socket
from collections.abc import Collection, Sequence
from pathlib import Path

import attrs

from natrelay.adapters.mesh.wg_values import (
    DumpParseError,
    InterfaceNotFound,
    InterfaceStatus,
    PeerConfig,
    PeerStatus,
    WgCommandFailed,
)

SOCKET_DIR = Path("/var/run/wireguard")


def hex_key(key: str) -> str:
    """A base64 WireGuard key as UAPI's hex; a bad key is a ``WgCommandFailed`` naming it."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise WgCommandFailed(f"not a WireGuard key (32 bytes of base64): {key[:12]!r}")
    return raw.hex()


_B64_CACHE: dict[str, str] = {}


def b64_key(hex_value: str) -> str:
    """UAPI's hex key as base64 (cached: the same keys come back on every reading)."""
    key = _B64_CACHE.get(hex_value)
    if key is None:
        try:
            key = base64.b64encode(bytes.fromhex(hex_value)).decode()
        except ValueError:
            raise DumpParseError(f"UAPI: not a hex key: {hex_value[:12]!r}") from None
        if len(_B64_CACHE) < 100_000:
            _B64_CACHE[hex_value] = key
    return key


def _endpoint(value: str) -> str | None:
    if not value or value in ("(none)",):
        return None
    # IPv6 arrives as [addr]:port, like `wg` prints it.
    return value


def parse_get(
    text: str, only: Collection[str] | None = None, memo: dict[str, PeerStatus] | None = None
) -> InterfaceStatus:
    """Parse the answer to ``get=1`` (never keeping private or preshared keys' values).

    With ``only`` (base64 keys), the other peers are skipped without being parsed: a
    reading for the few peers whose handshake is awaited costs little among a thousand.
    With ``memo`` (kept by the caller between readings), a peer whose lines are exactly
    those of the previous reading is not parsed again: an idle agent's full reading of a
    thousand quiet peers is then a split and a lookup each (issue 18). The memo is left
    holding this reading's peers only.
    """
    end = text.rfind("errno=")
    if end < 0 or (end > 0 and text[end - 1] != "\n"):
        raise DumpParseError("UAPI: the answer ended without errno=")
    try:
        errno = int(text[end + 6 :].strip())
    except ValueError:
        raise DumpParseError(f"UAPI: bad errno line {text[end:][:40]!r}") from None
    if errno != 0:
        raise WgCommandFailed(f"UAPI get failed: errno={errno}")
    body_text = "\n" + text[:end]
    if only is not None and len(only) <= 64:
        # A few peers among many: find each one's lines instead of splitting all of them.
        first = body_text.find("\npublic_key=")
        head = body_text if first < 0 else body_text[:first]
        chunks = []
        for key in sorted(only):
            at = body_text.find(f"\npublic_key={hex_key(key)}\n")
            if at >= 0:
                stop = body_text.find("\npublic_key=", at + 1)
                chunks.append(body_text[at + 12 : stop if stop >= 0 else len(body_text)])
    else:
        head, *chunks = body_text.split("\npublic_key=")
    listen_port = 0
    fwmark: int | None = None
    for line in head.split("\n"):
        key, _, value = line.partition("=")
        try:
            if key == "listen_port":
                listen_port = int(value)
            elif key == "fwmark":
                fwmark = int(value) or None
        except ValueError:
            raise DumpParseError(f"UAPI: bad value for {key}: {value[:40]!r}") from None
        # private_key: skipped, never kept. UAPI has no public key of the interface.
    peers: list[PeerStatus] = []
    # Compare hex prefixes: the peers skipped are neither split nor converted.
    wanted = None if only is None else {hex_key(key) for key in only}
    seen: dict[str, PeerStatus] = {}
    for number, chunk in enumerate(chunks, start=1):
        if wanted is not None and chunk[:64] not in wanted:
            continue
        if memo is not None:
            known = memo.get(chunk)
            if known is not None:
                peers.append(known)
                seen[chunk] = known
                continue
        hex_value, _, body = chunk.partition("\n")
        public_key = b64_key(hex_value)
        fields: dict[str, str] = {}
        allowed: list[str] = []
        for line in body.split("\n"):
            key, sep, value = line.partition("=")
            if key == "allowed_ip":
                allowed.append(value)
            elif sep:
                fields[key] = value
            elif line:
                raise DumpParseError(f"UAPI peer {number}: expected key=value, got {line[:40]!r}")
        try:
            sec = int(fields.get("last_handshake_time_sec", 0))
            peers.append(
                PeerStatus(
                    public_key=public_key,
                    endpoint=_endpoint(fields.get("endpoint", "")),
                    allowed_ips=tuple(allowed),
                    latest_handshake=sec,
                    rx_bytes=int(fields.get("rx_bytes", 0)),
                    tx_bytes=int(fields.get("tx_bytes", 0)),
                    persistent_keepalive=int(fields.get("persistent_keepalive_interval", 0)) or None,
                    has_preshared_key=fields.get("preshared_key", "").strip("0") != "",
                    latest_handshake_ns=sec * 1_000_000_000 + int(fields.get("last_handshake_time_nsec", 0)),
                )
            )
        except ValueError as exc:
            raise DumpParseError(f"UAPI peer {number} ({public_key[:8]}…): {exc}") from None
        seen[chunk] = peers[-1]
    if memo is not None and only is None:
        memo.clear()
        memo.update(seen)
    return InterfaceStatus(
        public_key="",
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(sorted(peers, key=lambda p: p.public_key)),
    )


def set_request(peers: Sequence[tuple[PeerConfig, bool]] = (), removals: Sequence[str] = ()) -> bytes:
    """The ``set=1`` request that makes each peer look exactly like its config.

    A ``True`` beside a config re-creates that peer (removed and added in the same
    transaction): WireGuard forgets its session and the fresh keepalive starts a
    handshake at once, as ``wg set ... peer K remove peer K ...`` does.
    """
    lines = ["set=1"]
    for key in removals:
        lines += [f"public_key={hex_key(key)}", "remove=true"]
    for config, recreate in peers:
        key = hex_key(config.public_key)
        if recreate:
            lines += [f"public_key={key}", "remove=true"]
        lines += [f"public_key={key}", "replace_allowed_ips=true"]
        if config.endpoint is not None:
            lines.append(f"endpoint={config.endpoint}")
        if config.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={config.persistent_keepalive}")
        lines += [f"allowed_ip={ip}" for ip in config.allowed_ips]
    return ("\n".join(lines) + "\n\n").encode()


@attrs.define
class UapiTransport:
    """wireguard-go's control socket for ``interface``."""

    interface: str
    socket_dir: Path = SOCKET_DIR
    timeout: float = 5.0
    #: The last full reading's peers by their exact lines (``parse_get``'s memo).
    _memo: dict[str, PeerStatus] = attrs.field(factory=dict, repr=False)

    @property
    def path(self) -> Path:
        return self.socket_dir / f"{self.interface}.sock"

    def _exchange(self, request: bytes, what: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(request)
                chunks: list[bytes] = []
                tail = b""
                while True:
                    chunk = sock.recv(262_144)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    tail = (tail + chunk)[-64:]
                    # The answer ends with "errno=N\n\n".
                    if b"errno=" in tail and tail.endswith(b"\n\n"):
                        break
        except (FileNotFoundError, ConnectionRefusedError):
            raise InterfaceNotFound(
                f"WireGuard interface {self.interface!r} not found (no control socket {self.path})"
            ) from None
        except OSError as exc:
            raise WgCommandFailed(f"UAPI {what} on {self.interface!r} failed: {exc}") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def show(self, only: Collection[str] | None = None) -> InterfaceStatus:
        return parse_get(self._exchange(b"get=1\n\n", "get"), only, self._memo)

    def apply(self, peers: Sequence[tuple[PeerConfig, bool]] = (), removals: Sequence[str] = ()) -> None:
        self._set(set_request(peers, removals))

    def set_listen_port(self, port: int) -> None:
        self._set(f"set=1\nlisten_port={int(port)}\n\n".encode())

    def _set(self, request: bytes) -> None:
        answer = self._exchange(request, "set")
        errno = None
        for line in answer.split("\n"):
            if line.startswith("errno="):
                errno = line[6:]
        if errno != "0":
            raise WgCommandFailed(f"UAPI set on {self.interface!r} failed: errno={errno}")
