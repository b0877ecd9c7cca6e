"""Every (state, trigger) pair: a valid transition matching the transitions Machine, or InvalidTransition.

hyper-h2's test_state_machines.py, for the peer lifecycle: Hypothesis draws any
state and any trigger; the compiled table (`next_state`) must agree with a real
`transitions` Machine put in that state — same destination, or both refuse.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transitions import MachineError

from natrelay.core import lifecycle as lc


class _Model:
    state: str


def _machine_says(state: str, trigger: str) -> str | None:
    model = _Model()
    machine = lc.build_machine(model=model)
    machine.set_state(state, model)
    try:
        getattr(model, trigger)()
    except MachineError:
        return None
    return model.state


@given(state=st.sampled_from(lc.STATES), trigger=st.sampled_from(lc.TRIGGERS))
def test_every_state_and_trigger_is_a_machine_transition_or_invalid(state: str, trigger: str) -> None:
    expected = _machine_says(state, trigger)
    if expected is None:
        with pytest.raises(lc.InvalidTransition) as raised:
            lc.next_state(state, trigger)
        assert (raised.value.state, raised.value.trigger) == (state, trigger)
    else:
        assert lc.next_state(state, trigger) == expected


@pytest.mark.parametrize("state", lc.STATES)
@pytest.mark.parametrize("trigger", lc.TRIGGERS)
def test_the_table_covers_all_pairs_exactly_like_the_machine(state: str, trigger: str) -> None:
    # The same claim without sampling: 6 states x the triggers, every pair once.
    expected = _machine_says(state, trigger)
    assert lc.TABLE.get((state, trigger)) == expected


def test_every_trigger_an_event_fires_exists_and_every_state_is_reachable() -> None:
    assert set(lc.TRIGGER_OF_EVENT.values()) == set(lc.TRIGGERS)
    reachable = {lc.PENDING}
    frontier = [lc.PENDING]
    while frontier:
        state = frontier.pop()
        for trigger in lc.TRIGGERS:
            found = lc.TABLE.get((state, trigger))
            if found is not None and found not in reachable:
                reachable.add(found)
                frontier.append(found)
    assert reachable == set(lc.STATES)
