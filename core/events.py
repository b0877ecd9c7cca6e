"""Every event natrelay knows: observations from outside, decisions of the engine.

Rules of this module:
- an event is a frozen attrs value with a past-tense name, a stable `TYPE`
  string (what the log stores) and a `VERSION` (its payload schema);
- every field is validated at construction, so an event that exists is valid;
- `at` is integer milliseconds: the time the fact was observed or decided;
- observations (`KIND = "observation"`) are facts the shell feeds in;
  decisions (`KIND = "decision"`) are what the engine concluded, each with a
  human `reason` so `natrelay explain` can show why;
- renaming a TYPE or changing a field is a schema change: bump VERSION and
  register an upcaster in `codec`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from . import values as v
from .event_fields import CANDIDATE_KINDS as CANDIDATE_KINDS
from .event_fields import HARD_NAT_ROLES, NAT_TYPES
from .event_fields import kinds as _kinds
from .policy import PeerAccess, Policy

Kind = Literal["observation", "decision"]
Purpose = Literal["connect", "upgrade_probe"]
HardNatRole = Literal["hard", "easy", "both"]


def _tuple(value: object) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _policy(value: object) -> Any:
    return Policy.from_dict(value) if isinstance(value, dict) else value


@attrs.frozen(kw_only=True)
class Event:
    """Base of all events: the time it happened."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    KIND: ClassVar[Kind] = "observation"

    at: int = attrs.field(validator=v.time_ms)


@attrs.frozen(kw_only=True)
class PeerEvent(Event):
    """An event about one peer, stored in that peer's stream."""

    peer: str = attrs.field(validator=v.public_key)


@attrs.frozen(kw_only=True)
class RelayEvent(Event):
    """An event about one relay, stored in the fleet-wide relay stream."""

    relay: str = attrs.field(validator=v.identifier)


# --- observations: peers -----------------------------------------------------


@attrs.frozen(kw_only=True)
class PeerAdded(PeerEvent):
    """The mesh gained a peer (or a removed peer came back)."""

    TYPE = "peer_added"
    #: 2: `kinds` added (an upcaster gives older events none).
    VERSION = 2
    candidates: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=v.candidates)
    #: Each candidate's kind (host, mapped, reflexive, configured), or () when unknown.
    kinds: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=_kinds)
    name: str = attrs.field(default="", validator=v.text)
    access: PeerAccess = attrs.field(default="auto", validator=v.one_of("auto", "relay_only", "direct_only"))
    preferred_region: str | None = attrs.field(default=None, validator=v.optional_identifier)
    #: The peer's NAT as it reported it (fleet statistics only; decisions never use it).
    nat_type: str = attrs.field(default="unknown", validator=v.one_of(*NAT_TYPES))


@attrs.frozen(kw_only=True)
class PeerRemoved(PeerEvent):
    """The peer left the mesh; its paths are torn down."""

    TYPE = "peer_removed"


@attrs.frozen(kw_only=True)
class CandidatesUpdated(PeerEvent):
    """The peer's candidate endpoints changed (new reflexive address, new LAN)."""

    TYPE = "candidates_updated"
    #: 2: `kinds` added (an upcaster gives older events none).
    VERSION = 2
    candidates: tuple[str, ...] = attrs.field(converter=_tuple, validator=v.candidates)
    #: Each candidate's kind (host, mapped, reflexive, configured), or () when unknown.
    kinds: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=_kinds)
    #: The peer's NAT now, if it changed or is known (a new network after sleep and wake).
    nat_type: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.one_of(*NAT_TYPES))
    )


@attrs.frozen(kw_only=True)
class HandshakeObserved(PeerEvent):
    """WireGuard completed a handshake with the peer, directly or through a relay."""

    TYPE = "handshake_observed"
    #: The peer's endpoint for a direct handshake; None when it came through `relay`.
    endpoint: str | None = attrs.field(default=None, validator=v.optional_endpoint)
    relay: str | None = attrs.field(default=None, validator=v.optional_identifier)

    def __attrs_post_init__(self) -> None:
        if (self.endpoint is None) == (self.relay is None):
            raise v.InvalidValue("a handshake has exactly one of endpoint or relay")


@attrs.frozen(kw_only=True)
class DirectAttemptTimedOut(PeerEvent):
    """No handshake answered the direct attempt on `endpoint` before its deadline."""

    TYPE = "direct_attempt_timed_out"
    endpoint: str = attrs.field(validator=v.endpoint)
    attempt: int = attrs.field(validator=v.positive_int)


