"""The CI fuzz: the whole policy space, fixed seeds, every invariant and the decision oracle.

`TestLogTellsTheTruth` (test_log_truth.py) draws fresh seeds and keeps an example
database, which is right for finding new bugs but makes a CI run unrepeatable.
These runs are the repeatable half: each seed drives `NatrelayMachine` (every
rule, policies drawn from every field: hysteresis, backoff, the direct cache's
size and age, staleness, probing) for `CI_EXAMPLES` scenarios of 30 steps, with
no example database, so a failure here fails again on the same commit. About
three minutes on one free core (docs/fuzzing.md has the measured figure).

A fuzz run leaves nothing in the temporary directory: the machine's per-example
logs and `reproduce()`'s scratch log are removed, failing or not.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Verbosity

from natrelay.core import events as E
from natrelay.core.policy import Policy
from natrelay.tools.fuzz.harness import PEERS, Harness
from natrelay.tools.fuzz.machine import NatrelayMachine
from natrelay.tools.fuzz.runner import find_failure, reproduce

CI_SEEDS = (11, 12, 13, 14)
#: Scenarios per seed; NATRELAY_CI_FUZZ_EXAMPLES overrides (e.g. smaller for the mutation tool).
CI_EXAMPLES = int(os.environ.get("NATRELAY_CI_FUZZ_EXAMPLES", "250"))


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_the_whole_policy_space_on_a_fixed_seed(seed: int) -> None:
    ran, error, scenario = find_failure(
        NatrelayMachine, max_examples=CI_EXAMPLES, seed=seed, step_count=30, verbosity=Verbosity.quiet
    )
    assert error is None, (
        f"seed {seed}, after {ran} scenarios: {error}\n"
        f"policy: {scenario.policy if scenario else None}\nsteps: {scenario.steps if scenario else None}"
    )
    assert ran >= CI_EXAMPLES


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory of the process, pointed at an empty folder of this test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root


def test_fuzzing_leaves_no_folder_in_the_temp_dir(private_tmp: Path, tmp_path: Path) -> None:
    # What this test checks is the temp dir, whatever the scenarios find: judging the engine
    # is the seeded runs above (an open finding of seed 5 is in docs/fuzzing.md).
    ran, _error, _ = find_failure(
        NatrelayMachine, max_examples=10, seed=5, verbosity=Verbosity.quiet, shrink=False
    )
    assert ran >= 1
    harness = Harness(tmp_path / "scenario", Policy(min_direct_attempts=1))
    harness.observe(E.PeerAdded(at=0, peer=PEERS[0], candidates=("10.0.0.1:51820",)))
    harness.run({"op": "advance", "by": 5_000})
    harness.close()
    passing = tmp_path / "passing.json"
    harness.scenario.save(passing)
    assert reproduce(passing) is None
    failing = tmp_path / "failing.json"
    harness.scenario.steps.append({"op": "no such step"})
    harness.scenario.save(failing)
    assert reproduce(failing) is not None
    assert sorted(p.name for p in private_tmp.iterdir()) == []
