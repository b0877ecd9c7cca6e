"""`natrelay whatif --sweep`: tune a policy on a recorded log.

Owns the grid (`key=v1,v2,...` per policy field, every combination), running
each point against the trace-driven world, the trade-off it reports — time
to first path p99, time relayed while a direct path was known to work, probe
cost (direct attempts plus relay connects) — the Pareto front of those three
(lower is better in each), the suggested point, the PNG and the suggested
policy file (adapters/policy_file format: `natrelay simulate --policy FILE`,
`natrelay whatif --policy FILE`, the agent's `policy_file`).

The suggestion is the Pareto point with the smallest sum of its three figures,
each scaled to the range the grid spans (0: the best in the grid, 1: the
worst); ties go to fewer extrapolated answers, then to grid order.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from natrelay.adapters.policy_file import write_policy
from natrelay.adapters.whatif.counterfactual import run
from natrelay.adapters.whatif.figures import Figures, measure
from natrelay.adapters.whatif.trace import Trace
from natrelay.core.policy import Policy, RelayWeights
from natrelay.core.values import InvalidValue

FIGURES = ("first_path_p99_s", "relayed_while_direct_s", "probe_cost")


class SweepError(ValueError):
    """A --sweep option is wrong; the message names it."""


@attrs.frozen
class Point:
    """One policy of the grid and what it did."""

    label: str
    settings: tuple[tuple[str, Any], ...]
    policy: Policy
    first_path_p99_s: float
    relayed_while_direct_s: float
    probe_cost: int
    extrapolated: int
    pareto: bool = False

    def figures(self) -> tuple[float, float, float]:
        return (self.first_path_p99_s, self.relayed_while_direct_s, float(self.probe_cost))


@attrs.frozen
class Sweep:
    keys: tuple[str, ...]
    recorded: Point
    points: tuple[Point, ...]
    suggested: Point
    png: Path | None
    policy_file: Path


def _field_types() -> dict[str, type]:
    types: dict[str, type] = {}
    for field in attrs.fields(Policy):
        if field.name in ("weights", "name"):
            continue
        types[field.name] = type(getattr(Policy(), field.name))
    for field in attrs.fields(RelayWeights):
        types["weights." + field.name] = type(getattr(RelayWeights(), field.name))
    return types


def _value(text: str, kind: type, key: str) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        expected = {int: "an integer", float: "a number", bool: "true or false"}[kind]
        raise SweepError(f"--sweep {key}: {text!r} is not {expected}") from None
    return text


def parse_grid(options: list[str]) -> dict[str, list[Any]]:
    """`key=v1,v2` options -> {key: [values]}; keys are Policy fields or weights.<field>."""
    types = _field_types()
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, sep, values = option.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise SweepError(f"--sweep {option!r}: expected key=v1,v2,...")
        if key not in types:
            raise SweepError(f"--sweep {key}: not a policy field (known: {', '.join(types)})")
        if key in grid:
            raise SweepError(f"--sweep {key}: given twice")
        grid[key] = list(dict.fromkeys(_value(v, types[key], key) for v in values.split(",") if v.strip()))
    return grid


def _apply(base: Policy, settings: tuple[tuple[str, Any], ...], name: str) -> Policy:
    changes: dict[str, Any] = {"name": name}
    weights: dict[str, Any] = {}
    for key, value in settings:
        if key.startswith("weights."):
            weights[key.split(".", 1)[1]] = value
        else:
            changes[key] = value
    if weights:
        changes["weights"] = attrs.evolve(base.weights, **weights)
    try:
        return attrs.evolve(base, **changes)
    except (InvalidValue, TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v}" for k, v in settings)
        raise SweepError(f"--sweep: {shown}: {exc}") from None


def _point(
    label: str, settings: tuple[tuple[str, Any], ...], policy: Policy, figures: Figures, extrapolated: int
) -> Point:
    return Point(
        label=label,
        settings=settings,
        policy=policy,
        first_path_p99_s=figures.percentile_first_path_s(0.99),
        relayed_while_direct_s=figures.relayed_while_direct_s,
        probe_cost=figures.probes + figures.relay_connects,
        extrapolated=extrapolated,
    )


def pareto(points: list[Point]) -> list[Point]:
    """Each point marked whether no other point is at least as good in all three figures and better in one."""
    marked = []
    for point in points:
        mine = point.figures()
        dominated = any(
            all(o <= m for o, m in zip(other.figures(), mine, strict=True)) and other.figures() != mine
            for other in points
        )
        marked.append(attrs.evolve(point, pareto=not dominated))
    return marked


def suggest(points: list[Point]) -> Point:
    """The Pareto point with the smallest range-scaled sum of the three figures."""
    columns = list(zip(*(p.figures() for p in points), strict=True))

    def scaled(value: float, column: tuple[float, ...]) -> float:
        finite = [v for v in column if math.isfinite(v)]
        if not math.isfinite(value):
            return 2.0
        low, high = min(finite), max(finite)
        return 0.0 if high == low else (value - low) / (high - low)

    front = [p for p in points if p.pareto]
    return min(
        front,
        key=lambda p: (
            sum(scaled(v, c) for v, c in zip(p.figures(), columns, strict=True)),
            p.extrapolated,
            points.index(p),
        ),
    )


def run_sweep(
    trace: Trace,
    grid: dict[str, list[Any]],
    *,
    base: Policy | None,
    out_dir: Path,
    console: Console,
    quiet: bool = False,
) -> Sweep:
    """Run every combination of the grid against the trace; write the PNG and the suggested policy."""
    recorded_policy = trace.policies[0].policy if trace.policies else Policy()
    start = base or recorded_policy
    keys = tuple(grid)
    combos = [tuple(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    policies = [_apply(start, combo, f"{start.name}-sweep-{i + 1}") for i, combo in enumerate(combos)]
    recorded = _point("recorded", (), recorded_policy, measure([e for _, e in trace.recorded], trace), 0)
    points: list[Point] = []
    with Progress(
        TextColumn("[bold]whatif sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task("sweep", total=len(combos))
        for combo, policy in zip(combos, policies, strict=True):
            result = run(trace, policy)
            extrapolated = sum(n for (_, s), n in result.world.answers.items() if s == "extrapolated")
            label = " ".join(f"{k}={v}" for k, v in combo)
            points.append(_point(label, combo, policy, measure(result.events, trace), extrapolated))
            progress.advance(task)
    points = pareto(points)
    best = suggest(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"natrelay whatif --sweep: the suggested policy for node {trace.node}\n"
        f"grid: {', '.join(f'{k}={v}' for k, v in grid.items())}\n"
        f"{best.label}: time to first path p99 {best.first_path_p99_s:.3f} s, relayed while direct known "
        f"{best.relayed_while_direct_s:.1f} s, probe cost {best.probe_cost}\n"
        f"recorded ({recorded_policy.name}): {recorded.first_path_p99_s:.3f} s, "
        f"{recorded.relayed_while_direct_s:.1f} s, {recorded.probe_cost}"
    )
    policy_file = write_policy(
        attrs.evolve(best.policy, name=f"{start.name}-tuned"), out_dir / "suggested-policy.toml", header
    )
    png = write_sweep_plot(points, recorded, best, out_dir / "whatif-sweep.png", trace.node)
    return Sweep(keys, recorded, tuple(points), best, png, policy_file)


def write_sweep_plot(points: list[Point], recorded: Point, best: Point, path: Path, node: str) -> Path | None:
    """p99 time to first path against relayed time, coloured by probe cost, the Pareto front marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    finite = [p for p in points if math.isfinite(p.first_path_p99_s)]
    costs = [p.probe_cost for p in finite] + [recorded.probe_cost]
    low, high = min(costs), max(costs)
    scatter = ax.scatter(
        [p.first_path_p99_s for p in finite],
        [p.relayed_while_direct_s for p in finite],
        c=[p.probe_cost for p in finite],
        cmap="viridis",
        vmin=low,
        vmax=high,
        s=36,
        zorder=2,
    )
    stacked: dict[tuple[float, float], int] = {}
    for point in finite:
        spot = (round(point.first_path_p99_s, 3), round(point.relayed_while_direct_s, 1))
        stacked[spot] = stacked.get(spot, 0) + 1
    for (x, y), count in stacked.items():
        if count > 1:  # policies with the same two figures hide each other: say how many
            ax.annotate(f"x{count}", (x, y), xytext=(6, -12), textcoords="offset points", fontsize=8)
    front = sorted((p for p in finite if p.pareto), key=lambda p: p.first_path_p99_s)
    ax.scatter(
        [p.first_path_p99_s for p in front],
        [p.relayed_while_direct_s for p in front],
        s=130,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.5,
        label="Pareto front",
        zorder=3,
    )
    if math.isfinite(recorded.first_path_p99_s):
        ax.scatter(
            [recorded.first_path_p99_s],
            [recorded.relayed_while_direct_s],
            marker="*",
            s=260,
            c=[recorded.probe_cost],
            cmap="viridis",
            vmin=low,
            vmax=high,
            edgecolors="black",
            label=f"recorded ({recorded.policy.name})",
            zorder=4,
        )
    if math.isfinite(best.first_path_p99_s):
        ax.scatter(
            [best.first_path_p99_s],
            [best.relayed_while_direct_s],
            marker="D",
            s=220,
            facecolors="none",
            edgecolors="darkorange",
            linewidths=2,
            label="suggested",
            zorder=5,
        )
    if math.isfinite(best.first_path_p99_s):
        ax.annotate(
            "suggested:\n" + best.label.replace(" ", "\n"),
            (best.first_path_p99_s, best.relayed_while_direct_s),
            xytext=(12, 12),
            textcoords="offset points",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "crimson"},
        )
    fig.colorbar(scatter, ax=ax, label="probe cost (direct attempts + relay connects)")
    ax.set_xlabel("time to first path, p99 (s)")
    ax.set_ylabel("time relayed while direct known to work (s)")
    ax.set_title(f"natrelay whatif --sweep, node {node}: {len(points)} policies")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep_json(result: Sweep) -> dict[str, Any]:
    def row(point: Point) -> dict[str, Any]:
        return {
            "label": point.label,
            "settings": dict(point.settings),
            "first_path_p99_s": point.first_path_p99_s if math.isfinite(point.first_path_p99_s) else None,
            "relayed_while_direct_s": point.relayed_while_direct_s,
            "probe_cost": point.probe_cost,
            "extrapolated_answers": point.extrapolated,
            "pareto": point.pareto,
        }

    return {
        "keys": list(result.keys),
        "recorded": row(result.recorded),
        "points": [row(p) for p in result.points],
        "suggested": row(result.suggested),
        "plot": None if result.png is None else str(result.png),
        "policy_file": str(result.policy_file),
    }


