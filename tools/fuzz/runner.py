"""Running the fuzzing machine: the Hypothesis profiles, and a runner outside pytest.

Owns the profiles (`fast` for CI, `deep` for long runs) with their example
database under the user's cache directory, never in the repository; and
`fuzz()`, `find_failure()`, `save_failure()` and `reproduce()`, which the
`natrelay fuzz` command and the tests share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import get_state_machine_test

from natrelay.tools.fuzz.harness import Scenario, replay_scenario
from natrelay.tools.fuzz.machine import NatrelayMachine, RunRecord

PROFILE_ENV = "NATRELAY_HYPOTHESIS_PROFILE"


def cache_dir() -> Path:
    """natrelay's cache directory: $XDG_CACHE_HOME/natrelay, else ~/.cache/natrelay."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "natrelay"


def example_database() -> DirectoryBasedExampleDatabase:
    return DirectoryBasedExampleDatabase(str(cache_dir() / "hypothesis"))


def register_profiles() -> str:
    """Register `fast` and `deep`; load the one named by $NATRELAY_HYPOTHESIS_PROFILE (default fast)."""
    common: dict[str, Any] = {
        "deadline": None,
        "database": example_database(),
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("fast", max_examples=25, stateful_step_count=30, **common)
    settings.register_profile("deep", max_examples=2000, stateful_step_count=80, **common)
    name = os.environ.get(PROFILE_ENV, "fast")
    settings.load_profile(name)
    return name


# ---------------------------------------------------------------- the runner


@attrs.define
class Failure:
    """A failing scenario, shrunk, saved where `natrelay fuzz --reproduce` finds it."""

    error: str
    steps: int
    scenario_file: Path | None
    log_file: Path | None


@attrs.define
class FuzzResult:
    examples: int
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures


@contextmanager
def counting(on_example: Callable[[], None] | None = None) -> Iterator[RunRecord]:
    """A fresh run record for the machine (examples counted, last scenario kept)."""
    saved = NatrelayMachine.record
    NatrelayMachine.record = RunRecord(on_example=on_example)
    try:
        yield NatrelayMachine.record
    finally:
        NatrelayMachine.record = saved


def find_failure(
    machine: type[NatrelayMachine] = NatrelayMachine,
    *,
    max_examples: int,
    seed: int | None = None,
    step_count: int = 30,
    database: Any = None,
    on_example: Callable[[], None] | None = None,
    verbosity: Verbosity = Verbosity.normal,
    shrink: bool = True,
) -> tuple[int, BaseException | None, Scenario | None]:
    """Run the machine; return (examples run, the error, the shrunk scenario) or no error.

    `shrink=False` stops at the first failing scenario as found (a catch, not a minimal one).
    """
    options: dict[str, Any] = {
        "max_examples": max_examples,
        "stateful_step_count": step_count,
        "deadline": None,
        "database": database,
        "suppress_health_check": list(HealthCheck),
        "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
        + ([Phase.shrink] if shrink else []),
        "print_blob": False,
        "verbosity": verbosity,
    }
    with counting(on_example) as record:
        test = get_state_machine_test(machine, settings=settings(**options))
        if seed is not None:
            test = hypothesis_seed(seed)(test)
        try:
            test()
        except Exception as exc:  # a failure of the engine is whatever it raised
            return record.examples, exc, record.last
        return record.examples, None, None


def save_failure(scenario: Scenario, error: BaseException, out: Path, index: int) -> Failure:
    """Write the shrunk scenario and its replayable log under `out/failure-<index>/`."""
    target = out / f"failure-{index}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    scenario.failure = f"{type(error).__name__}: {error}"
    scenario_file = target / "scenario.json"
    scenario.save(scenario_file)
    with contextlib.suppress(Exception):  # the failure, reproduced from the file: expected
        replay_scenario(scenario, target)
    return Failure(scenario.failure, len(scenario.steps), scenario_file, target / "fuzz.db")


def reproduce(scenario_file: Path, directory: Path | None = None) -> BaseException | None:
    """Replay a scenario file on a fresh log; return the error it raises, or None."""
    scenario = Scenario.load(scenario_file)
    if directory is not None:
        try:
            replay_scenario(scenario, directory)
        except Exception as exc:
            return exc
        return None
    # No directory asked for: the log is scratch, removed whatever happens.
    with tempfile.TemporaryDirectory(prefix="natrelay-reproduce-") as work:
        try:
            replay_scenario(scenario, Path(work))
        except Exception as exc:
            return exc
    return None


def fuzz(
    *,
    examples: int,
    seed: int | None,
    time_budget: float | None,
    out: Path,
    on_example: Callable[[], None] | None = None,
    step_count: int = 30,
) -> FuzzResult:
    """Run up to `examples` scenarios (in chunks, stopping at the time budget); save failures."""
    started = time.monotonic()
    ran = 0
    chunk = 25
    index = 0
    failures: list[Failure] = []
    database = example_database()
    while ran < examples:
        if time_budget is not None and time.monotonic() - started >= time_budget:
            break
        size = min(chunk, examples - ran)
        chunk_seed = None if seed is None else seed + index
        count, error, scenario = find_failure(
            max_examples=size,
            seed=chunk_seed,
            step_count=step_count,
            database=database,
            on_example=on_example,
            verbosity=Verbosity.quiet,
        )
        ran += count
        index += 1
        if error is not None:
            if scenario is not None:
                failures.append(save_failure(scenario, error, out, len(failures) + 1))
            else:
                failures.append(Failure(f"{type(error).__name__}: {error}", 0, None, None))
            break
    return FuzzResult(ran, failures)
