"""`natrelay fuzz`: run the stateful scenarios outside pytest, shrink failures, save them replayable.

Owns only the command line: the scenarios, profiles and runner live in
`natrelay.tools.fuzz.machine`, the harness and invariants in
`natrelay.tools.fuzz.harness`. Each failure is written under `--out` as
`failure-N/scenario.json` (the shrunk steps) and `failure-N/fuzz.db` (the log
they produce, for `natrelay replay`, `explain`, `timeline`);
`natrelay fuzz --reproduce failure-N/scenario.json` replays it from the file
alone. Exit 0: nothing failed; 1: something did; 2: bad usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from natrelay.tools.cli.common import require_extra


def register(app: typer.Typer) -> None:
    app.command(name="fuzz")(fuzz)


def fuzz(
    examples: Annotated[int, typer.Option("--examples", min=1, help="Scenarios to run at most.")] = 200,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for a repeatable run.")] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", min=0, help="Stop starting new scenarios after SECONDS.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where failing scenarios are written.")] = Path(
        "fuzz-failures"
    ),
    steps: Annotated[int, typer.Option("--steps", min=1, help="Steps per scenario at most.")] = 30,
    reproduce: Annotated[
        Path | None,
        typer.Option("--reproduce", help="Replay a saved scenario.json instead of fuzzing."),
    ] = None,
) -> None:
    """Fuzz the engine and its log with Hypothesis; save each shrunk failure as a log plus a scenario."""
    require_extra("hypothesis", "fuzz", "fuzz")
    from natrelay.tools.fuzz import runner as fuzzing

    console = Console(highlight=False)
    if reproduce is not None:
        _reproduce(console, reproduce, out)
        return
    fuzzing.register_profiles()
    with Progress(
        TextColumn("fuzzing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("scenarios", total=examples)
        result = fuzzing.fuzz(
            examples=examples,
            seed=seed,
            time_budget=time_budget,
            out=out,
            step_count=steps,
            on_example=lambda: progress.advance(task),
        )
    console.print(f"{result.examples} examples run, {len(result.failures)} failed")
    for failure in result.failures:
        console.print(f"[red]failure[/red] ({failure.steps} steps): {escape(failure.error)}")
        if failure.scenario_file is not None:
            console.print(f"  scenario: {escape(str(failure.scenario_file))}")
            console.print(f"  log:      {escape(str(failure.log_file))}")
            console.print(f"  again:    natrelay fuzz --reproduce {escape(str(failure.scenario_file))}")
    raise typer.Exit(0 if result.ok else 1)


def _reproduce(console: Console, scenario_file: Path, out: Path) -> None:
    from natrelay.tools.fuzz.runner import reproduce

    if not scenario_file.is_file():
        console.print(f"natrelay: no scenario file {escape(str(scenario_file))}", style="red")
        raise typer.Exit(2)
    target = out / f"reproduce-{scenario_file.parent.name or 'scenario'}"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    error = reproduce(scenario_file, target)
    log = target / "fuzz.db"
    if error is None:
        console.print(f"the scenario ran cleanly; its log: {escape(str(log))}")
        raise typer.Exit(0)
    console.print(f"[red]reproduced[/red]: {escape(f'{type(error).__name__}: {error}')}")
    console.print(f"its log: {escape(str(log))}")
    raise typer.Exit(1)
