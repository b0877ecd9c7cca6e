"""The rendezvous: how nodes tell each other their candidates and relayed addresses.

This module owns one append-only table, ``rendezvous_records``, in the same database as
the event log (a SQLite file shared by the namespaces in the tests, PostgreSQL in a
fleet). A node appends records addressed to everyone (its candidate endpoints) or to one
peer (the relayed address its TURN session for that peer got) and polls for records
addressed to it after the last sequence number it saw. Nothing else is shared: no
address is hard-coded anywhere.

Rules of this module:

- Records are facts a node published, never rewritten; the newest record of a kind from
  a sender wins. They hold public keys, relay ids and addresses only: TURN credentials
  never enter this table.
- The engine does not read this table: the agent turns what it learns here into
  observations (``CandidatesUpdated``) that go through the event log like any other.
- The table is separate from the event log's own table so that the log keeps only event
  types the engine knows, and ``replay --verify`` is untouched by rendezvous traffic.
- On PostgreSQL every publication notifies ``natrelay_rendezvous`` at commit, and
  ``listen`` delivers those (and the event log's own ``natrelay_events``) to the agent,
  which then reads at once instead of polling. SQLite has no notifications: the agent
  polls, backing off while nothing changes (``adapters.mesh.observe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import orjson
import sqlalchemy as sa

from natrelay.eventlog.backends import CHANNEL as EVENTS_CHANNEL
from natrelay.eventlog.location import parse_location

#: The PostgreSQL channel every publication notifies.
CHANNEL = "natrelay_rendezvous"

RecordKind = Literal["candidates", "relay_address", "relay_withdrawn"]

metadata = sa.MetaData()
records_table = sa.Table(
    "rendezvous_records",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("sender", sa.String(64), nullable=False),
    #: None: addressed to every node.
    sa.Column("recipient", sa.String(64), nullable=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Index("ix_rendezvous_recipient_seq", "recipient", "seq"),
)


@attrs.frozen
class Record:
    """One published fact."""

    seq: int
    at: int
    sender: str
    recipient: str | None
    kind: str
    payload: dict[str, Any]


def _engine_for(location: str) -> sa.Engine:
    """An engine for the log's location (a file path or a database URL, as the log takes)."""
    url = parse_location(location)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url)


@attrs.define
class Rendezvous:
    """Publish and poll rendezvous records in the database at ``url``."""

    url: str
    engine: sa.Engine = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.engine = _engine_for(self.url)
        # IF NOT EXISTS: agents starting together must not race on creating the table.
        with self.engine.begin() as conn:
            conn.execute(sa.schema.CreateTable(records_table, if_not_exists=True))
            for index in records_table.indexes:
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))

    def close(self) -> None:
        self.engine.dispose()

    @property
    def notifies(self) -> bool:
        """Whether publications wake listeners (PostgreSQL), or readers must poll (SQLite)."""
        return self.engine.dialect.name == "postgresql"

    async def listen(
        self,
        on_notify: Callable[[str], None],
        channels: Sequence[str] = (CHANNEL, EVENTS_CHANNEL),
    ) -> None:
        """Until cancelled, call ``on_notify(channel)`` at each notification (PostgreSQL only).

        One connection of its own, outside the pool, in the caller's event loop: no thread,
        no timer; the loop sleeps until PostgreSQL sends something.
        """
        import psycopg

        url = self.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            for channel in channels:
                await conn.execute(f"LISTEN {channel}")
            async for notification in conn.notifies():
                on_notify(notification.channel)

    def _publish(
        self, at: int, sender: str, recipient: str | None, kind: RecordKind, payload: dict[str, Any]
    ) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                records_table.insert().values(
                    at=at,
                    sender=sender,
                    recipient=recipient,
                    kind=kind,
                    payload=orjson.dumps(payload, option=orjson.OPT_SORT_KEYS),
                )
            )
            seq = int(result.inserted_primary_key[0])  # type: ignore[index]
            if self.notifies:
                conn.execute(sa.text(f"NOTIFY {CHANNEL}, '{seq}'"))
            return seq

    def publish_candidates(
        self,
        at: int,
        sender: str,
        candidates: tuple[str, ...],
        kinds: dict[str, str] | None = None,
        nat_type: str | None = None,
    ) -> int:
        """``sender`` can be reached at these endpoints (to everyone); ``kinds``: endpoint -> kind;
        ``nat_type``: the sender's NAT as its STUN answers named it (peers judge hard pairings)."""
        payload: dict[str, Any] = {"candidates": list(candidates)}
        if kinds:
            payload["kinds"] = dict(kinds)
        if nat_type:
            payload["nat_type"] = nat_type
        return self._publish(at, sender, None, "candidates", payload)

    def publish_relay_address(
        self, at: int, sender: str, recipient: str, relay: str, session: str, address: str
    ) -> int:
        """``sender``'s session for ``recipient`` on ``relay`` receives at ``address``."""
        return self._publish(
            at, sender, recipient, "relay_address", {"relay": relay, "session": session, "address": address}
        )

    def withdraw_relay_address(self, at: int, sender: str, recipient: str, relay: str, session: str) -> int:
        return self._publish(at, sender, recipient, "relay_withdrawn", {"relay": relay, "session": session})

    def poll(self, recipient: str, after_seq: int = 0, limit: int = 1000) -> list[Record]:
        """Records for ``recipient`` (or for everyone) after ``after_seq``, oldest first."""
        t = records_table
        query = (
            sa.select(t)
            .where(t.c.seq > after_seq)
            .where(sa.or_(t.c.recipient == recipient, t.c.recipient.is_(None)))
            .where(t.c.sender != recipient)
            .order_by(t.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Record(
                seq=r.seq,
                at=r.at,
                sender=r.sender,
                recipient=r.recipient,
                kind=r.kind,
                payload=orjson.loads(r.payload),
            )
            for r in rows
        ]


def latest_relay_address(records: list[Record], sender: str) -> Record | None:
    """The newest relayed address ``sender`` published and did not withdraw."""
    current: Record | None = None
    for record in records:
        if record.sender != sender:
            continue
        if record.kind == "relay_address":
            current = record
        elif (
            record.kind == "relay_withdrawn"
            and current is not None
            and current.payload.get("session") == record.payload.get("session")
        ):
            current = None
    return current
