"""Fuzzing: the replayable harness (harness.py) and the Hypothesis machine that
invents scenarios (machine.py)."""
