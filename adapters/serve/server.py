"""`natrelay serve`'s transport: asyncio over a Unix socket and/or stdio, one node per connection.

Owns connections, not decisions: each connection reads newline-delimited JSON,
binds itself to one node with a hello, and queues each observation for the
batcher, which hands everything queued meanwhile to `Service.observe_many`
(decided in order, appended in one transaction) and then sends the answers and
pushes in batch order. A connection reads its next line only once its previous
answer is sent, so its answers come in the order of its requests. A line is
answered only after its observation and decisions are in the log. A bad line
gets one `error` message naming the field, and nothing is logged for it; the
connection stays open (except for a line over the size limit, after which the
stream cannot be trusted).

Shutdown (SIGTERM, SIGINT, or stdin closed in stdio mode): stop accepting,
decide, log and answer the lines already queued, send `goodbye` on every connection, close them,
snapshot every node that changed, close the log, remove the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from natrelay.core.events import Event
from natrelay.eventlog import EventLogError

from . import protocol as p
from .service import NodeInUse, Outcome, Service

log = logging.getLogger(__name__)


def natrelay_version() -> str:
    try:
        return version("natrelay")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


class SocketInUse(Exception):
    """Another process serves on this socket path."""


class Connection:
    """One client: its stream, and the node it speaks for once it said hello."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.node: str | None = None

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(p.encode(message))

    async def run(self) -> None:
        try:
            while not self.server.stopping.is_set():
                try:
                    line = await self.reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await self.handle(exc.partial)
                    return
                except asyncio.LimitOverrunError:
                    self.send(
                        p.error(
                            None,
                            p.ProtocolError("line_too_long", f"a line is at most {p.MAX_LINE_BYTES} bytes"),
                        )
                    )
                    return
                if line.strip():
                    await self.handle(line)
                await self.writer.drain()
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            self.close()

    async def handle(self, line: bytes) -> None:
        """Answer one line: a welcome or an error now; an observation once its batch is committed."""
        ident = p.message_id(line)
        try:
            message = p.parse_line(line)
            if isinstance(message, p.Hello):
                self.send(self.hello(message))
                return
            if self.node is None:
                raise p.ProtocolError(
                    "hello_required", 'say hello first: {"type":"hello","protocol":1,"node":...}'
                )
        except p.ProtocolError as exc:
            self.send(p.error(ident, exc))
            return
        await self.server.submit(self, message.id, message.event)

    def hello(self, message: p.Hello) -> dict[str, Any]:
        if self.node is not None:
            raise p.ProtocolError("already_hello", f"this connection serves node {self.node!r}", "node")
        service = self.server.service
        try:
            served, created = service.attach(message.node, message.policy)
        except NodeInUse as exc:
            raise p.ProtocolError("node_in_use", str(exc), "node") from None
        except EventLogError as exc:
            raise p.ProtocolError("log_write_failed", str(exc)) from None
        self.node = message.node
        self.server.by_node[message.node] = self
        log.info(
            "node %s attached (client %r, %s)", message.node, message.client, "new" if created else "known"
        )
        engine = served.engine
        return p.welcome(
            message.id,
            message.node,
            version=natrelay_version(),
            last_seq=service.seen_seq,
            now=engine.now,
            next_deadline=engine.next_deadline(),
            peers=service.peers(message.node),
            created=created,
        )

    def close(self) -> None:
        if self.node is not None:
            log.info("node %s detached", self.node)
            self.server.service.detach(self.node)
            if self.server.by_node.get(self.node) is self:
                del self.server.by_node[self.node]
            self.node = None
        self.server.connections.discard(self)
        with contextlib.suppress(Exception):
            self.writer.close()


#: An observation waiting for the next batch: its connection, node, request id, event, and
#: the future its connection waits on before reading its next line.
Queued = tuple["Connection", str, Any, Event, "asyncio.Future[None]"]


