"""The agent's loop: it sleeps while nothing happens, forks nothing, and trusts no stale reading.

The agent runs for real (engine, SQLite log, rendezvous, the ``WireGuard`` facade over a
UAPI socket served by ``FakeWireGuardGo``) on a simulated clock: ``drive`` advances time
in 10 ms steps and calls ``step`` only when the agent's own ``_sleep_ms`` says a turn is
due, as ``Agent.run`` does between its waits.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.adapters.mesh import agent as agent_module
from natrelay.adapters.mesh.agent import Agent
from natrelay.adapters.mesh.agent_config import AgentConfig, PeerSpec
from natrelay.adapters.mesh.rendezvous import Rendezvous
from natrelay.adapters.mesh.wireguard import WireGuard
from natrelay.core import lifecycle as lc
from natrelay.core.events import RelayAnnounced, Tick
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import node_events, nodes_in, verify
from tests.conftest import make_key, policy
from tests.unit.fake_wireguard_go import FakeWireGuardGo

ME, B = make_key(1), make_key(2)
B_ENDPOINT = "203.0.113.102:51820"
START_MS = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def wggo() -> Iterator[FakeWireGuardGo]:
    server = FakeWireGuardGo()
    yield server
    server.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(agent_module, "wall_ms", clock)
    return clock


@pytest.fixture
def no_fork(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any process the agent starts fails the test (and is recorded)."""
    forks: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        forks.append(args[0] if args else kwargs.get("args"))
        raise AssertionError(f"the agent forked {forks[-1]!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    return forks


def make_agent(
    tmp_path: Path, wggo: FakeWireGuardGo, backend: str = "auto", chosen: Policy | None = None
) -> Agent:
    config = AgentConfig(
        node="a",
        peers=(PeerSpec(name="b", public_key=B, allowed_ips=("10.77.0.2/32",), endpoints=(B_ENDPOINT,)),),
        relays=(),
        policy=chosen or policy(),
        persistent_keepalive=1,
        advertise_reflexive=False,
        # The loop's own cost and timing; the data plane's sockets are tested in tests/e2e.
        data_plane="endpoint",
    )
    wireguard = WireGuard("wgtest", socket_dir=wggo.dir, public_key=ME, backend=backend)
    return Agent(config, "wgtest", str(tmp_path / "log.sqlite"), startup_wait=0, wireguard=wireguard)


def drive(agent: Agent, clock: Clock, wggo: FakeWireGuardGo, seconds: float, *, alive: bool) -> int:
    """Run the agent's turns for ``seconds`` of simulated time; b's keepalive arrives each second."""
    turns = 0
    end = clock.ms + int(seconds * 1000)
    while clock.ms < end:
        if agent._sleep_ms(agent.now()) == 0:
            agent.step()
            turns += 1
        clock.ms += 10
        if alive and clock.ms % 1000 == 0:
            wggo.receive(B)
    return turns


def connect(agent: Agent, clock: Clock, wggo: FakeWireGuardGo) -> None:
    agent.start()
    drive(agent, clock, wggo, 0.3, alive=False)
    wggo.set_handshake(B, clock.ms // 1000)
    wggo.receive(B)
    drive(agent, clock, wggo, 0.3, alive=True)
    assert agent.engine.peers[B].state == lc.DIRECT_CONNECTED


def events_of(tmp_path: Path) -> list[str]:
    with EventLog.open(str(tmp_path / "log.sqlite"), create=False) as log:
        return [e.TYPE for _s, _st, e in node_events(log, "a")]


def close(agent: Agent) -> None:
    agent.rendezvous.close()
    agent.log.close()


def test_an_idle_agent_wakes_rarely_reads_wireguard_at_the_silence_cadence_and_forks_nothing(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock, no_fork: list[object]
) -> None:
    agent = make_agent(tmp_path, wggo)
    connect(agent, clock, wggo)
    gets = wggo.count("get=1")
    turns = drive(agent, clock, wggo, 60, alive=True)
    reads = wggo.count("get=1") - gets
    # Keepalive 1 s: silence limit 4 s, read every second; the rendezvous backs off to 2 s.
    # The old loop turned every 100 ms: 600 turns and 600 readings in a minute.
    assert reads <= 62, reads
    assert turns <= 95, turns
    assert agent.watch.rendezvous_gap_ms == agent.watch.rendezvous_max_ms
    assert "path_silent" not in events_of(tmp_path)
    assert no_fork == []
    close(agent)


def test_the_wg_tool_backend_forks_which_the_no_fork_check_catches(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock, no_fork: list[object]
) -> None:
    """The check above can fail: the same agent on `wg` (one fork a reading) trips it."""
    agent = make_agent(tmp_path, wggo, backend="wg")
    with pytest.raises(AssertionError, match="forked"):
        agent.start()
    assert no_fork and no_fork[0][0] == "wg"  # type: ignore[index]


def test_handshakes_are_awaited_at_the_fast_interval_while_a_round_is_open(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock
) -> None:
    agent = make_agent(tmp_path, wggo)
    agent.start()
    assert agent.watch.awaited == set() or B in agent._awaited()
    gets = wggo.count("get=1")
    drive(agent, clock, wggo, 0.5, alive=False)
    # poll_interval 50 ms while b's round is open: about ten readings in half a second.
    assert wggo.count("get=1") - gets >= 8
    wggo.set_handshake(B, clock.ms // 1000)
    seen_at = clock.ms
    drive(agent, clock, wggo, 0.2, alive=True)
    with EventLog.open(str(tmp_path / "log.sqlite"), create=False) as log:
        observed = [e for _s, _st, e in node_events(log, "a") if e.TYPE == "handshake_observed"]
    assert observed and observed[0].at - seen_at <= int(agent.poll_interval * 1000) + 10
    close(agent)


def test_a_silent_path_is_not_reselected_by_the_stale_reading_that_found_it_silent(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock, no_fork: list[object]
) -> None:
    """Issue 12 bug 2: PathSilent re-points WireGuard; the reading from before must not count."""
    agent = make_agent(tmp_path, wggo)
    connect(agent, clock, wggo)
    drive(agent, clock, wggo, 5, alive=True)
    sets = wggo.count("set=1")
    drive(agent, clock, wggo, 8, alive=False)  # b's path died: nothing received
    types = events_of(tmp_path)
    assert "path_silent" in types
    after = types[types.index("path_silent") :]
    assert wggo.count("set=1") > sets, "the engine's retry re-pointed WireGuard"
    assert "handshake_observed" not in after, after
    assert "direct_path_selected" not in after, after
    assert verify(EventLog.open(str(tmp_path / "log.sqlite"), create=False), "a").ok
    close(agent)


def test_an_agent_started_after_others_wrote_the_log_writes_its_own_stream(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock
) -> None:
    """Issue 12 bug 1: the default policy and a non-empty log still make a start an event."""
    with EventLog.open(str(tmp_path / "log.sqlite")) as log:
        announced = RelayAnnounced(at=START_MS - 5000, relay="r1", region="lab", address="203.0.113.11:3478")
        log.append([("relay/r1", announced)])
    agent = make_agent(tmp_path, wggo, chosen=Policy())

    async def start() -> None:
        agent.start()  # the default policy may choose r1 at once: its task needs a loop
        for task in agent._tasks:
            task.cancel()

    asyncio.run(start())
    with EventLog.open(str(tmp_path / "log.sqlite"), create=False) as log:
        assert "a" in nodes_in(log)
        assert verify(log, "a").ok
    close(agent)


def test_appending_an_observation_from_a_task_wakes_the_loop(tmp_path: Path, wggo: FakeWireGuardGo) -> None:
    agent = make_agent(tmp_path, wggo)
    woken: list[int] = []
    agent._pending.wake = lambda: woken.append(1)  # type: ignore[attr-defined]
    agent._pending.append(Tick(at=START_MS))
    assert woken == [1]
    assert agent._sleep_ms(START_MS) == 0


@pytest.mark.postgres
def test_a_rendezvous_publication_on_postgresql_notifies_a_listener() -> None:
    import psycopg

    url = os.environ.get("NATRELAY_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"natrelay_test_{uuid.uuid4().hex[:12]}"
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        admin = psycopg.connect(libpq, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at NATRELAY_PG_URL={url!r}: {exc}", pytrace=False)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        listener, publisher = Rendezvous(scoped), Rendezvous(scoped)
        assert listener.notifies

        async def scenario() -> list[str]:
            heard: list[str] = []
            got = asyncio.Event()

            def on_notify(channel: str) -> None:
                heard.append(channel)
                got.set()

            # Channels are per database: other tests' appends notify natrelay_events meanwhile.
            task = asyncio.get_running_loop().create_task(listener.listen(on_notify, ["natrelay_rendezvous"]))
            await asyncio.sleep(0.5)  # LISTEN is in place
            publisher.publish_candidates(START_MS, B, (B_ENDPOINT,))
            await asyncio.wait_for(got.wait(), 5)
            task.cancel()
            return heard

        assert "natrelay_rendezvous" in asyncio.run(scenario())
        listener.close()
        publisher.close()
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def test_an_attempt_whose_round_ended_before_its_turn_does_not_keep_the_loop_awake(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock
) -> None:
    from natrelay.adapters.mesh.agent import _Attempt
    from natrelay.core.commands import TryDirectEndpoint

    agent = make_agent(tmp_path, wggo)
    agent.start()
    drive(agent, clock, wggo, 1, alive=False)
    now = agent.now()
    expired = TryDirectEndpoint(peer=B, endpoint=B_ENDPOINT, deadline=now - 1, attempt=1)
    agent._attempts[B] = [_Attempt(expired, start_at=now - 5)]
    agent.watch.wireguard_at = agent.watch.rendezvous_at = now + 500
    agent.engine.next_deadline = lambda: None  # type: ignore[method-assign]
    assert agent._sleep_ms(now) == 500
    close(agent)


def test_the_agent_snapshots_its_engine_every_few_observations_and_a_rebuild_from_one_is_whole(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock
) -> None:
    """Issue 14: views and restarts read the newest snapshot plus the tail, so the agent must
    take snapshots, and each must be the state at its seq. Kills an agent that never
    snapshots, and one that stores the state under another seq (a rebuild from it then
    folds an event twice or misses one)."""
    import attrs
    import orjson

    from natrelay.eventlog.replay import rebuild, snapshot_name

    agent = make_agent(tmp_path, wggo)
    agent.config = attrs.evolve(agent.config, snapshot_every=3)
    connect(agent, clock, wggo)
    drive(agent, clock, wggo, 20, alive=False)  # silent: the path is lost, rounds follow
    close(agent)
    with EventLog.open(str(tmp_path / "log.sqlite"), create=False) as log:
        observations = sum(1 for _s, _st, e in node_events(log, "a") if e.KIND == "observation")
        newest = log.load_snapshot(snapshot_name("a"), None)
        assert observations >= 6 and newest is not None, (observations, newest)
        assert newest.seq > 1
        from_snapshot, last = rebuild(log, "a")
        from_start, last_full = rebuild(log, "a", use_snapshot=False)
        assert last == last_full
        assert orjson.dumps(from_snapshot.state()) == orjson.dumps(from_start.state())
        at_snapshot, _ = rebuild(log, "a", until_seq=newest.seq, use_snapshot=False)
        assert orjson.loads(newest.state) == orjson.loads(orjson.dumps(at_snapshot.state()))
        assert verify(log, "a").ok


def test_taking_a_relay_path_reads_the_rendezvous_at_once(
    tmp_path: Path, wggo: FakeWireGuardGo, clock: Clock
) -> None:
    """Kills a fallback to a warm relay session that waits out the backed-off rendezvous
    poll (up to 2 s on SQLite) for the peer's new relayed address: an e2e gap of 4.4 s
    instead of 2.5 s. Mutation: no watch_rendezvous_now -> the poll stays 2 s away."""
    from natrelay.core.commands import SwitchPath

    agent = make_agent(tmp_path, wggo)
    connect(agent, clock, wggo)
    drive(agent, clock, wggo, 10, alive=True)  # idle: the SQLite poll backed off
    assert agent.watch.rendezvous_gap_ms == agent.watch.rendezvous_max_ms
    assert agent.watch.rendezvous_at > agent.now()
    agent._sessions.clear()
    agent.execute(SwitchPath(peer=B, relay="r1"))
    assert agent.watch.rendezvous_at <= agent.now()
    assert agent.watch.rendezvous_gap_ms == int(agent.poll_interval * 1000)
    close(agent)
