"""Recovery change by change (issue 13): natrelay against each anchor on the same network changes.

`python -m natrelay.tools.bench_recovery [--seed S] [SCENARIO ...]` runs natrelay and the
anchor presets on each built-in scenario (default: every one with network changes) and
prints one markdown row per anchor: recovery p50/p99 of both on the remote network changes
both had to recover from (`metrics.paired`), how many of those natrelay recovered from
faster and slower, and the changes only one of them lost a path to. The same for failovers
after a relay went down. A run's own percentiles (`natrelay simulate --compare`) mix
different sets of changes: a hard pair natrelay takes direct loses its path to a rebinding,
while an anchor that relays the pair keeps its relay session.
"""

from __future__ import annotations

import argparse
import math
import sys

from natrelay.adapters.sim.metrics import Paired, RunMetrics, paired
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core.presets import PRESETS, preset

#: The built-ins with network changes (the others have nothing to recover from).
CHANGING = ("wake", "rebind", "relay-outage", "lan", "mesh", "matrix")
ANCHORS = tuple(name for name in PRESETS if name != "natrelay")


def _s(value: float) -> str:
    return "-" if math.isnan(value) else "never" if math.isinf(value) else f"{value:.3f} s"


def row(scenario: str, kind: str, anchor: str, pair: Paired) -> str:
    return (
        f"| {scenario} | {kind} | {anchor} | {pair.common} | {_s(pair.ours_p50_s)} | {_s(pair.theirs_p50_s)} "
        f"| {_s(pair.ours_p99_s)} | {_s(pair.theirs_p99_s)} | {pair.faster} / {pair.slower} "
        f"| {pair.only_ours} / {pair.only_theirs} |"
    )


def compare(scenario_name: str, seed: int) -> list[str]:
    """The rows of one scenario: each anchor against natrelay, recoveries then failovers."""
    scenario = load_scenario(scenario_name)
    ours = run_policy(scenario, preset("natrelay"), seed=seed)
    runs: dict[str, RunMetrics] = {name: run_policy(scenario, preset(name), seed=seed) for name in ANCHORS}
    rows = []
    for kind in ("recovery", "failover"):
        for anchor, theirs in runs.items():
            pair = paired(ours, theirs, kind)
            if pair.common or pair.only_ours or pair.only_theirs:
                rows.append(row(scenario_name, kind, anchor, pair))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m natrelay.tools.bench_recovery")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("scenarios", nargs="*", default=list(CHANGING))
    args = parser.parse_args(argv)
    print(
        "| scenario | change | anchor | common changes | natrelay p50 | anchor p50 | natrelay p99 "
        "| anchor p99 | natrelay faster / slower | only natrelay / only anchor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.scenarios:
        for line in compare(name, args.seed):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