class Server:
    """The service behind a Unix socket and/or stdio."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.service.on_push = self._push
        self.connections: set[Connection] = set()
        self.by_node: dict[str, Connection] = {}
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: list[Queued] = []
        self._wake = asyncio.Event()

    # ---- group commit

    async def submit(self, connection: Connection, ident: Any, event: Event) -> None:
        """Queue an observation for the next batch; return once its answer is sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert connection.node is not None
        self._queue.append((connection, connection.node, ident, event, done))
        self._wake.set()
        await done

    async def _batcher(self) -> None:
        """Decide and append every queued observation in one transaction, then answer in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for _ in range(2):  # let every connection with a line ready queue it too
                await asyncio.sleep(0)
            batch, self._queue = self._queue, []
            if not batch:
                continue
            self._process(batch)

    def _process(self, batch: list[Queued]) -> None:
        try:
            results, pushes = self.service.observe_many([(node, e) for _c, node, _i, e, _d in batch])
        except Exception as exc:  # catching up with another writer failed (the database is gone...)
            results, pushes = [exc] * len(batch), []
        after: dict[int, list[tuple[Outcome, Event]]] = {}
        for position, outcome, cause in pushes:
            after.setdefault(position, []).append((outcome, cause))
        for index, ((connection, node, ident, event, done), result) in enumerate(
            zip(batch, results, strict=True)
        ):
            connection.send(self._answer(ident, event, node, result))
            for outcome, cause in after.get(index, ()):
                self._push(outcome, cause)
            if not done.done():
                done.set_result(None)

    @staticmethod
    def _answer(ident: Any, event: Event, node: str | None, result: Outcome | Exception) -> dict[str, Any]:
        if isinstance(result, Outcome):
            o = result
            return p.reaction(ident, o.seq, o.decisions, o.commands, o.now, o.next_deadline)
        if isinstance(result, EventLogError):
            return p.error(ident, p.ProtocolError("log_write_failed", str(result)))
        log.error("the engine failed on %s for node %s: %r", event.TYPE, node, result)
        return p.error(ident, p.ProtocolError("internal_error", f"{type(result).__name__}: {result}"))

    def _push(self, outcome: Outcome, cause: Event) -> None:
        connection = self.by_node.get(outcome.node)
        if connection is not None:
            connection.send(
                p.push(
                    cause,
                    outcome.seq,
                    outcome.decisions,
                    outcome.commands,
                    outcome.now,
                    outcome.next_deadline,
                )
            )

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> asyncio.Task[None]:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        task = asyncio.ensure_future(connection.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._track(reader, writer)

    async def run(self, *, socket_path: str | None, stdio: bool, ready: Any = None) -> None:
        """Serve until SIGTERM/SIGINT (or stdin's end in stdio mode)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stopping.set)
        unix_server = None
        batcher = asyncio.ensure_future(self._batcher())
        try:
            if socket_path is not None:
                unix_server = await self._listen(socket_path)
            if stdio:
                stdio_task = await self._serve_stdio()
                stdio_task.add_done_callback(lambda _task: self.stopping.set())
            if ready is not None:
                ready()
            await self.stopping.wait()
        finally:
            if unix_server is not None:
                unix_server.close()
            for connection in list(self.connections):
                connection.send(p.goodbye("shutdown"))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.writer.drain(), 2)
                connection.close()
            batcher.cancel()
            batch, self._queue = self._queue, []
            if batch:  # lines already read are decided, logged and answered before goodbye
                self._process(batch)
            for task in list(self._tasks):
                task.cancel()
            if unix_server is not None:
                with contextlib.suppress(Exception):
                    await unix_server.wait_closed()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)  # type: ignore[arg-type]
            self.service.snapshot_all()

    async def _listen(self, path: str) -> asyncio.AbstractServer:
        target = Path(path)
        if target.exists() or target.is_symlink():
            if not stat.S_ISSOCK(target.lstat().st_mode):
                raise SocketInUse(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                target.unlink()  # a stale socket from a process that died
            else:
                raise SocketInUse(f"another process serves on {path}")
            finally:
                probe.close()
        # Bound and listening under a temporary name, then renamed: the path appears only when
        # a connect to it succeeds (an agent waiting for the file never meets a refusal).
        staging = f"{path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        old_umask = os.umask(0o177)  # the socket is born 0600: only its owner may drive the engine
        try:
            server = await asyncio.start_unix_server(self._accept, staging, limit=p.MAX_LINE_BYTES)
        finally:
            os.umask(old_umask)
        os.rename(staging, path)
        return server

    async def _serve_stdio(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=p.MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, sys.stdout.buffer
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
        return self._track(reader, writer)