def render_sweep(result: Sweep, console: Console) -> None:
    table = Table(title=f"whatif sweep: {len(result.points)} policies (lower is better in each figure)")
    for key in result.keys:
        table.add_column(key, justify="right")
    for heading in ("first path p99", "relayed while\ndirect known", "probe cost", "extra-\npolated", ""):
        table.add_column(heading, justify="right")

    def figures(point: Point) -> list[str]:
        p99 = "never" if math.isinf(point.first_path_p99_s) else f"{point.first_path_p99_s:.3f} s"
        return [
            p99,
            f"{point.relayed_while_direct_s:,.1f} s",
            f"{point.probe_cost:,}",
            str(point.extrapolated),
        ]

    table.add_row(*(["[dim]recorded[/dim]"] + [""] * (len(result.keys) - 1)), *figures(result.recorded), "")
    for point in result.points:
        mark = "suggested" if point is result.suggested else ("pareto" if point.pareto else "")
        cells = [escape(str(v)) for _, v in point.settings]
        style = "bold" if point is result.suggested else None
        table.add_row(*cells, *figures(point), mark, style=style)
    console.print(table)
    if result.png is not None:
        console.print(f"plot: {result.png}")
    console.print(f"suggested policy: {result.policy_file} ({escape(result.suggested.label)})")
