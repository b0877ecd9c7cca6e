"""`natrelay simulate`: the main job, and the side-by-side path-quality benchmark.

Owns the command's options, the progress bar, the summary and comparison
tables, the JSON report and the PNG. The simulation itself lives in
adapters/sim/; this module only runs it and shows the results.

- `natrelay simulate`: the built-in `mesh` scenario with natrelay's default
  policy on a SQLite log file, compared with the oracle; prints where the log
  and the plot are, so `status`, `explain`, `timeline` and `replay --verify`
  can follow.
- `natrelay simulate --compare`: every policy (and the oracle) on the same
  seeded scenario (default: the built-in `matrix`), one table, ratios to the oracle.

A run never carries on from a previous one: the log files this run writes (one
per local NAT of the scenario, `run.log_files`) are removed first, and the
report names exactly those files (docs/scenarios.md, "Where the logs go").
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import attrs
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from natrelay.adapters.policy_file import load_policy
from natrelay.adapters.sim.metrics import RunMetrics
from natrelay.adapters.sim.run import ORACLE, SimulationError, log_files, run_policy
from natrelay.adapters.sim.scenario import Scenario, ScenarioError, builtin_scenarios, load_scenario
from natrelay.adapters.sim.sim_model import PROBE_COSTS
from natrelay.core.presets import PRESETS, preset
from natrelay.tools.cli.common import CliError

DEFAULT_SEED = 7
OUT_DIR = Path("natrelay-sim")

#: (column title, metric attribute, format, lower is better)
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("connected\n(all)", "connectivity", "pct", False),
    ("connected\n(possible)", "connectivity_possible", "pct", False),
    ("connected\ntime", "connected_time_share", "pct2", False),
    ("ttfp p50", "ttfp_p50_s", "s", True),
    ("ttfp p95", "ttfp_p95_s", "s", True),
    ("ttfp p99", "ttfp_p99_s", "s", True),
    ("to direct\np50", "ttdp_p50_s", "s", True),
    ("to direct\np95", "ttdp_p95_s", "s", True),
    ("relayed while\ndirect existed", "relayed_share_while_direct_possible", "pct3", True),
    ("recovery\np50", "recovery_p50_s", "s", True),
    ("recovery\np99", "recovery_p99_s", "s", True),
    ("failover\np50", "failover_p50_s", "s", True),
    ("failover\np99", "failover_p99_s", "s", True),
    ("blackout", "blackout_share", "pct3", True),
    ("switches /\npeer-hour", "switches_per_peer_hour", "f2", True),
    ("peak relay\nsessions", "peak_relay_load", "int", True),
    ("over\ncapacity", "over_capacity_events", "int", True),
    ("events", "events_appended", "int", True),
    ("wall", "wall_s", "s1", True),
)


def _fmt(value: float, kind: str) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "pct2":
        return f"{100 * value:.2f} %"
    if kind == "pct3":
        return f"{100 * value:.3f} %"
    if kind == "s":
        return f"{value:.3f} s"
    if kind == "s1":
        return f"{value:.1f} s"
    if kind == "f2":
        return f"{value:.2f}"
    return f"{int(value):,}"


def _ratio(value: float, oracle: float) -> str:
    if not (math.isfinite(value) and math.isfinite(oracle)) or oracle == 0:
        return ""
    return f"\n[dim]x{value / oracle:.2f}[/dim]"


def metrics_table(title: str, rows: list[RunMetrics]) -> Table:
    """One row per policy; each cell also as a ratio to the oracle's row."""
    oracle = next((row for row in rows if row.name == ORACLE), None)
    table = Table(title=title, show_lines=True)
    table.add_column("policy", style="bold")
    for heading, _, _, _ in COLUMNS:
        table.add_column(heading, justify="right")
    for row in rows:
        cells = [row.name]
        for _, attr, kind, _ in COLUMNS:
            value = getattr(row, attr)
            cell = _fmt(value, kind)
            if oracle is not None and row is not oracle and attr not in ("events_appended", "wall_s"):
                cell += _ratio(value, getattr(oracle, attr))
            cells.append(cell)
        table.add_row(*cells)
    return table


