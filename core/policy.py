"""The policy: every threshold, timeout and weight the engine decides with.

One frozen value. It is recorded in the log (`PolicySet`) whenever it changes,
so a replay decides with the policy that was in force. Nothing here reads the
environment or a file; presets for other systems live in `presets`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from . import values as v

Mode = Literal["direct_first", "relay_first"]
PeerAccess = Literal["auto", "relay_only", "direct_only"]


def _non_negative_number(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) not in (int, float) or value < 0:
        raise v.InvalidValue(f"{attribute.name}={value!r}: expected a number >= 0")


def _factor(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) not in (int, float) or value < 1:
        raise v.InvalidValue(f"{attribute.name}={value!r}: expected a number >= 1")


def _to_float(value: object) -> Any:
    return float(value) if type(value) is int else value


def _keys(value: object) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _key_list(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple):
        raise v.InvalidValue(f"{attribute.name}={value!r}: expected a list of public keys")
    for key in value:
        problem = v.public_key_problem(key)
        if problem is not None:
            raise v.InvalidValue(f"{attribute.name}: {problem}")


@attrs.frozen(kw_only=True)
class RelayWeights:
    """Weights of the relay score; formnet's defaults.

    score = (latency * (1 - min(rtt, ceiling) / ceiling) + load * (1 - load%)
             + capability * has_required_bits + region * in_preferred_region
             + reliability * reliability_ewma) * (1 - loss_ewma)
    """

    latency: float = attrs.field(default=0.3, converter=_to_float, validator=v.fraction)
    latency_ceiling_ms: int = attrs.field(default=200, validator=v.positive_int)
    load: float = attrs.field(default=0.2, converter=_to_float, validator=v.fraction)
    capability: float = attrs.field(default=0.1, converter=_to_float, validator=v.fraction)
    region: float = attrs.field(default=0.1, converter=_to_float, validator=v.fraction)
    reliability: float = attrs.field(default=0.3, converter=_to_float, validator=v.fraction)


def _weights(value: object) -> Any:
    if isinstance(value, dict):
        return RelayWeights(**value)
    return value


@attrs.frozen(kw_only=True)
class Policy:
    """How the engine chooses paths. Times are milliseconds."""

    #: A label recorded with the policy, e.g. "natrelay" or "formnet".
    name: str = attrs.field(default="natrelay", validator=v.text)
    #: direct_first: relay only after `min_direct_attempts` failed rounds;
    #: relay_first: connect through a relay at once and probe direct meanwhile.
    mode: Mode = attrs.field(default="relay_first", validator=v.one_of("direct_first", "relay_first"))
    #: False disables relays entirely (innernet).
    relays_enabled: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: Failed direct rounds before a peer becomes relay-eligible (formnet: 3).
    min_direct_attempts: int = attrs.field(default=3, validator=v.non_negative_int)
    #: Base gap between two direct rounds; grows with backoff.
    step_interval_ms: int = attrs.field(default=1_000, validator=v.positive_int)
    #: A direct attempt without a handshake by then has failed.
    attempt_timeout_ms: int = attrs.field(default=1_000, validator=v.positive_int)
    #: Endpoints tried at once in one round.
    parallel_endpoints: int = attrs.field(default=4, validator=v.positive_int)
    #: The gap after n failed rounds is step_interval * factor**n, capped.
    backoff_factor: float = attrs.field(default=2.0, converter=_to_float, validator=_factor)
    backoff_cap_ms: int = attrs.field(default=30_000, validator=v.positive_int)
    #: +/- this fraction of the gap, from a hash of (peer, round): deterministic.
    backoff_jitter: float = attrs.field(default=0.1, converter=_to_float, validator=v.fraction)
    #: A path whose latest handshake is older than this is lost (REJECT_AFTER_TIME).
    handshake_freshness_ms: int = attrs.field(default=180_000, validator=v.positive_int)
    #: A chosen relay that has not established a session by then has failed.
    relay_connect_timeout_ms: int = attrs.field(default=5_000, validator=v.positive_int)
    #: With no usable relay, look again after this long (or when one is announced).
    relay_retry_ms: int = attrs.field(default=10_000, validator=v.positive_int)
    #: A round of relay connects that all reached their timeout unanswered (no relay refused
    #: them: they work, the peer did not answer: it sleeps or is offline) is retried at once,
    #: not after `relay_retry_ms`, while the peer has gone unanswered for less than this long
    #: in a row (each such connect waited out `relay_connect_timeout_ms`). A connect set up
    #: while the peer slept is answered at best by WireGuard's next initiation (one per 5 s,
    #: REKEY_TIMEOUT), so only a fresh one keeps noticing it back before its new candidates
    #: are reported; the connect timeout paces them like those initiations (natrelay's preset:
    #: 10 minutes, a laptop's short sleep; WireGuard's own REKEY_ATTEMPT_TIME, 90 s, missed
    #: every sleep longer than that). After the window a peer that stays away costs what it
    #: did before (issue 13, `wake`, `mesh`). A full
    #: or refusing relay still waits `relay_retry_ms`. 0: off (the behaviour before it
    #: existed, which recorded logs re-decide with).
    relay_unanswered_window_ms: int = attrs.field(default=0, validator=v.non_negative_int)
    #: False: a relayed peer stays relayed (formnet's behaviour).
    upgrade_enabled: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: First gap between upgrade probes of a relayed peer...
    upgrade_probe_interval_ms: int = attrs.field(default=1_000, validator=v.positive_int)
    #: Probe once as soon as a relay session is up, before the regular interval: the
    #: WireGuard session now exists, so a direct probe is one round trip, and a peer whose
    #: first direct handshake was lost need not wait for the next round (an open connect
    #: round gives way to it).
    upgrade_probe_on_relay: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: ...multiplied by this after each probe...
    upgrade_probe_backoff: float = attrs.field(default=2.0, converter=_to_float, validator=_factor)
    #: ...up to this cap; probing never stops.
    upgrade_probe_cap_ms: int = attrs.field(default=300_000, validator=v.positive_int)
    #: After this many upgrade probes the gap jumps straight to the cap (netbird: 3 ICE
    #: retries, then one per hour); 0 keeps the plain backoff.
    upgrade_probe_slow_after: int = attrs.field(default=0, validator=v.non_negative_int)
    #: Try private (RFC 1918, link-local, ULA) candidates before public ones, keeping their
    #: order otherwise (innernet tries the agent-reported local addresses and the
    #: server-reported endpoint last).
    private_candidates_first: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: A direct endpoint lost less than this long ago must wait this long before
    #: an upgrade back to it: no flapping between relay and a dying direct path.
    switch_hysteresis_ms: int = attrs.field(default=10_000, validator=v.non_negative_int)
    #: After an upgrade to a direct path, the agent keeps the relay session open (allocated,
    #: bound, refreshed) this long, so that a direct path dying soon after falls back to
    #: the relay at once; 0 closes it at the upgrade. The engine does not use it.
    relay_keep_warm_ms: int = attrs.field(default=120_000, validator=v.non_negative_int)
    #: Hard NATs (issue 16, docs/hard-nat.md): a relayed peer whose direct rounds failed and
    #: whose NAT pairing makes a plain punch hopeless (symmetric against port-restricted,
    #: firewall or symmetric) gets a birthday punch. Off here, since the engine cannot know
    #: whether its data plane carries one out; natrelay's preset and the agent with the
    #: shared data plane (which does) turn it on.
    hard_nat_enabled: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: Start the attempt beside a new peer's first direct round when both NAT types already
    #: say a plain punch is hopeless, instead of after that round failed (`attempt_timeout_ms`,
    #: 1 s) and the peer went to a relay: the round still runs, so a misreported NAT type costs
    #: one attempt's budget, never the path, and whichever answers first is taken. Only for a
    #: peer that has never lost a path (a lost one may be asleep or gone: its attempt waits for
    #: a failed round and a relay answer, as before). On in natrelay's preset; off here, so
    #: recorded logs re-decide as written.
    hard_nat_with_first_round: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: Peers (public keys) never given a hard-NAT attempt.
    hard_nat_off_peers: tuple[str, ...] = attrs.field(default=(), converter=_keys, validator=_key_list)
    #: The budget of one attempt: sockets the hard side opens, probes the easy side sends...
    hard_nat_sockets: int = attrs.field(default=256, validator=v.positive_int)
    hard_nat_probes: int = attrs.field(default=1024, validator=v.positive_int)
    #: ...at most this many probes per second (so it never looks like a port scan)...
    hard_nat_probe_rate: int = attrs.field(default=128, validator=v.positive_int)
    #: ...and the attempt ends without a meeting after this long.
    hard_nat_timeout_ms: int = attrs.field(default=10_000, validator=v.positive_int)
    #: After a failed attempt the next waits this long, times backoff per failure, capped;
    #: at most `hard_nat_max_attempts` per peer until this node's addresses change (0: no limit).
    hard_nat_retry_ms: int = attrs.field(default=60_000, validator=v.positive_int)
    hard_nat_retry_backoff: float = attrs.field(default=4.0, converter=_to_float, validator=_factor)
    hard_nat_retry_cap_ms: int = attrs.field(default=3_600_000, validator=v.positive_int)
    hard_nat_max_attempts: int = attrs.field(default=4, validator=v.non_negative_int)
    weights: RelayWeights = attrs.field(factory=RelayWeights, converter=_weights)
    #: Relays above this load (percent) are never chosen; a relay at exactly this load may be.
    max_relay_load: int = attrs.field(default=80, validator=v.non_negative_int)
    #: Capability bits a relay should have (scored, not required).
    required_capabilities: int = attrs.field(default=0, validator=v.non_negative_int)
    #: Relay registry entries not re-announced or measured for this long are stale.
    relay_stale_after_ms: int = attrs.field(default=3_600_000, validator=v.positive_int)
    #: The direct cache keeps this many endpoints per peer...
    direct_cache_size: int = attrs.field(default=5, validator=v.positive_int)
    #: ...each for at most this long after its last success.
    direct_cache_max_age_ms: int = attrs.field(default=7 * 86_400_000, validator=v.positive_int)

    def round_gap_ms(self, failed_rounds: int, unit_jitter: float) -> int:
        """Gap before the next direct round; `unit_jitter` in [0, 1) comes from a hash."""
        base = min(
            float(self.backoff_cap_ms),
            self.step_interval_ms * self.backoff_factor ** min(failed_rounds, 64),
        )
        spread = base * self.backoff_jitter * (2.0 * unit_jitter - 1.0)
        return max(1, int(base + spread))

    def probe_gap_ms(self, probes_done: int) -> int:
        """Gap before the next upgrade probe of a relayed peer."""
        if self.upgrade_probe_slow_after and probes_done >= self.upgrade_probe_slow_after:
            return self.upgrade_probe_cap_ms
        gap = self.upgrade_probe_interval_ms * self.upgrade_probe_backoff ** min(probes_done, 64)
        return max(1, int(min(float(self.upgrade_probe_cap_ms), gap)))

    def hard_nat_gap_ms(self, failures: int) -> int:
        """Gap before the next hard-NAT attempt after `failures` failed ones (>= 1)."""
        gap = self.hard_nat_retry_ms * self.hard_nat_retry_backoff ** min(max(failures - 1, 0), 64)
        return max(1, int(min(float(self.hard_nat_retry_cap_ms), gap)))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise v.InvalidValue(f"unknown policy fields: {', '.join(unknown)}")
        return cls(**data)
