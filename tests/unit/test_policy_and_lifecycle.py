"""The policy value and the lifecycle's single definition."""

from __future__ import annotations

import pytest

from natrelay.core import lifecycle as lc
from natrelay.core.jitter import unit_hash
from natrelay.core.policy import Policy, RelayWeights
from natrelay.core.values import InvalidValue


def test_defaults_follow_formnet_and_wireguard() -> None:
    policy = Policy()
    assert policy.min_direct_attempts == 3
    assert policy.handshake_freshness_ms == 180_000
    assert policy.max_relay_load == 80
    assert RelayWeights() == RelayWeights(
        latency=0.3, latency_ceiling_ms=200, load=0.2, capability=0.1, region=0.1, reliability=0.3
    )


def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    policy = Policy(step_interval_ms=1000, backoff_factor=2, backoff_cap_ms=8000, backoff_jitter=0.1)
    gaps = [policy.round_gap_ms(n, 0.5) for n in range(6)]
    assert gaps == [1000, 2000, 4000, 8000, 8000, 8000]
    assert policy.round_gap_ms(0, 0.0) == 900
    assert policy.round_gap_ms(0, 0.999999) == 1099


def test_probe_gaps_grow_to_the_cap_and_never_stop() -> None:
    policy = Policy(upgrade_probe_interval_ms=2000, upgrade_probe_backoff=2, upgrade_probe_cap_ms=60_000)
    assert [policy.probe_gap_ms(n) for n in (0, 1, 4, 5, 1000)] == [2000, 4000, 32000, 60000, 60000]


def test_jitter_is_a_pure_function_of_its_inputs() -> None:
    assert unit_hash("peer", 3) == unit_hash("peer", 3)
    assert unit_hash("peer", 3) != unit_hash("peer", 4)
    assert 0 <= unit_hash("x") < 1


def test_policy_validates_and_round_trips_through_plain_data() -> None:
    policy = Policy(mode="relay_first", weights=RelayWeights(region=0.4))
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(InvalidValue, match="unknown policy fields: colour"):
        Policy.from_dict({"colour": 1})
    with pytest.raises(InvalidValue, match="mode="):
        Policy(mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="latency="):
        RelayWeights(latency=1.5)


def test_the_table_is_compiled_from_the_machine_and_agrees_with_it() -> None:
    """Every (state, trigger) pair: the table and a real transitions model agree."""
    for state in lc.STATES:
        for trigger in lc.TRIGGERS:
            model = type("Model", (), {})()
            machine = lc.build_machine(model)
            machine.set_state(state, model)
            try:
                getattr(model, trigger)()
                expected: str | None = model.state  # type: ignore[attr-defined]
            except Exception:
                expected = None
            if expected is None:
                with pytest.raises(lc.InvalidTransition):
                    lc.next_state(state, trigger)
            else:
                assert lc.next_state(state, trigger) == expected


def test_the_lifecycle_has_the_designed_paths() -> None:
    nxt = lc.next_state
    assert nxt(lc.PENDING, "start_direct_round") == lc.DIRECT_TRYING
    assert nxt(lc.DIRECT_TRYING, "become_relay_eligible") == lc.RELAY_ELIGIBLE
    assert nxt(lc.RELAY_ELIGIBLE, "select_relay_path") == lc.RELAY_CONNECTED
    assert nxt(lc.RELAY_CONNECTED, "upgrade") == lc.DIRECT_CONNECTED
    assert nxt(lc.DIRECT_CONNECTED, "lose_path") == lc.PENDING
    assert nxt(lc.RELAY_CONNECTED, "lose_path") == lc.RELAY_ELIGIBLE
    assert nxt(lc.REMOVED, "add") == lc.PENDING
    with pytest.raises(lc.InvalidTransition, match="'upgrade' is not allowed in state 'direct_trying'"):
        nxt(lc.DIRECT_TRYING, "upgrade")


def test_every_decision_type_maps_to_a_trigger() -> None:
    from natrelay.core.events import DECISIONS

    mapped = {cls.TYPE for cls in DECISIONS} - {"observation_rejected"}
    assert mapped <= set(lc.TRIGGER_OF_EVENT)
    assert set(lc.TRIGGER_OF_EVENT.values()) == set(lc.TRIGGERS)


def test_the_diagram_is_mermaid_with_every_state() -> None:
    text = lc.mermaid()
    assert "stateDiagram-v2" in text
    for state in lc.STATES:
        assert state in text
