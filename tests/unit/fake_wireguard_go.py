"""A stand-in for wireguard-go's UAPI socket: the protocol's get and set, on a real unix socket.

Tests of the readers and of the agent talk to it through the real ``WireGuard`` facade,
so nothing between the agent and the socket is faked. It keeps peers by hex key, answers
``get=1`` like wireguard-go (private key first, then each peer's lines, ``errno=0``) and
applies ``set=1`` (``remove``, ``endpoint``, ``replace_allowed_ips``, ``allowed_ip``,
``persistent_keepalive_interval``). Re-creating a peer zeroes its handshake and counters,
as WireGuard does.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any


class FakeWireGuardGo:
    """Serve UAPI for interface ``name`` in a fresh short directory (unix paths are short)."""

    def __init__(self, name: str = "wgtest") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nrwg", dir="/tmp"))
        self.name = name
        self.private_hex = os.urandom(32).hex()
        self.listen_port = 51820
        self.peers: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        #: A non-zero errno refuses every set (as wireguard-go does for a bad request).
        self.set_errno = 0
        self.lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.dir / f"{name}.sock"))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # ---- what tests change ---------------------------------------------------------------

    def peer(self, key_b64: str) -> dict[str, Any]:
        return self.peers[base64.b64decode(key_b64).hex()]

    def set_handshake(self, key_b64: str, sec: int, nsec: int = 0) -> None:
        with self.lock:
            peer = self.peer(key_b64)
            peer["sec"], peer["nsec"] = sec, nsec

    def receive(self, key_b64: str, count: int = 32) -> None:
        with self.lock:
            self.peer(key_b64)["rx"] += count

    def count(self, op: str) -> int:
        return sum(1 for r in self.requests if r == op)

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the protocol ----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                lines = data.decode().split("\n")
                op = lines[0]
                with self.lock:
                    self.requests.append(op)
                    answer = self._get() if op == "get=1" else self._set(lines[1:])
                conn.sendall(answer.encode())

    def _get(self) -> str:
        out = [f"private_key={self.private_hex}", f"listen_port={self.listen_port}"]
        for key, p in self.peers.items():
            out += [f"public_key={key}", "preshared_key=" + "0" * 64, "protocol_version=1"]
            if p["endpoint"]:
                out.append(f"endpoint={p['endpoint']}")
            out += [
                f"last_handshake_time_sec={p['sec']}",
                f"last_handshake_time_nsec={p['nsec']}",
                f"tx_bytes={p['tx']}",
                f"rx_bytes={p['rx']}",
                f"persistent_keepalive_interval={p['keepalive']}",
            ]
            out += [f"allowed_ip={ip}" for ip in p["allowed"]]
        out.append("errno=0")
        return "\n".join(out) + "\n\n"

    def _set(self, lines: list[str]) -> str:
        if self.set_errno:
            return f"errno={self.set_errno}\n\n"
        current: dict[str, Any] | None = None
        for line in lines:
            if not line:
                continue
            key, _, value = line.partition("=")
            if key == "public_key":
                if value not in self.peers:
                    self.peers[value] = {
                        "endpoint": None,
                        "sec": 0,
                        "nsec": 0,
                        "rx": 0,
                        "tx": 0,
                        "keepalive": 0,
                        "allowed": [],
                    }
                current = self.peers[value]
                current_key = value
            elif current is None:
                return "errno=22\n\n"
            elif key == "remove" and value == "true":
                del self.peers[current_key]
                current = None
            elif key == "endpoint":
                current["endpoint"] = value
            elif key == "persistent_keepalive_interval":
                current["keepalive"] = int(value)
            elif key == "replace_allowed_ips":
                current["allowed"] = []
            elif key == "allowed_ip":
                current["allowed"].append(value)
            else:
                return "errno=22\n\n"
        return "errno=0\n\n"
