"""Running a policy (or the oracle) on a scenario: vantages, logs, the node loop, the metrics.

Owns the glue between the simulator, the event log and the engine for one run:
one `SimNetwork` per vantage of the scenario (peers dealt round robin), each
driven by a `Node` writing to its own log with a simulated clock, so the same
seed gives the same log byte for byte. Wall time is measured here and only
reported, never decided on.

A simulation always starts at simulated time 0 from an empty log: its network
is rebuilt from the seed, so carrying on from a log a previous run left would
mix two runs (and a node that believes its peers are connected while the new
network has never seen them). `run_policy` refuses a log that already holds
events (`SimulationError`); `natrelay simulate` removes exactly the files
`log_files()` names before it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs

from natrelay.adapters.node import Node
from natrelay.adapters.sim.metrics import RunMetrics, best_of, compute
from natrelay.adapters.sim.scenario import Scenario
from natrelay.adapters.sim.sim_model import Account
from natrelay.adapters.sim.simulated_network import SimNetwork
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog


class SimulationError(ValueError):
    """A simulation cannot run as asked (its log already holds events)."""


#: Observations per log append in simulations (see Node.flush_every).
FLUSH_EVERY = 2048
ORACLE = "oracle"


@attrs.frozen
class VantagePlan:
    """Which peers a vantage simulates, and where its log goes."""

    vantage: int
    peer_indexes: tuple[int, ...]
    log: str


def plan(scenario: Scenario, log: str | None, log_dir: Path | None, label: str) -> list[VantagePlan]:
    """Deal the scenario's peers among its vantages; one log per vantage."""
    total = scenario.peers + len(scenario.peer_list)
    count = len(scenario.local_nats)
    plans = []
    for vantage in range(count):
        indexes = tuple(range(vantage, total, count))
        if log is not None and count == 1:
            where = log
        elif log is not None:
            path = Path(log)
            where = str(path.with_name(f"{path.stem}-{scenario.local_nats[vantage]}{path.suffix}"))
        elif log_dir is not None:
            where = str(log_dir / f"{label}-{vantage}-{scenario.local_nats[vantage]}.db")
        else:
            where = ":memory:"
        plans.append(VantagePlan(vantage, indexes, where))
    return plans


def log_files(scenario: Scenario, log: str) -> tuple[str, ...]:
    """The log files a run of `scenario` writes when asked for `log`: one per vantage.

    With one local NAT that is `log` itself; with several, `log`'s stem plus
    each local NAT type (`matrix.db` -> `matrix-none.db`, `matrix-symmetric.db`...).
    """
    return tuple(item.log for item in plan(scenario, log, None, ""))


def run_policy(
    scenario: Scenario,
    policy: Policy | None,
    *,
    seed: int,
    log: str | None = None,
    log_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    probe_cost: str = "hitless",
) -> RunMetrics:
    """Simulate `policy` (None: the oracle) on `scenario`; `progress` gets simulated ms as they pass.

    The total passed to `progress` over a run is `duration_ms` times the number of vantages.
    The oracle runs twice, relaying while a slower direct handshake completes and not
    (`sim_oracle`); its row is, metric by metric, the better of the two.
    `probe_cost` is what a direct probe of a connected peer costs the data plane
    (`sim_model.PROBE_COSTS`).
    `log` names the log (`log_files` tells which files that becomes); each must be
    missing or empty, or `SimulationError` is raised before anything runs.
    """
    if policy is None:
        fast = _run(scenario, None, seed, None, None, progress, probe_cost, bridge=True)
        calm = _run(scenario, None, seed, None, None, None, probe_cost, bridge=False)
        return best_of(fast, calm)
    return _run(scenario, policy, seed, log, log_dir, progress, probe_cost, bridge=True)


def _run(
    scenario: Scenario,
    policy: Policy | None,
    seed: int,
    log: str | None,
    log_dir: Path | None,
    progress: Callable[[int], None] | None,
    probe_cost: str,
    *,
    bridge: bool,
) -> RunMetrics:
    label = ORACLE if policy is None else policy.name
    started = time.perf_counter()
    accounts: list[Account] = []
    changes: list[tuple[int, int]] = []
    appended = 0
    over_capacity = 0
    end = scenario.duration_ms
    plans = plan(scenario, log, log_dir, label)
    if policy is not None:
        _refuse_used_logs(plans)
    for item in plans:
        network = SimNetwork(
            scenario,
            seed=seed,
            vantage=item.vantage,
            peer_indexes=item.peer_indexes,
            oracle=policy is None,
            oracle_bridge=bridge,
            probe_cost=probe_cost,
        )
        if policy is None:
            network.run_oracle(end)
            if progress is not None:
                progress(end)
        else:
            appended += _run_node(network, policy, item.log, end, progress)
        accounts.extend(p.account for p in network.peers.values())
        changes.extend(network.load_changes)
        over_capacity += network.over_capacity
    return compute(
        label,
        accounts,
        changes,
        events_appended=appended,
        wall_s=time.perf_counter() - started,
        over_capacity=over_capacity,
    )


def _refuse_used_logs(plans: list[VantagePlan]) -> None:
    used = []
    for item in plans:
        if item.log == ":memory:" or ("://" not in item.log and not Path(item.log).exists()):
            continue
        with EventLog.open(item.log) as log:
            if log.last_seq() > 0:
                used.append(item.log)
    if used:
        raise SimulationError(
            f"a simulation starts from an empty log; these already hold events: {', '.join(used)}"
        )


def _run_node(
    network: SimNetwork,
    policy: Policy,
    where: str,
    end: int,
    progress: Callable[[int], None] | None,
) -> int:
    clock = _SimClock()
    log = EventLog.open(where, clock=clock)
    try:
        node = Node(log, network, node="local", policy=policy, flush_every=FLUSH_EVERY)
        clock.node = node
        step = max(1, end // 50)
        mark = step
        while True:
            wake = node.next_wakeup()
            if wake is None or wake > end:
                break
            node.advance(max(wake, node.engine.now))
            if progress is not None and node.engine.now >= mark:
                progress(step)
                mark += step
        if progress is not None:
            progress(end - (mark - step))
        node.flush()
        network.finish(end)
        return node.appended
    finally:
        log.close()


class _SimClock:
    """The log's clock: the node's simulated time, so recorded times are deterministic."""

    node: Node | None = None

    def __call__(self) -> int:
        return 0 if self.node is None else self.node.engine.now
