"""Policy presets: natrelay's default and the anchors it is measured against.

Each anchor is the `Policy` that makes this engine behave like the system it is
named after, as far as the engine's knobs reach. The docstring of each gives
its constants and the source they come from, and what the preset cannot
reproduce. Pure values: no I/O. The `oracle` is not a policy (no agent could
run it): it is a strategy inside the simulator (`adapters.sim.simulated_network`) that
knows the ground truth; `ORACLE` is only its name.
"""

from __future__ import annotations

from collections.abc import Callable

from .policy import Policy

ORACLE = "oracle"


def innernet() -> Policy:
    """innernet: direct only, one candidate per peer per 5 s step, the server-reported endpoint last.

    Source: tonarino/innernet, client/src/nat.rs — `STEP_INTERVAL = 5 s`; `NatTraverse::step`
    sets each remaining peer's endpoint to its next candidate (one per step) and waits up to
    5 s for a handshake; the server-reported endpoint is removed from the candidate list and
    only restored when the candidates are exhausted. A peer counts as connected while its
    latest handshake is at most 180 s old (`is_recently_connected`, WireGuard's REJECT_AFTER_TIME).
    innernet has no relay.

    Mapped to: relays_enabled=False, parallel_endpoints=1, attempt_timeout 5 s, the first
    rounds back to back (a pass over the candidates), then a new round about once a minute
    (`innernet up --interval`'s 60 s fetch brings a new traversal), private candidates first
    (the simulator reports the server-reflexive endpoint first, the agent's local addresses
    after it), freshness 180 s.
    """
    return Policy(
        name="innernet",
        mode="direct_first",
        relays_enabled=False,
        parallel_endpoints=1,
        step_interval_ms=1,
        attempt_timeout_ms=5_000,
        backoff_factor=4.0,
        backoff_cap_ms=60_000,
        backoff_jitter=0.0,
        private_candidates_first=True,
        handshake_freshness_ms=180_000,
        upgrade_enabled=False,
    )


def formnet() -> Policy:
    """formnet (natrelay's seed): relay after 3 direct attempts at 1 s steps, never back to direct.

    Source: the seed this project grew from (formnet's NAT traversal with relay fallback):
    `should_attempt_relay(attempts >= 3)`, one `step()` per second trying one candidate per
    peer, relays ranked by its weighted score (latency 0.3, load 0.2, capability 0.1,
    region 0.1, reliability 0.3 — `RelayWeights` defaults), and no upgrade back to direct
    once relayed.
    """
    return Policy(
        name="formnet",
        mode="direct_first",
        min_direct_attempts=3,
        parallel_endpoints=1,
        step_interval_ms=1_000,
        attempt_timeout_ms=1_000,
        backoff_factor=1.0,
        backoff_jitter=0.0,
        upgrade_enabled=False,
    )


def netbird() -> Policy:
    """netbird: relay and direct (ICE) together, direct preempts, few retries while relayed.

    Sources: netbirdio/netbird client/internal/peer/conn.go (the relay worker and the ICE
    worker start on the same offer; an ICE P2P connection has priority over the relayed one);
    client/internal/peer/guard/guard.go (offers re-sent with exponential backoff, initial
    800 ms, multiplier 2); client/internal/peer/guard/ice_retry_state.go (`maxICERetries = 3`,
    then `iceRetryInterval = 1 h` while the relay is connected). A peer is considered gone when
    its WireGuard handshake has not renewed within 3 min 30 s.

    Mapped to: mode relay_first, all candidates checked at once (ICE), upgrade probes at
    0.8 s x 2 for 3 retries then hourly (upgrade_probe_slow_after=3, cap 1 h), freshness 210 s.
    """
    return Policy(
        name="netbird",
        mode="relay_first",
        parallel_endpoints=8,
        step_interval_ms=800,
        attempt_timeout_ms=5_000,
        backoff_factor=2.0,
        upgrade_probe_interval_ms=800,
        upgrade_probe_on_relay=False,
        upgrade_probe_backoff=2.0,
        upgrade_probe_cap_ms=3_600_000,
        upgrade_probe_slow_after=3,
        handshake_freshness_ms=210_000,
    )


