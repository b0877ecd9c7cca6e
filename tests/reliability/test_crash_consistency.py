"""kill -9 at random moments: nothing committed is lost, no batch is half-written, replay agrees.

A node (tests/reliability/crash_node.py) appends observation+decision batches
in a subprocess; the test kills it with SIGKILL after a seeded random delay,
checks the log, restarts it, and does that again, dozens of times on one log.
After each kill:

- every row decodes, `seq` is gapless and strictly increasing, every stream's
  versions are gapless (`eventlog.check`);
- every committed batch is whole: re-deciding the observations gives exactly
  the recorded decisions, the last batch included (`replay.verify`), so no
  observation lacks a decision and no partial batch is visible;
- every seq the node reported committed is in the log (events lost: 0);
- the restarted node rebuilds to the state a fresh replay of the log gives
  (the digests match), and carries on past where it was killed;
- a snapshot plus the tail folds to the same state as a replay from seq 0.

`NATRELAY_CRASH_ITERATIONS` sets the number of kills (default 24, a modest
run for CI on two cores); `NATRELAY_CRASH_SEED` the seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs

from natrelay.core.engine import Engine
from natrelay.core.events import PolicySet
from natrelay.eventlog import EventLog
from natrelay.eventlog.check import check_log
from natrelay.eventlog.replay import node_events, rebuild, verify
from tests.reliability.conftest import natrelay
from tests.reliability.crash_node import NODE, digest

ITERATIONS = int(os.environ.get("NATRELAY_CRASH_ITERATIONS", "24"))
SEED = int(os.environ.get("NATRELAY_CRASH_SEED", "20240908"))
ROOT = Path(__file__).resolve().parents[2]


@attrs.define
class Run:
    """What one child process said before it died."""

    resumed_seq: int = -1
    resumed_digest: str = ""
    committed: list[int] = attrs.field(factory=list)


def run_and_kill(location: Path, seed: int, delay: float) -> Run:
    """Start the node, let it append for `delay` seconds after it resumed, SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.crash_node", str(location), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = Run()
    resumed = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            word, _, rest = line.partition(" ")
            if word == "resumed":
                seq, _, state = rest.strip().partition(" ")
                run.resumed_seq, run.resumed_digest = int(seq), state
                resumed.set()
            elif word == "committed":
                run.committed.append(int(rest))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not resumed.wait(0.05) and child.poll() is None:
            pass
        if not resumed.is_set():
            raise AssertionError(f"the node did not start: {child.stderr.read() if child.stderr else ''}")
        time.sleep(delay)
        assert child.poll() is None, f"the node died by itself: {child.stderr.read() if child.stderr else ''}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join(10)
    assert child.returncode == -signal.SIGKILL
    return run


def replayed_live(log: EventLog) -> dict[str, object]:
    """Feed the logged observations to a fresh engine, as a live node would: its state."""
    engine = Engine()
    for count, (_seq, _stream, event) in enumerate(node_events(log, NODE)):
        if event.KIND != "observation":
            continue
        if count == 0 and type(event) is PolicySet:
            engine = Engine(event.policy)
        engine.handle(event)
    return engine.state()


def test_sigkill_at_random_moments_loses_nothing_and_leaves_no_partial_batch(tmp_path: Path) -> None:
    location = tmp_path / "crash.sqlite"
    rng = random.Random(SEED)
    expected_digest: str | None = None
    last_seq = 0
    lost = 0
    kills = 0
    for iteration in range(ITERATIONS):
        run = run_and_kill(location, SEED + iteration, rng.uniform(0.0, 0.25))
        kills += 1
        # The restarted node rebuilt exactly the state a replay of the log gives.
        assert run.resumed_seq == last_seq
        if expected_digest is not None:
            assert run.resumed_digest == expected_digest
        with EventLog.open(str(location), create=False) as log:
            checked = check_log(log)
            assert checked.ok, [p.describe() for p in checked.problems]
            assert checked.rows == checked.last_seq  # gapless from 1
            present = checked.last_seq
            lost += sum(1 for seq in run.committed if seq > present)
            assert run.committed == sorted(set(run.committed))
            # It carried on: everything it committed comes after where the last run stopped.
            assert all(seq > last_seq for seq in run.committed)
            result = verify(log, NODE)
            assert result.ok, result.divergence
            engine, folded_to = rebuild(log, NODE, use_snapshot=True)
            from_zero, _ = rebuild(log, NODE, use_snapshot=False)
            assert folded_to == present
            assert engine.state() == from_zero.state()
            assert replayed_live(log) == from_zero.state()
            expected_digest = digest(from_zero.state())
        last_seq = present
    assert lost == 0
    assert kills == ITERATIONS
    assert last_seq > ITERATIONS  # the node made progress across the kills
    cli = natrelay("replay", str(location), "--verify")
    assert cli.returncode == 0, cli.stderr
    assert natrelay("replay", "--check", str(location)).returncode == 0
    print(f"crash consistency: {kills} kill -9, {last_seq} events committed, {lost} lost")
