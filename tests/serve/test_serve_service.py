"""The service's engines and log, in process: other writers, failed appends, relays shared by nodes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from natrelay.adapters.serve.service import Outcome, Service
from natrelay.core.events import Event, PeerAdded, PolicySet, RelayAnnounced, Tick
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog, LogWriteError
from natrelay.eventlog.replay import rebuild, verify
from tests.conftest import make_key

K1, K2 = make_key(1), make_key(2)
RELAY_FIRST = Policy(mode="relay_first")


def state(engine: Any) -> bytes:
    return orjson.dumps(engine.state())


def service_with_waiting_peer(path: Path) -> tuple[EventLog, Service, list[tuple[Outcome, Event]]]:
    log = EventLog.open(str(path))
    service = Service(log)
    pushed: list[tuple[Outcome, Event]] = []
    service.on_push = lambda outcome, cause: pushed.append((outcome, cause))
    service.attach("beta", RELAY_FIRST)
    answer = service.observe("beta", PeerAdded(at=10, peer=K2, candidates=("203.0.113.9:40000",)))
    assert "relay_unavailable" in [d.TYPE for d in answer.decisions]
    return log, service, pushed


def test_a_relay_announced_by_another_writer_is_decided_and_pushed(tmp_path: Path) -> None:
    log, service, pushed = service_with_waiting_peer(tmp_path / "log.sqlite")
    with EventLog.open(str(tmp_path / "log.sqlite")) as other:
        other.append([("relay/fra-1", RelayAnnounced(at=20, relay="fra-1", region="eu"))])
    outcome = service.observe("beta", Tick(at=30))  # the append conflicts; the service catches up
    assert outcome.seq == service.seen_seq and outcome.seq == log.last_seq()
    assert [(o.node, [d.TYPE for d in o.decisions], type(c).__name__) for o, c in pushed] == [
        ("beta", ["relay_chosen"], "RelayAnnounced")
    ]
    assert [type(c).__name__ for c in pushed[0][0].commands] == ["ConnectViaRelay"]
    result = verify(log, "beta")
    assert result.ok, result.divergence
    log.close()


def test_a_foreign_write_into_a_served_node_rebuilds_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, service, _ = service_with_waiting_peer(tmp_path / "log.sqlite")
    with EventLog.open(str(tmp_path / "log.sqlite")) as other:
        other.append(
            [(f"node/beta/peer/{K1}", PeerAdded(at=15, peer=K1, candidates=("198.51.100.7:51820",)))]
        )
    service.observe("beta", Tick(at=30))
    assert "another writer appended to node beta" in caplog.text
    assert K1 in service.nodes["beta"].engine.peers
    assert state(service.nodes["beta"].engine) == state(rebuild(log, "beta")[0])
    log.close()


def test_a_failed_append_logs_nothing_and_leaves_every_engine_as_the_log_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, service, pushed = service_with_waiting_peer(tmp_path / "log.sqlite")
    service.attach("alpha", RELAY_FIRST)
    before = log.last_seq()
    real_append = log.append

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise LogWriteError("disk full")

    monkeypatch.setattr(log, "append", failing)
    announce = RelayAnnounced(at=20, relay="fra-1", region="eu")
    with pytest.raises(LogWriteError):
        service.observe("alpha", announce)  # beta handled it too: both are rolled back
    assert log.last_seq() == before and not pushed
    for name in ("alpha", "beta"):
        assert state(service.nodes[name].engine) == state(rebuild(log, name)[0])
    monkeypatch.setattr(log, "append", real_append)
    service.observe("alpha", announce)  # the same observation, now logged, decides as if for the first time
    assert [d.TYPE for o, _ in pushed for d in o.decisions] == ["relay_chosen"]
    for name in ("alpha", "beta"):
        result = verify(log, name)
        assert result.ok, (name, result.divergence)
    log.close()


def test_a_new_node_starts_with_its_policy_and_a_changed_policy_is_logged(tmp_path: Path) -> None:
    with EventLog.open(str(tmp_path / "log.sqlite")) as log:
        service = Service(log)
        _served, created = service.attach("alpha", None)
        assert created
        service.detach("alpha")
        _, created = service.attach("alpha", None)  # same policy: nothing new
        assert not created
        service.detach("alpha")
        direct_first = Policy(mode="direct_first")
        service.attach("alpha", direct_first)
        policies = [e for _s, _st, e in log.read_events() if isinstance(e, PolicySet)]
        assert [p.policy for p in policies] == [Policy(), direct_first]
        assert Service(log).nodes.keys() == {"alpha"}  # a restarted service loads every node


def test_a_batch_commits_together_and_an_engine_failure_refuses_only_its_own_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog.open(
        str(tmp_path / "log.sqlite"), clock=itertools.count(1000).__next__
    )  # a tick per append
    service = Service(log)
    for name in ("alpha", "beta"):
        service.attach(name, None)
    engine = service.nodes["beta"].engine
    real_handle = engine.handle

    def broken(event: Event) -> Any:
        if isinstance(event, PeerAdded) and event.peer == K2:
            raise RuntimeError("engine bug")
        return real_handle(event)

    monkeypatch.setattr(engine, "handle", broken)
    before = log.last_seq()
    requests = [
        ("alpha", PeerAdded(at=1, peer=K1, candidates=("198.51.100.7:51820",))),
        ("beta", PeerAdded(at=1, peer=K2, candidates=("198.51.100.8:51820",))),
        ("beta", PeerAdded(at=2, peer=K1, candidates=("198.51.100.9:51820",))),
    ]
    results, pushes = service.observe_many(requests)
    assert isinstance(results[1], RuntimeError) and not pushes
    first, third = results[0], results[2]
    assert isinstance(first, Outcome) and isinstance(third, Outcome)
    assert first.seq == before + 1 and third.seq > first.seq
    # one transaction: every stored row of the batch has the same recorded time and no gap
    rows = list(log.read(before + 1))
    assert [r.seq for r in rows] == list(range(before + 1, log.last_seq() + 1))
    assert len({r.recorded_at for r in rows}) == 1
    # the refused observation left no trace (the engines were rebuilt from the log)
    assert K2 not in service.nodes["beta"].engine.peers
    for name in ("alpha", "beta"):
        result = verify(log, name)
        assert result.ok, (name, result.divergence)
    log.close()
