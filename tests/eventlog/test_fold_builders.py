"""Replay's fused fold (`replay.rebuild`: narrow pages, fold builders, each type's compiled fold)
gives exactly the state and timers of folding the validated events one by one with `evolve`.

The fold builders (`records.FOLD_BUILDERS`) leave out the fields no fold reads
(`evolve.UNREAD`); every other field equals the validated event's, and an unread one is
absent (reading it raises), so a fold that starts reading one cannot silently read nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import orjson
import pytest

from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core import codec
from natrelay.core.engine import Engine
from natrelay.core.events import EVENT_TYPES
from natrelay.core.evolve import UNREAD
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.records import FOLD_BUILDERS
from natrelay.eventlog.replay import nodes_in, rebuild

from .test_trusted_decode import stored_rows


def test_fold_builders_give_every_field_a_fold_reads(tmp_path: Path) -> None:
    built = set()
    for seq, type_name, version, payload in stored_rows(tmp_path):
        if version != EVENT_TYPES[type_name].VERSION:
            continue
        validated = codec.decode(type_name, version, payload, seq)
        event = FOLD_BUILDERS[type_name][1](orjson.loads(payload))
        assert type(event) is type(validated), f"seq {seq}"
        for field in attrs.fields(type(validated)):
            if field.name in UNREAD:
                with pytest.raises(AttributeError):
                    getattr(event, field.name)
            else:
                got, want = getattr(event, field.name), getattr(validated, field.name)
                assert got == want and type(got) is type(want), f"seq {seq}: {field.name}"
        built.add(type_name)
    assert len(built) >= 18, sorted(set(EVENT_TYPES) - built)


def test_rebuild_equals_evolving_the_validated_events_one_by_one(
    tmp_path: Path, new_url: Callable[[], str]
) -> None:
    """On SQLite and PostgreSQL (the simulated log copied, event for event, onto the backend)."""
    scenario = load_scenario("mesh").with_overrides(peers=30, duration_ms=900_000)
    simulated = str(tmp_path / "mesh.db")
    run_policy(scenario, preset("natrelay"), seed=5, log=simulated)
    path = new_url()
    with EventLog.open(simulated, create=False) as source, EventLog.open(path) as copy:
        stored = list(source.read())
        for start in range(0, len(stored), 1000):
            copy.append([(s.stream, s.decode()) for s in stored[start : start + 1000]])
    with EventLog.open(path, create=False) as log:
        nodes = nodes_in(log)
        assert nodes
        for node in nodes:
            events = [
                stored.decode()
                for stored in log.read(streams=[f"node/{node}"], stream_prefixes=[f"node/{node}/", "relay/"])
            ]
            assert len(events) > 100
            expected = Engine.rebuilt(events)
            for until in (len(events) // 3, None):
                engine, _last = rebuild(log, node, use_snapshot=False, until_seq=until)
                want = expected if until is None else Engine.rebuilt(events[: _count(log, node, until)])
                assert engine.state() == want.state(), f"{node} until {until}"
                assert engine.next_deadline() == want.next_deadline()


def _count(log: EventLog, node: str, until: int) -> int:
    """How many of the node's events have a seq at or before `until`."""
    return sum(
        1
        for _ in log.rows(to_seq=until, streams=[f"node/{node}"], stream_prefixes=[f"node/{node}/", "relay/"])
    )