def tailscale() -> Policy:
    """tailscale: DERP relay from the first packet, disco pings to every candidate, re-probe every minute.

    Source: tailscale/tailscale wgengine/magicsock (magicsock.go constants, endpoint.go use):
    `trustUDPAddrDuration = 6.5 s` (a direct path is used alone only within 6.5 s of a pong,
    else packets also go via DERP), `heartbeatInterval = 3 s`, `discoPingInterval = 5 s`,
    `pingTimeoutDuration = 5 s`, `upgradeUDPDirectInterval = 1 min`; `betterAddr` switches
    only for a clearly better path (about 1 % hysteresis).

    While on DERP only, `wantFullPingLocked` re-pings every candidate at most every
    `discoPingInterval` (5 s) as long as the peer is active (`sessionActiveTimeout = 45 s`).

    Mapped to: mode relay_first (DERP at once), parallel_endpoints=8, attempt timeout 5 s,
    rounds every 5 s; while relayed, probes from 5 s doubling up to the 1-minute upgrade
    interval (5 s pings while active, settling to once a minute); 10 s switch hysteresis.
    Not reproduced: the 6.5 s trust window needs a liveness signal every 3 s; this engine's
    liveness signal is the WireGuard handshake (renewed every 120 s, lost after 180 s), so a
    silently broken direct path is detected as late as for the other policies.
    """
    return Policy(
        name="tailscale",
        mode="relay_first",
        parallel_endpoints=8,
        step_interval_ms=5_000,
        attempt_timeout_ms=5_000,
        backoff_factor=1.0,
        upgrade_probe_interval_ms=5_000,
        upgrade_probe_on_relay=False,
        upgrade_probe_backoff=2.0,
        upgrade_probe_cap_ms=60_000,
        switch_hysteresis_ms=10_000,
    )


def natrelay() -> Policy:
    """natrelay's default policy: `Policy()` (its constants and their reasons are in core/policy.py),
    except that a relay connect may take 6 s instead of 5 s: WireGuard retries a lost handshake
    initiation after 5 s (REKEY_TIMEOUT), so a 5 s timeout abandons a relay whose first
    handshake through it was lost just before the retry answers (issue 13: on `relay-outage`
    that turned a 5.1 s recovery into 15.1 s, the abandon plus the 10 s retry); and relays
    are used up to their reported load of 100 %: the engine counts its own sessions and
    connects in flight against each relay's announced capacity, so the 80 % reserve of
    `max_relay_load` only left freed slots unused until the next health report (at 10,000
    peers on `mesh`, 97.6 % connected instead of the oracle's 98.7 %); and a round of relay
    connects the peer never answered (asleep, offline: the relays took them) is tried again at
    once for 10 minutes, not after the 10 s relay retry: only a fresh connect (or WireGuard's
    next initiation through one) notices a peer that woke before its new candidates are
    reported (issue 13, `wake` seed 7: connected time 99.857 % -> 99.923 %, the oracle's
    99.992 %; a window of 90 s, WireGuard's REKEY_ATTEMPT_TIME, left `mesh`'s 1-5 minute
    sleeps to the report: recovery p50 3.09 s, 2.60 s with 10 minutes); and a new
    peer's hard-NAT attempt starts with its first direct round when both NAT types say a plain
    punch is hopeless (`relay-scarce`: connected time 0.106 -> 0.079 pp from the oracle).
    """
    return Policy(
        name="natrelay",
        relay_connect_timeout_ms=6_000,
        max_relay_load=100,
        hard_nat_enabled=True,
        hard_nat_with_first_round=True,
        relay_unanswered_window_ms=600_000,
    )


#: Every preset by name, in the benchmark's order (the oracle is added by the simulator).
PRESETS: dict[str, Callable[[], Policy]] = {
    "innernet": innernet,
    "formnet": formnet,
    "netbird": netbird,
    "tailscale": tailscale,
    "natrelay": natrelay,
}


def preset(name: str) -> Policy:
    """The preset called `name`; ValueError lists the known ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown policy preset {name!r}; known: {', '.join(PRESETS)}") from None
