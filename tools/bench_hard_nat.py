"""The hard-NAT table of BENCHMARKS.md (issue 16): each hard pairing alone, on the simulator.

`python -m natrelay.tools.bench_hard_nat [--peers N] [--seed S]` runs natrelay's preset with
hard-NAT attempts on, once per pairing (local NAT x remote NAT) and symmetric port rule,
on the built-in `hardnat` scenario narrowed to that pairing, and prints one markdown row
each. Everything it reports comes from the simulator's packet-level NAT model.
"""

from __future__ import annotations

import argparse
import math
import sys

import attrs

from natrelay.adapters.sim.metrics import RunMetrics
from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core.presets import preset

PAIRINGS = (
    ("port_restricted_cone", "symmetric"),
    ("symmetric", "port_restricted_cone"),
    ("firewall", "symmetric"),
    ("symmetric", "firewall"),
    ("symmetric", "symmetric"),
)


def run_pairing(local: str, remote: str, allocation: str, peers: int, seed: int) -> RunMetrics:
    """natrelay with hard-NAT attempts on, every peer of one pairing, 5 simulated minutes."""
    base = load_scenario("hardnat")
    scenario = attrs.evolve(
        base,
        local_nats=(local,),
        mix=((remote, 1.0),),
        peers=peers,
        duration_ms=300_000,
        ports=attrs.evolve(base.ports, allocation=allocation),  # type: ignore[arg-type]
    )
    policy = preset("natrelay")  # hard-NAT attempts are on in natrelay's default
    return run_policy(scenario, policy, seed=seed)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f} %"


def _s(value: float) -> str:
    return "-" if math.isnan(value) else "never" if math.isinf(value) else f"{value:.2f} s"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m natrelay.tools.bench_hard_nat")
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(
        "| local NAT | remote NAT | symmetric ports | peers | attempts | met within 10 s "
        "| went direct | probes per success | to direct p50 | p95 |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for allocation in ("random", "sequential"):
        for local, remote in PAIRINGS:
            peers = args.peers // 2 if "symmetric" == local == remote else args.peers
            row = run_pairing(local, remote, allocation, peers, args.seed)
            probes = "-" if math.isnan(row.probes_per_success) else f"{row.probes_per_success:.0f}"
            print(
                f"| {local} | {remote} | {allocation} | {row.hard_pairs} | {row.hard_attempts} "
                f"| {_pct(row.hard_met_10s_share)} | {_pct(row.hard_direct_share)} | {probes} "
                f"| {_s(row.hard_ttd_p50_s)} | {_s(row.hard_ttd_p95_s)} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