@attrs.frozen(kw_only=True)
class PathSilent(PeerEvent):
    """Nothing came back on the peer's current path for `silent_ms` although we kept sending.

    WireGuard renews a handshake only every two minutes, so a dead path shows in
    the handshake age after up to 180 s; an agent watching the transfer counters
    (`wg show dump`) knows much sooner. The engine treats it as a lost path.
    """

    TYPE = "path_silent"
    silent_ms: int = attrs.field(validator=v.positive_int)


@attrs.frozen(kw_only=True)
class HardNatPairMet(PeerEvent):
    """Hard-NAT attempt `attempt`'s authenticated probes met both ways at `endpoint` (our `local_port`)."""

    TYPE = "hard_nat_pair_met"
    attempt: int = attrs.field(validator=v.positive_int)
    endpoint: str = attrs.field(validator=v.endpoint)
    local_port: int = attrs.field(validator=v.non_negative_int)
    probes_sent: int = attrs.field(validator=v.non_negative_int)


# --- observations: relays ----------------------------------------------------


@attrs.frozen(kw_only=True)
class RelayAnnounced(RelayEvent):
    """A relay offers itself (or refreshes its offer) to the mesh."""

    TYPE = "relay_announced"
    region: str = attrs.field(validator=v.identifier)
    #: Capability bits (bit 0: IPv4, bit 1: IPv6, bit 2: TCP, bit 3: high bandwidth); the
    #: engine rejects an announcement claiming any other bit (KNOWN_CAPABILITIES).
    capabilities: int = attrs.field(default=0, validator=v.non_negative_int)
    #: Sessions the relay accepts at most.
    capacity: int = attrs.field(default=100, validator=v.positive_int)
    #: Where to reach it (a TURN server's host:port); None in simulations.
    address: str | None = attrs.field(default=None, validator=v.optional_endpoint)
    #: The announcement is void after this time; None: until withdrawn or stale.
    expires_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(v.time_ms))


@attrs.frozen(kw_only=True)
class RelayWithdrawn(RelayEvent):
    """The relay left; sessions through it are gone."""

    TYPE = "relay_withdrawn"


@attrs.frozen(kw_only=True)
class RelayHealthMeasured(RelayEvent):
    """A measurement of a relay: round-trip time, load (percent), packet loss."""

    TYPE = "relay_health_measured"
    rtt_ms: int = attrs.field(validator=v.non_negative_int)
    load: int = attrs.field(validator=v.non_negative_int)
    loss: float = attrs.field(default=0.0, validator=v.fraction)


@attrs.frozen(kw_only=True)
class RelaySessionEstablished(PeerEvent):
    """A relay session to the peer is up."""

    TYPE = "relay_session_established"
    relay: str = attrs.field(validator=v.identifier)
    session: str = attrs.field(validator=v.identifier)


@attrs.frozen(kw_only=True)
class RelaySessionFailed(PeerEvent):
    """Connecting to the peer through the relay failed."""

    TYPE = "relay_session_failed"
    relay: str = attrs.field(validator=v.identifier)
    reason: str = attrs.field(default="", validator=v.text)


@attrs.frozen(kw_only=True)
class RelaySessionClosed(PeerEvent):
    """An established relay session ended (relay died, allocation expired, closed by us)."""

    TYPE = "relay_session_closed"
    relay: str = attrs.field(validator=v.identifier)
    session: str = attrs.field(validator=v.identifier)
    reason: str = attrs.field(default="", validator=v.text)


# --- observations: the node --------------------------------------------------


@attrs.frozen(kw_only=True)
class InputRejected(Event):
    """Outside input (a config entry, a rendezvous record, a relay announcement) was refused.

    What the shell could not turn into an observation (an invalid key, a bad endpoint, too
    many candidates): `subject` as received (shortened), `reason` what is wrong. No decision
    and no state change follow (a fact for `timeline`, `replay --check` and the operator;
    `verify` is unaffected). It lives in the node's stream.
    """

    TYPE = "input_rejected"
    #: Where it came from: "config", "rendezvous", "relay_announcement", ...
    source: str = attrs.field(validator=v.identifier)
    subject: str = attrs.field(default="", validator=v.text)
    reason: str = attrs.field(validator=v.text)


