"""The trace-driven world built from a natrelay run reproduces that run under the recorded policy.

Replaying the recorded policy against the world of its own log must give the
log back event for event — every observation at its time and place, every
decision — seq by seq, on several scenarios, seeds and recorded policies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import record, scenarios, trace_of

from natrelay.adapters.whatif.counterfactual import run
from natrelay.core.codec import to_payload
from natrelay.core.presets import preset

CASES = [
    (scenario, seed, policy)
    for scenario in scenarios()
    for seed in (1, 2)
    for policy in ("natrelay", "netbird")
] + [("mesh", 5, "formnet"), ("outage", 3, "tailscale"), ("outage", 4, "innernet")]


@pytest.mark.parametrize(("scenario", "seed", "policy"), CASES)
def test_the_recorded_policy_replays_its_log_seq_by_seq(
    tmp_path: Path, scenario: str, seed: int, policy: str
) -> None:
    path = record(scenarios()[scenario], preset(policy), seed, tmp_path / "run.db")
    trace = trace_of(path)
    assert trace.verified
    replay = run(trace)
    decisions = 0
    for index, (seq, recorded) in enumerate(trace.recorded):
        assert index < len(replay.events), f"the replay ends before seq {seq} ({recorded.TYPE})"
        got = replay.events[index]
        assert got == recorded, (
            f"seq {seq}: the log records {recorded.TYPE} {to_payload(recorded)}, "
            f"the replay gives {got.TYPE} {to_payload(got)}"
        )
        decisions += recorded.KIND == "decision"
    assert len(replay.events) == len(trace.recorded), "the replay goes on after the log ends"
    assert decisions > 20
    # every command of the replay was answered from the record: nothing extrapolated
    assert not replay.world.extrapolated_by_peer
