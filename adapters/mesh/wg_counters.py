"""wireguard-go's control socket for the shared data plane's path switches, no fork.

This module owns the one UAPI exchange the shared data plane makes on its own: ``set=1``
of one peer's endpoint (a path switch, in place: the session survives), optionally
re-arming its keepalive. Readings (counters, endpoints) go through the agent's
``WireGuard`` (``wg_uapi`` or netlink), shared with the agent. Protocol:
wireguard.com/xplatform.

Kernel WireGuard has no UAPI socket (it speaks netlink); ``Uapi.available`` is False
there and the caller sets endpoints through the agent's ``WireGuard``.
"""

from __future__ import annotations

import base64
import os
import socket

import attrs

SOCKET_DIR = "/var/run/wireguard"


class UapiError(OSError):
    """The UAPI socket refused or failed a request (the message names the interface)."""


@attrs.define
class Uapi:
    interface: str
    timeout: float = 1.0

    @property
    def path(self) -> str:
        return os.path.join(SOCKET_DIR, f"{self.interface}.sock")

    @property
    def available(self) -> bool:
        return os.path.exists(self.path)

    def _exchange(self, request: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                sock.sendall(request.encode())
                chunks: list[bytes] = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"".join(chunks[-2:]).endswith(b"\n\n"):
                        break
            except OSError as exc:
                raise UapiError(f"UAPI of {self.interface!r}: {exc}") from None
        return b"".join(chunks).decode()

    def set_endpoint(self, public_key: str, endpoint: str, kick_keepalive: int | None = None) -> None:
        """Point the (existing) peer at ``endpoint``, keeping its session.

        With ``kick_keepalive`` (the peer's persistent keepalive, s) the keepalive is turned
        off and on again in the same request: wireguard-go then sends one at once, which
        starts a handshake when there is no session yet (re-creating the peer would throw
        away a session the other side may have just made).
        """
        hexkey = base64.b64decode(public_key).hex()
        request = f"set=1\npublic_key={hexkey}\nupdate_only=true\nendpoint={endpoint}\n"
        if kick_keepalive:
            request += f"persistent_keepalive_interval=0\npersistent_keepalive_interval={kick_keepalive}\n"
        answer = self._exchange(request + "\n")
        if "errno=0" not in answer:
            raise UapiError(f"UAPI of {self.interface!r}: setting the endpoint failed: {answer.strip()}")