@attrs.frozen(kw_only=True)
class PolicySet(Event):
    """The node's policy from now on."""

    TYPE = "policy_set"
    policy: Policy = attrs.field(converter=_policy, validator=attrs.validators.instance_of(Policy))


@attrs.frozen(kw_only=True)
class NatObserved(Event):
    """This node's own NAT behaviour, as its agent measured it (fleet statistics only)."""

    TYPE = "nat_observed"
    nat_type: str = attrs.field(validator=v.one_of(*NAT_TYPES))


@attrs.frozen(kw_only=True)
class LocalAddressesChanged(Event):
    """This node's own addresses changed (a new network, a new reflexive endpoint, a new LAN).

    Every path may have changed with them: the engine probes every peer at once,
    beside the paths in use (a connected peer keeps its path until a probe answers).
    """

    TYPE = "local_addresses_changed"
    addresses: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=v.candidates)


@attrs.frozen(kw_only=True)
class Tick(Event):
    """Time passed to `at`: serve every timer that is due."""

    TYPE = "tick"


@attrs.frozen(kw_only=True)
class StepRequested(Event):
    """The embedding agent asked for one direct round for every remaining peer now.

    The seed's `step_with_relay()`: a round for each peer not yet connected, then relays.
    """

    TYPE = "step_requested"


# --- decisions ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Decision(PeerEvent):
    """A conclusion of the engine about a peer, with the reason in plain words."""

    KIND = "decision"
    reason: str = attrs.field(default="", validator=v.text)


@attrs.frozen(kw_only=True)
class DirectAttemptStarted(Decision):
    """Try `endpoint` directly; round `attempt`, failed if no handshake by `deadline`."""

    TYPE = "direct_attempt_started"
    endpoint: str = attrs.field(validator=v.endpoint)
    attempt: int = attrs.field(validator=v.positive_int)
    deadline: int = attrs.field(validator=v.time_ms)
    purpose: Purpose = attrs.field(default="connect", validator=v.one_of("connect", "upgrade_probe"))


@attrs.frozen(kw_only=True)
class DirectRoundFailed(Decision):
    """Round `attempt` ended without a handshake: every endpoint timed out, or its deadline passed."""

    TYPE = "direct_round_failed"
    attempt: int = attrs.field(validator=v.positive_int)
    endpoints: tuple[str, ...] = attrs.field(converter=_tuple, validator=v.endpoints)
    purpose: Purpose = attrs.field(default="connect", validator=v.one_of("connect", "upgrade_probe"))


@attrs.frozen(kw_only=True)
class DirectPathSelected(Decision):
    """The peer is reached directly at `endpoint`."""

    TYPE = "direct_path_selected"
    endpoint: str = attrs.field(validator=v.endpoint)


@attrs.frozen(kw_only=True)
class RelayEligibilityReached(Decision):
    """The peer may now use a relay: the threshold fired, or the policy says relay first."""

    TYPE = "relay_eligibility_reached"
    failed_attempts: int = attrs.field(validator=v.non_negative_int)
    threshold: int = attrs.field(validator=v.non_negative_int)


@attrs.frozen(kw_only=True)
class RelayScore:
    """One line of a relay ranking: the relay and its score."""

    relay: str = attrs.field(validator=v.identifier)
    score: float = attrs.field(converter=float)


def _ranking(value: object) -> Any:
    if isinstance(value, list):
        return tuple(RelayScore(**item) if isinstance(item, dict) else item for item in value)
    return value


@attrs.frozen(kw_only=True)
class RelayChosen(Decision):
    """Connect to the peer through `relay`, the best of `ranking` not yet tried."""

    TYPE = "relay_chosen"
    relay: str = attrs.field(validator=v.identifier)
    ranking: tuple[RelayScore, ...] = attrs.field(default=(), converter=_ranking)
    deadline: int = attrs.field(validator=v.time_ms)


@attrs.frozen(kw_only=True)
class RelayAbandoned(Decision):
    """The chosen relay did not establish a session in time: counted as its failure."""

    TYPE = "relay_abandoned"
    relay: str = attrs.field(validator=v.identifier)


@attrs.frozen(kw_only=True)
class RelayUnavailable(Decision):
    """No usable relay right now; look again at `retry_at` or when one is announced."""

    TYPE = "relay_unavailable"
    retry_at: int = attrs.field(validator=v.time_ms)


