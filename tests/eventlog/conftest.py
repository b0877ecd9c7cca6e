"""Fixtures of the event log suite: every test runs on SQLite and on PostgreSQL.

PostgreSQL is found through NATRELAY_PG_URL. Each test gets its own schema
(through the connection's search_path), dropped afterwards. An unreachable
server FAILS the PostgreSQL half of the suite with the reason; it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from natrelay.eventlog import EventLog

from .helpers import libpq_url

PG_URL = os.environ.get("NATRELAY_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


class PgSchemas:
    """Creates throwaway schemas on the test server and drops them at the end."""

    def __init__(self) -> None:
        problem = None
        try:
            self.admin = psycopg.connect(libpq_url(PG_URL), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            problem = str(exc).strip()
        if problem is not None:
            pytest.fail(
                f"PostgreSQL is unreachable at NATRELAY_PG_URL={PG_URL!r}: {problem}"
                "\nStart a server or point NATRELAY_PG_URL at one; these tests never skip.",
                pytrace=False,
            )
        self.created: list[str] = []

    def new_url(self) -> str:
        schema = f"natrelay_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE SCHEMA "{schema}"')
        self.created.append(schema)
        return _with_search_path(PG_URL, schema)

    def drop_all(self) -> None:
        for schema in self.created:
            self.admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.admin.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_url(backend: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of locations for fresh, empty logs on the test's backend."""
    if backend == "sqlite":
        counter = iter(range(1_000_000))
        yield lambda: str(tmp_path / f"log{next(counter)}.db")
        return
    schemas = PgSchemas()
    try:
        yield schemas.new_url
    finally:
        schemas.drop_all()


@pytest.fixture
def open_log(new_url: Callable[[], str]) -> Iterator[Callable[..., EventLog]]:
    """A factory of fresh opened logs, closed after the test."""
    opened: list[EventLog] = []

    def make(url: str | None = None, **kwargs: object) -> EventLog:
        log = EventLog.open(url or new_url(), **kwargs)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


@pytest.fixture
def log(open_log: Callable[..., EventLog]) -> EventLog:
    counter = iter(range(10**12))
    return open_log(clock=lambda: 1_000_000 + next(counter))
