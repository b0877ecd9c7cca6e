"""Fixtures of the `natrelay serve` suite: a running service on a fresh log, and a small client.

The service runs as `natrelay serve` in its own process, as an agent would
find it; every test stops it with SIGTERM and checks that it exits cleanly and
removes its socket. Logs are SQLite files, or PostgreSQL schemas (through
NATRELAY_PG_URL; an unreachable server fails, never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.eventlog.conftest import PgSchemas

NATRELAY = [sys.executable, "-m", "natrelay.tools.cli"]


class Service:
    """A `natrelay serve` process listening on a Unix socket."""

    def __init__(self, log_url: str, socket_path: str, extra: list[str]) -> None:
        self.log_url = log_url
        self.socket_path = socket_path
        self.process = subprocess.Popen(
            [*NATRELAY, "serve", "--log", log_url, "--socket", socket_path, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path):
            if self.process.poll() is not None:
                raise AssertionError(f"natrelay serve exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("natrelay serve did not create its socket within 30 s")
            time.sleep(0.02)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("natrelay serve ignored SIGTERM for 30 s") from None
        return self.process.returncode, err


class Client:
    """A line-oriented client over the socket: send a message, read the next ones."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(socket_path)
        self.file = self.sock.makefile("rwb")
        self.received: list[dict[str, Any]] = []

    def send_raw(self, line: bytes) -> None:
        self.file.write(line if line.endswith(b"\n") else line + b"\n")
        self.file.flush()

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise EOFError("the service closed the connection")
        message = json.loads(line)
        self.received.append(message)
        return message

    def request(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send one message; return its answer (pushes before it are kept in `received`)."""
        self.send_raw(message if isinstance(message, bytes) else json.dumps(message).encode())
        while True:
            answer = self.read()
            if answer["type"] != "push":
                return answer

    def hello(self, node: str, **fields: Any) -> dict[str, Any]:
        return self.request({"type": "hello", "protocol": 1, "node": node, **fields})

    def observe(self, event: dict[str, Any], ident: Any = None) -> dict[str, Any]:
        return self.request({"type": "observe", "id": ident, "event": event})

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty log on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "serve.sqlite")
        return
    schemas = PgSchemas()
    try:
        yield schemas.new_url()
    finally:
        schemas.drop_all()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nrs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[..., Service]]:
    """Start `natrelay serve` on a log; each is stopped by SIGTERM and must exit 0."""
    started: list[Service] = []

    def start(log_url: str, *extra: str) -> Service:
        service = Service(log_url, str(short_dir / f"s{len(started)}.sock"), list(extra))
        started.append(service)
        return service

    yield start
    for service in started:
        code, err = service.stop()
        assert code == 0, f"natrelay serve exited with {code}: {err}"
        assert not os.path.exists(service.socket_path), "the socket file was left behind"


def natrelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NATRELAY, *args], capture_output=True, text=True, timeout=300)