@attrs.frozen(kw_only=True)
class RelayPathSelected(Decision):
    """The peer is reached through `relay`'s `session`."""

    TYPE = "relay_path_selected"
    relay: str = attrs.field(validator=v.identifier)
    session: str = attrs.field(validator=v.identifier)


@attrs.frozen(kw_only=True)
class PathUpgraded(Decision):
    """A relayed peer answered directly at `endpoint`: leave the relay."""

    TYPE = "path_upgraded"
    endpoint: str = attrs.field(validator=v.endpoint)
    relay: str = attrs.field(validator=v.identifier)


@attrs.frozen(kw_only=True)
class PathLost(Decision):
    """The peer's path (`direct` endpoint or `relay`) stopped working."""

    TYPE = "path_lost"
    path_kind: Literal["direct", "relay"] = attrs.field(validator=v.one_of("direct", "relay"))
    path: str = attrs.field(validator=v.text)


@attrs.frozen(kw_only=True)
class HardNatAttemptStarted(Decision):
    """A birthday punch toward `endpoint`: hard side's `sockets`, easy side's `probes` (docs/hard-nat.md)."""

    TYPE = "hard_nat_attempt_started"
    attempt: int = attrs.field(validator=v.positive_int)
    role: HardNatRole = attrs.field(validator=v.one_of(*HARD_NAT_ROLES))
    endpoint: str = attrs.field(validator=v.endpoint)
    sockets: int = attrs.field(validator=v.non_negative_int)
    probes: int = attrs.field(validator=v.non_negative_int)
    rate_per_s: int = attrs.field(validator=v.positive_int)
    deadline: int = attrs.field(validator=v.time_ms)


@attrs.frozen(kw_only=True)
class HardNatAttemptSucceeded(Decision):
    """Attempt `attempt` found a direct path at `endpoint` (our `local_port`); the upgrade follows."""

    TYPE = "hard_nat_attempt_succeeded"
    attempt: int = attrs.field(validator=v.positive_int)
    endpoint: str = attrs.field(validator=v.endpoint)
    local_port: int = attrs.field(validator=v.non_negative_int)
    probes_sent: int = attrs.field(validator=v.non_negative_int)


@attrs.frozen(kw_only=True)
class HardNatAttemptFailed(Decision):
    """Attempt `attempt` ended unmet; the next may start at `retry_at` (None: after new addresses)."""

    TYPE = "hard_nat_attempt_failed"
    attempt: int = attrs.field(validator=v.positive_int)
    retry_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(v.time_ms))


@attrs.frozen(kw_only=True)
class ObservationRejected(Event):
    """An observation the engine could not apply (unknown peer, late, contradictory)."""

    TYPE = "observation_rejected"
    KIND = "decision"
    observation: str = attrs.field(validator=v.text)
    peer: str | None = attrs.field(default=None)
    reason: str = attrs.field(default="", validator=v.text)


#: The capability bits natrelay knows (see RelayAnnounced.capabilities).
KNOWN_CAPABILITIES = 0b1111

OBSERVATIONS: tuple[type[Event], ...] = (
    PeerAdded,
    PeerRemoved,
    CandidatesUpdated,
    HandshakeObserved,
    DirectAttemptTimedOut,
    PathSilent,
    RelayAnnounced,
    RelayWithdrawn,
    RelayHealthMeasured,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelaySessionClosed,
    PolicySet,
    NatObserved,
    LocalAddressesChanged,
    Tick,
    StepRequested,
    InputRejected,
    HardNatPairMet,
)
DECISIONS: tuple[type[Event], ...] = (
    DirectAttemptStarted,
    DirectRoundFailed,
    DirectPathSelected,
    RelayEligibilityReached,
    RelayChosen,
    RelayAbandoned,
    RelayUnavailable,
    RelayPathSelected,
    PathUpgraded,
    PathLost,
    ObservationRejected,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    HardNatAttemptFailed,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.TYPE: cls for cls in OBSERVATIONS + DECISIONS}


def is_decision(event: Event) -> bool:
    return event.KIND == "decision"


def stream_of(event: Event, node: str) -> str:
    """The log stream an event belongs to (see DESIGN: streams carry the node)."""
    peer: Any = getattr(event, "peer", None)
    if peer is not None:
        return f"node/{node}/peer/{peer}"
    if isinstance(event, RelayEvent):
        return f"relay/{event.relay}"
    return f"node/{node}"
