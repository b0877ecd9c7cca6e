"""The properties bite: each deliberately broken engine fails them, shrunk to a short scenario.

A property that passes on broken code is a defect. Each mutant (tests/property/
mutants.py) is patched in for one run of the state machine with a fixed seed;
the test asserts that an invariant fails and that Hypothesis shrinks the
failure to at most MAX_STEPS concrete steps. Slow (shrinking replays hundreds of
scenarios): deselect with -m "not slow".
"""

from __future__ import annotations

import pytest
from hypothesis import Verbosity

from natrelay.adapters.fuzzing import InvariantViolation
from natrelay.tools.fuzzing import find_failure

from .mutants import MUTANTS

MAX_STEPS = 12


def _violations(error: BaseException) -> list[InvariantViolation]:
    if isinstance(error, BaseExceptionGroup):
        return [e for e in error.exceptions if isinstance(e, InvariantViolation)]
    return [error] if isinstance(error, InvariantViolation) else []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_properties_catch_the_mutant_and_shrink_it(name: str) -> None:
    with MUTANTS[name]():
        examples, error, scenario = find_failure(
            max_examples=400, seed=1, step_count=30, verbosity=Verbosity.quiet
        )
    assert error is not None, f"{name}: {examples} scenarios passed on a broken engine"
    assert _violations(error), f"{name}: failed, but not on an invariant: {error!r}"
    assert scenario is not None
    assert len(scenario.steps) <= MAX_STEPS, f"{name}: shrunk only to {len(scenario.steps)} steps"
