"""The peer lifecycle: the single definition of which decision moves a peer where.

Rules of this module:
- `STATES` and `TRANSITIONS` below are the one and only description of the
  lifecycle. `build_machine()` turns them into a `transitions` Machine (used
  for the diagram and as the reference in the exhaustive test), and
  `TABLE` is compiled *from that Machine's own events* so that the engine can
  run 100k peers at dict-lookup speed without a Machine object per peer.
- a (state, trigger) pair missing from the table is an `InvalidTransition`;
  the engine turns an invalid pair caused by outside input into a recorded
  `ObservationRejected`, and a pair caused by its own decision is a bug that
  raises.
- lifecycle states move only on the engine's decisions, and on membership
  observations (a peer added or removed). Facts such as handshakes only
  update projections; the engine then decides.

```
pending ─► direct_trying ─► relay_eligible ─► relay_connected
   │           │                 │   ▲ relay lost  │
   │           ▼                 ▼   └─────────────┤ upgrade
   └────► direct_connected ◄─────────────────────────┘
              │ path lost ─► pending (cached endpoint first)
any state ─ remove ─► removed ─ add ─► pending
```
"""

from __future__ import annotations

from typing import Any, Final

from transitions import Machine

PENDING: Final = "pending"
DIRECT_TRYING: Final = "direct_trying"
RELAY_ELIGIBLE: Final = "relay_eligible"
RELAY_CONNECTED: Final = "relay_connected"
DIRECT_CONNECTED: Final = "direct_connected"
REMOVED: Final = "removed"

STATES: Final = (PENDING, DIRECT_TRYING, RELAY_ELIGIBLE, RELAY_CONNECTED, DIRECT_CONNECTED, REMOVED)
LIVE_STATES: Final = STATES[:-1]
CONNECTED_STATES: Final = frozenset({RELAY_CONNECTED, DIRECT_CONNECTED})

#: Decision (or membership observation) type -> the trigger it fires.
TRIGGER_OF_EVENT: Final = {
    "direct_attempt_started": "start_direct_round",
    "direct_round_failed": "fail_direct_round",
    "relay_eligibility_reached": "become_relay_eligible",
    "relay_chosen": "choose_relay",
    "relay_abandoned": "abandon_relay",
    "relay_unavailable": "find_no_relay",
    "direct_path_selected": "select_direct_path",
    "relay_path_selected": "select_relay_path",
    "path_upgraded": "upgrade",
    "path_lost": "lose_path",
    "peer_removed": "remove",
    "peer_added": "add",
    "hard_nat_attempt_started": "start_hard_nat",
    "hard_nat_attempt_succeeded": "meet_hard_nat",
    "hard_nat_attempt_failed": "end_hard_nat",
}