def write_plot(rows: list[RunMetrics], path: Path, scenario: Scenario) -> Path | None:
    """The CDF of time to first path per policy, and relay sessions over time; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (cdf, load) = plt.subplots(1, 2, figsize=(13, 4.8))
    for row in rows:
        samples = sorted(s for s in row.ttfp_samples if math.isfinite(s))
        total = len(row.ttfp_samples)
        if samples and total:
            ys = [(i + 1) / total for i in range(len(samples))]
            cdf.step([max(s, 1e-3) for s in samples], ys, where="post", label=row.name)
        series = row.relay_series
        if series:
            xs = [0.0] + [at / 60_000 for at, _ in series] + [scenario.duration_ms / 60_000]
            ys2 = [0] + [level for _, level in series] + [series[-1][1]]
            load.step(xs, ys2, where="post", label=row.name)
    cdf.set_xscale("log")
    cdf.set_xlabel("time to first working path (s, log)")
    cdf.set_ylabel("share of peers with a possible path")
    cdf.set_title("Time to first path (CDF)")
    cdf.grid(True, alpha=0.3)
    cdf.legend()
    load.set_xlabel("simulated time (min)")
    load.set_ylabel("open relay sessions")
    load.set_title("Relay use over time")
    load.grid(True, alpha=0.3)
    load.legend()
    fig.suptitle(f"natrelay simulate: {scenario.name} ({scenario.peers + len(scenario.peer_list)} peers)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: The hard-NAT table (issue 16): (column title, metric attribute, format).
HARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("hard\npairs", "hard_pairs", "int"),
    ("went\ndirect", "hard_direct_share", "pct"),
    ("attempts", "hard_attempts", "int"),
    ("met within\n10 s", "hard_met_10s_share", "pct"),
    ("probes per\nsuccess", "probes_per_success", "f2"),
    ("to direct\np50", "hard_ttd_p50_s", "s"),
    ("to direct\np95", "hard_ttd_p95_s", "s"),
)


def hard_nat_table(rows: list[RunMetrics]) -> Table:
    """Per policy: the peers a plain punch cannot reach directly, and what the birthday punch did."""
    table = Table(title="Hard NATs (issue 16): pairs a plain punch cannot open", show_lines=False)
    table.add_column("policy", style="bold")
    for heading, _, _ in HARD_COLUMNS:
        table.add_column(heading, justify="right")
    for row in rows:
        table.add_row(row.name, *(_fmt(getattr(row, attr), kind) for _, attr, kind in HARD_COLUMNS))
    return table


def _load(scenario: str | None, default: str, peers: int | None, duration: float | None) -> Scenario:
    try:
        loaded = load_scenario(scenario or default)
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario") from None
    return loaded.with_overrides(
        peers=peers, duration_ms=None if duration is None else round(duration * 1000)
    )


def _remove_logs(paths: tuple[str, ...]) -> None:
    """The simulation writes fresh logs: remove exactly the files a previous run left under these names."""
    for path in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(f"{path}{suffix}")
            if candidate.exists():
                candidate.unlink()


def register(app: typer.Typer) -> None:
    """Add `simulate` to the natrelay command line."""

    @app.command()
    def simulate(
        compare: Annotated[
            bool, typer.Option("--compare", help="Run every policy and the oracle; one table.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
        scenario: Annotated[
            str | None,
            typer.Option(
                "--scenario", help="A .toml/.json file or a built-in (see --list; docs/scenarios.md)."
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="The seed: same seed, same log.")] = DEFAULT_SEED,
        peers: Annotated[int | None, typer.Option("--peers", help="Override the peer count.")] = None,
        duration: Annotated[
            float | None, typer.Option("--duration", help="Override the simulated seconds.")
        ] = None,
        policy: Annotated[
            str,
            typer.Option(
                "--policy", help=f"Policy of the main run: {', '.join(PRESETS)}, or a TOML policy file."
            ),
        ] = "natrelay",
        out_dir: Annotated[
            Path, typer.Option("--out", help="Where the log and the plot are written.")
        ] = OUT_DIR,
        plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write the PNG.")] = True,
        probe_cost: Annotated[
            str,
            typer.Option(
                "--probe-cost",
                help="What a direct probe of a connected peer costs the data plane: hitless (beside "
                "the live path) or blackout (today's agent: WireGuard points at the candidate).",
            ),
        ] = "hitless",
        hard_nat: Annotated[
            bool | None,
            typer.Option(
                "--hard-nat/--no-hard-nat",
                help="Hard-NAT (birthday) attempts on or off for the main run's policy (natrelay's "
                "default: on). With --compare, --no-hard-nat adds a row natrelay-no-hardnat beside "
                "natrelay's, to show what the attempts bring (docs/hard-nat.md).",
            ),
        ] = None,
        list_builtins: Annotated[
            bool, typer.Option("--list", help="List the built-in scenarios and exit.")
        ] = False,
    ) -> None:
        """Simulate a WireGuard mesh behind NATs; --compare benchmarks every policy on it."""
        if list_builtins:
            for name, description in builtin_scenarios():
                typer.echo(f"{name:<14} {description}")
            return
        if probe_cost not in PROBE_COSTS:
            raise typer.BadParameter(
                f"{probe_cost!r}: expected one of {', '.join(PROBE_COSTS)}", param_hint="--probe-cost"
            )
        try:
            chosen = [preset(name) for name in PRESETS] if compare else [load_policy(policy)]
        except ValueError as exc:  # PolicyFileError too: it names the file and the key
            raise typer.BadParameter(str(exc), param_hint="--policy") from None
        if hard_nat is False and compare:
            without = attrs.evolve(preset("natrelay"), hard_nat_enabled=False, name="natrelay-no-hardnat")
            chosen.append(without)
        elif hard_nat is not None and not compare and chosen[0].hard_nat_enabled != hard_nat:
            suffix = "hardnat" if hard_nat else "no-hardnat"
            chosen = [attrs.evolve(chosen[0], hard_nat_enabled=hard_nat, name=f"{chosen[0].name}-{suffix}")]
        loaded = _load(scenario, "matrix" if compare else "mesh", peers, duration)
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = None
        logs: tuple[str, ...] = ()
        if not compare:
            log_path = out_dir / f"{loaded.name}.db"
            logs = log_files(loaded, str(log_path))
            _remove_logs(logs)
        vantages = len(loaded.local_nats)
        total = loaded.duration_ms * vantages * (len(chosen) + 1)
        console = Console(stderr=True)
        rows: list[RunMetrics] = []
        with Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            disable=as_json or not console.is_terminal,
        ) as progress:
            task = progress.add_task("oracle", total=total)

            def advance(ms: int) -> None:
                progress.advance(task, ms)

            rows.append(run_policy(loaded, None, seed=seed, progress=advance, probe_cost=probe_cost))
            for item in chosen:
                progress.update(task, description=item.name)
                log = str(log_path) if log_path is not None else None
                try:
                    rows.append(
                        run_policy(loaded, item, seed=seed, log=log, progress=advance, probe_cost=probe_cost)
                    )
                except SimulationError as exc:
                    raise CliError(str(exc)) from None
        png = None
        if plot:
            png = write_plot(rows, out_dir / f"{loaded.name}{'-compare' if compare else ''}.png", loaded)
            if png is None:
                hint = "no plot: matplotlib is not installed (pip install 'natrelay[sim]')"
                console.print(hint, markup=False)
        if as_json:
            report: dict[str, Any] = {
                "scenario": loaded.name,
                "source": loaded.source,
                "seed": seed,
                "probe_cost": probe_cost,
                "units": 'seconds; shares are fractions; "inf": never (infinite); null: no data',
                "peers": loaded.peers + len(loaded.peer_list),
                "duration_s": loaded.duration_ms / 1000,
                "policies": [row.to_json() for row in rows],
                "log": logs[0] if len(logs) == 1 else None,
                "logs": [
                    {"local_nat": nat, "path": path}
                    for nat, path in zip(loaded.local_nats, logs, strict=False)  # no logs with --compare
                ],
                "plot": None if png is None else str(png),
            }
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
            return
        out = Console(highlight=False, width=None if sys.stdout.isatty() else 220)
        count = loaded.peers + len(loaded.peer_list)
        title = (
            f"{loaded.name}: {count} peers, {loaded.duration_ms / 60_000:.0f} simulated min, "
            f"{vantages} local NAT type{'s' if vantages > 1 else ''}, seed {seed}, {probe_cost} probes"
        )
        out.print(metrics_table(title, rows))
        if any(row.hard_pairs for row in rows):
            out.print(hard_nat_table(rows))
        if loaded.description:
            out.print(f"[dim]{loaded.description} ({loaded.source})[/dim]")
        if png is not None:
            out.print(f"plot: {png}", markup=False)
        if len(logs) > 1:
            out.print(f"logs: one per local NAT: {', '.join(logs)}", markup=False)
        if logs:
            where = logs[0]
            if len(logs) == 1:
                out.print(f"log:  {where}", markup=False)
            out.print(
                f"next: natrelay status {where} · natrelay timeline {where} · natrelay explain {where} <peer>"
                f" · natrelay replay {where} --verify · natrelay plot {where} [<peer>]",
                markup=False,
            )
