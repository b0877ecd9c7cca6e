"""The payload fold: replay folds the frequent event types straight from the log's payload dicts.

Owns `payload_folds(state)`: for the event types that are most of every log (a direct
round's attempts, failures and handshakes, then relay choice and membership), one
function per type that takes the decoded payload dict and does exactly what `evolve`
does with the event built from it — `now`, the check, the projections handling the type,
the peer fold and its lifecycle move, the relay slots — in one call, without building the
event: in replay, building and dispatching each event cost as much as reading it.
The folds themselves live in `payload_rounds` and `payload_relays`.

Rules of this module:
- a payload fold mirrors `evolve.plan` of its type, and is used only while that plan has
  the shape it mirrors (the same check, the same projection handlers, the same peer
  fold): any other type, and a mirrored type whose plan changed shape, folds its event
  (`payload_folds` leaves it out), so a new event type needs nothing here.
  `tests/property/test_payload_fold.py` holds both folds to the same state.
- trust is the trusted builder's (`codec._compile_trusted`): the payload has exactly the
  type's fields, each of its JSON type; anything else raises `Untrusted` before anything
  changes, and the caller folds that row from its event (whose decoding names the seq).
  Values are not validated: the row was when it was made, and `replay --check`
  validates every row again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import payload_relays as relays
from . import payload_rounds as rounds
from .attempts import _HANDLERS as ATTEMPT_HANDLERS
from .attempts import AttemptCounts
from .checks import CHECKS, check_established, not_in_mesh
from .direct_cache import DirectCache
from .events import (
    DirectAttemptStarted,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    ObservationRejected,
    PeerAdded,
    RelayChosen,
    RelayEligibilityReached,
    RelayPathSelected,
    RelaySessionEstablished,
    Tick,
)
from .evolve import (
    FOLDS,
    fold_attempt_started,
    fold_direct_path,
    fold_eligible,
    fold_handshake,
    fold_peer_added,
    fold_relay_chosen,
    fold_relay_path,
    fold_round_failed,
)
from .payload_rounds import PayloadFold
from .relay_cache import RelayCache
from .relay_registry import RelayRegistry
from .state import State

#: The shape of `evolve.plan` of one type: its check, the projections handling it (the
#: attempts projection by its handler, the others by class), its peer fold.
PlanShape = tuple[Any, tuple[Any, ...], Any]


def payload_folds(state: State) -> dict[str, tuple[int, PayloadFold]]:
    """type name -> (the schema version it reads, its payload fold bound to `state`), for
    the types whose plan in `evolve` has the shape mirrored; every other type folds its event."""
    made: dict[str, tuple[int, PayloadFold]] = {}
    for kind, (mirrored, make) in MIRRORS.items():
        if plan_shape(state, kind) == mirrored:
            made[kind.TYPE] = (kind.VERSION, make(state))
    return made


def plan_shape(state: State, kind: type) -> PlanShape:
    """What `evolve.plan` composes for `kind` on `state` (see `PlanShape`). The projections
    are every attribute of the state that declares the types it folds (`HANDLES`): one
    added to the state later counts without a change here."""
    handlers = tuple(
        ATTEMPT_HANDLERS.get(kind) if isinstance(projection, AttemptCounts) else type(projection)
        for projection in vars(state).values()
        if kind in getattr(type(projection), "HANDLES", ())
    )
    return CHECKS.get(kind), handlers, FOLDS.get(kind)


#: type -> (the plan shape its payload fold mirrors, the maker binding it to a state).
MIRRORS: dict[type[Event], tuple[PlanShape, Callable[[State], PayloadFold]]] = {
    DirectAttemptStarted: ((None, (AttemptCounts._started,), fold_attempt_started), rounds.attempt_started),
    DirectRoundFailed: ((None, (AttemptCounts._round_failed,), fold_round_failed), rounds.round_failed),
    HandshakeObserved: ((not_in_mesh, (DirectCache,), fold_handshake), rounds.handshake),
    RelaySessionEstablished: ((check_established, (RelayRegistry,), None), relays.session_established),
    RelayEligibilityReached: ((None, (), fold_eligible), relays.eligible),
    RelayChosen: ((None, (), fold_relay_chosen), relays.relay_chosen),
    RelayPathSelected: ((None, (RelayCache,), fold_relay_path), relays.relay_path),
    DirectPathSelected: (
        (None, (AttemptCounts._succeeded, DirectCache), fold_direct_path),
        relays.direct_path,
    ),
    PeerAdded: ((None, (), fold_peer_added), relays.peer_added),
    Tick: ((None, (), None), relays.time_only(())),
    ObservationRejected: ((None, (), None), relays.time_only(("observation", "peer", "reason"))),
}