#: Each row: trigger, source state(s), destination (None: stay, an internal transition).
TRANSITIONS: Final[tuple[dict[str, Any], ...]] = (
    # a direct round: the first one leaves pending; later ones, and probes stay (a probe of
    # new candidates of a directly connected peer too, beside its live path)
    {"trigger": "start_direct_round", "source": PENDING, "dest": DIRECT_TRYING},
    {
        "trigger": "start_direct_round",
        "source": [DIRECT_TRYING, RELAY_ELIGIBLE, RELAY_CONNECTED, DIRECT_CONNECTED],
        "dest": None,
    },
    # a round fails in any live state; in pending it is the probe round of a direct path
    # lost before the round's deadline (the next connect round still counts from it)
    {
        "trigger": "fail_direct_round",
        "source": [PENDING, DIRECT_TRYING, RELAY_ELIGIBLE, RELAY_CONNECTED, DIRECT_CONNECTED],
        "dest": None,
    },
    # the threshold fired (direct-first), or the policy/peer says relay first
    {"trigger": "become_relay_eligible", "source": [PENDING, DIRECT_TRYING], "dest": RELAY_ELIGIBLE},
    {"trigger": "choose_relay", "source": RELAY_ELIGIBLE, "dest": None},
    {"trigger": "abandon_relay", "source": RELAY_ELIGIBLE, "dest": None},
    {"trigger": "find_no_relay", "source": RELAY_ELIGIBLE, "dest": None},
    {"trigger": "select_relay_path", "source": RELAY_ELIGIBLE, "dest": RELAY_CONNECTED},
    # a handshake answered directly; in direct_connected it means the peer roamed
    {
        "trigger": "select_direct_path",
        "source": [PENDING, DIRECT_TRYING, RELAY_ELIGIBLE],
        "dest": DIRECT_CONNECTED,
    },
    {"trigger": "select_direct_path", "source": DIRECT_CONNECTED, "dest": None},
    {"trigger": "upgrade", "source": RELAY_CONNECTED, "dest": DIRECT_CONNECTED},
    # losing a direct path starts over (cached endpoint first); losing a relay fails over
    {"trigger": "lose_path", "source": DIRECT_CONNECTED, "dest": PENDING},
    {"trigger": "lose_path", "source": RELAY_CONNECTED, "dest": RELAY_ELIGIBLE},
    {"trigger": "remove", "source": list(LIVE_STATES), "dest": REMOVED},
    # a hard-NAT attempt runs beside the relay, while the peer waits for one, or beside a new
    # peer's first direct round, and moves no state (issue 16); it may end in any live state
    # (a plain probe found the path meanwhile)
    {"trigger": "start_hard_nat", "source": [DIRECT_TRYING, RELAY_CONNECTED, RELAY_ELIGIBLE], "dest": None},
    {"trigger": "meet_hard_nat", "source": [DIRECT_TRYING, RELAY_CONNECTED, RELAY_ELIGIBLE], "dest": None},
    {"trigger": "end_hard_nat", "source": list(LIVE_STATES), "dest": None},
    {"trigger": "add", "source": REMOVED, "dest": PENDING},
)

#: Where a hard-NAT attempt may run: relayed, or waiting for a relay...
HARD_NAT_STATES: Final = frozenset({RELAY_CONNECTED, RELAY_ELIGIBLE})
#: ...and beside a new peer's first direct round (`Policy.hard_nat_with_first_round`).
EARLY_HARD_NAT_STATES: Final = HARD_NAT_STATES | {DIRECT_TRYING}


def hard_nat_states(*, with_first_round: bool) -> frozenset[str]:
    """The states in which a hard-NAT attempt may run, by the policy's one switch."""
    return EARLY_HARD_NAT_STATES if with_first_round else HARD_NAT_STATES


TRIGGERS: Final = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))


class InvalidTransition(Exception):
    """A trigger that the lifecycle does not allow in the peer's current state."""

    def __init__(self, state: str, trigger: str) -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(f"trigger {trigger!r} is not allowed in state {state!r}")


def build_machine(model: Any = "self", *, graph: bool = False) -> Machine:
    """The lifecycle as a `transitions` Machine (strict: invalid triggers raise)."""
    options: dict[str, Any] = {
        "states": list(STATES),
        "transitions": [dict(row) for row in TRANSITIONS],
        "initial": PENDING,
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
        "send_event": False,
    }
    if graph:
        from transitions.extensions import GraphMachine

        return GraphMachine(model=model, graph_engine="mermaid", title="natrelay peer lifecycle", **options)
    return Machine(model=model, **options)


def compile_table(machine: Machine) -> dict[tuple[str, str], str]:
    """(state, trigger) -> next state, read from the Machine's own events."""
    table: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            if len(transitions) != 1 or transitions[0].conditions:
                raise ValueError(f"{trigger} from {source}: the lifecycle has no conditional transitions")
            dest = transitions[0].dest
            table[(source, trigger)] = source if dest is None else dest
    return table


TABLE: Final = compile_table(build_machine())


def next_state(state: str, trigger: str) -> str:
    """Where `trigger` takes a peer in `state`; raises InvalidTransition otherwise."""
    try:
        return TABLE[(state, trigger)]
    except KeyError:
        raise InvalidTransition(state, trigger) from None


def mermaid() -> str:
    """The lifecycle as a mermaid state diagram (no graphviz needed)."""
    machine = build_machine(graph=True)
    return str(machine.get_graph().draw(None))
