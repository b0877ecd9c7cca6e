"""Every (state, trigger) pair: the transition the design names, or InvalidTransition.

`EXPECTED` is written by hand, once, from the design (the README's lifecycle
diagram and its "Decisions we took" section), not derived from
core/lifecycle.py: comparing the compiled table with the Machine it was compiled
from could only find a bug in the compiler, never in the lifecycle. Both the
compiled table (`next_state`) and a real `transitions` Machine put in each
state must say exactly what the design says (hyper-h2's test_state_machines.py,
for the peer lifecycle).
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


P, T, E, R, D, X = (
    "pending",
    "direct_trying",
    "relay_eligible",
    "relay_connected",
    "direct_connected",
    "removed",
)
_ = None  # not allowed: InvalidTransition

#: The design's lifecycle, one row per trigger, one column per state:
#:                          pending  trying   eligible relayed  direct   removed
EXPECTED_ROWS: dict[str, tuple[str | None, ...]] = {
    # the first direct round leaves pending; later rounds and upgrade probes stay; a
    # directly connected peer probes a new or changed candidate beside its live path (issue 13)
    "start_direct_round": (T, T, E, R, D, _),
    # a round fails in any live state; in pending it is the probe round of a direct path
    # lost after the round's deadline had passed (the observation came late)
    "fail_direct_round": (P, T, E, R, D, _),
    # the threshold fired (direct-first), or relay-first / relay-only / nothing to try directly
    "become_relay_eligible": (E, E, _, _, _, _),
    "choose_relay": (_, _, E, _, _, _),
    "abandon_relay": (_, _, E, _, _, _),
    "find_no_relay": (_, _, E, _, _, _),
    "select_relay_path": (_, _, R, _, _, _),
    # a direct answer wins at once; in direct_connected it is a roam
    "select_direct_path": (D, D, D, _, D, _),
    "upgrade": (_, _, _, D, _, _),
    # a lost direct path starts over; a lost relay fails over (the peer is past the threshold)
    "lose_path": (_, _, _, E, P, _),
    "remove": (X, X, X, X, X, _),
    "add": (_, _, _, _, _, P),
    # a hard-NAT attempt (issue 16) starts and meets beside a relay, while the peer waits for
    # one, or beside a new peer's first direct round (`hard_nat_with_first_round`), moving
    # nothing; it ends in any live state (a plain probe found the path meanwhile)
    "start_hard_nat": (_, T, E, R, _, _),
    "meet_hard_nat": (_, T, E, R, _, _),
    "end_hard_nat": (P, T, E, R, D, _),
}
COLUMNS = (P, T, E, R, D, X)
EXPECTED = {
    (state, trigger): row[index]
    for trigger, row in EXPECTED_ROWS.items()
    for index, state in enumerate(COLUMNS)
}


def test_the_hand_written_table_names_every_state_and_trigger() -> None:
    assert set(COLUMNS) == set(lc.STATES)
    assert set(EXPECTED_ROWS) == set(lc.TRIGGERS)


@pytest.mark.parametrize(("state", "trigger"), sorted(EXPECTED))
def test_the_compiled_table_and_the_machine_say_what_the_design_says(state: str, trigger: str) -> None:
    expected = EXPECTED[(state, trigger)]
    assert lc.TABLE.get((state, trigger)) == expected
    assert _machine_says(state, trigger) == expected
    if expected is None:
        with pytest.raises(lc.InvalidTransition):
            lc.next_state(state, trigger)
    else:
        assert lc.next_state(state, trigger) == expected


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
