"""Hard NATs (issue 16): when a relayed peer gets a birthday punch, and how an attempt ends.

A symmetric NAT gives a new public port per destination, so a plain punch against a
port-restricted cone, a stateful firewall or another symmetric NAT never meets. The
way through (docs/hard-nat.md): the hard side opens many sockets toward the easy
side's endpoint, the easy side sprays probes at ports of the hard side's address, and
by the birthday paradox one pair meets. The engine decides when to try and with what
budget; the data plane carries it out and reports the pair that met.

Rules of this module:
- it decides only through `emit` (folded, recorded); the relay stays the path until
  the normal upgrade (`stepping.maybe_upgrade`) moves the peer to the found endpoint;
- a peer no relay carries (every relay full or failed: it waits for one) is tried too,
  and an attempt goes on when the peer loses its relay: there the punch is the only way
  to a path, and a meeting selects the direct path at once (`decide.react_hard_nat_met`);
- every attempt is bounded: the budget (sockets, probes, rate) and the deadline are
  in the decision, a failed attempt waits the policy's backoff, and a peer gets at
  most `hard_nat_max_attempts` until this node's addresses change;
- `blocked` is the one answer to "why not now?": the decision and `explain` ask it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from . import lifecycle as lc
from .commands import StartHardNatAttempt, StopHardNatAttempt
from .events import (
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    HardNatPairMet,
    HardNatRole,
)
from .peers import PeerRecord
from .policy import Policy
from .reaction import emit
from .state import State

if TYPE_CHECKING:
    from .engine import Engine


def attempt_states(policy: Policy) -> frozenset[str]:
    """Where an attempt may run (and is not ended for the peer's state) under `policy`."""
    return lc.hard_nat_states(with_first_round=policy.hard_nat_with_first_round)


def beside_first_round(state: State, record: PeerRecord) -> bool:
    """A new peer's first direct round, with `hard_nat_with_first_round`: the attempt may
    start with it (in any mode: direct-trying, or waiting on a relay connect beside it)
    instead of after it failed. Not for a peer that has lost a direct path (it may be
    asleep or gone, and an attempt would aim at where it was)."""
    return (
        state.policy.hard_nat_with_first_round
        and record.state in lc.EARLY_HARD_NAT_STATES
        and record.lost_at is None
        and state.attempts.attempts(record.key) + record.probes_done == 0
    )


def waiting_for_relay(state: State, record: PeerRecord) -> bool:
    """Relay-eligible with no connect in flight and the relay retry ahead: no relay has
    room for the peer, or every one refused it (`RelayUnavailable`). Not a peer whose relay
    connects went unanswered (`relays_unanswered`): it is likely away (asleep, offline), and
    an attempt would aim at where it was."""
    retry_at = record.relay_retry_at
    return (
        record.state == lc.RELAY_ELIGIBLE
        and record.relay_pending is None
        and retry_at is not None
        and retry_at > state.now
        and not record.relays_unanswered
    )


#: NATs a plain punch from a symmetric NAT cannot open: their filters admit only the exact
#: endpoint they sent to, and the symmetric side's port toward them is not the one they know.
EASY_SIDES = frozenset({"port_restricted_cone", "firewall"})


def role_for(local_nat: str, peer_nat: str) -> tuple[HardNatRole | None, str]:
    """Our role in a birthday punch with this pairing, or None; and why, in words."""
    pair = f"our NAT is {local_nat}, the peer's {peer_nat}"
    if "udp_blocked" in (local_nat, peer_nat):
        return None, f"UDP is blocked ({pair}): only a relay gets through"
    if "unknown" in (local_nat, peer_nat):
        return None, f"a NAT type is unknown ({pair})"
    if local_nat == "symmetric" and peer_nat == "symmetric":
        return "both", f"{pair}: both sides open sockets and probe"
    if local_nat == "symmetric" and peer_nat in EASY_SIDES:
        return "hard", f"{pair}: we open the sockets, the peer probes"
    if peer_nat == "symmetric" and local_nat in EASY_SIDES:
        return "easy", f"{pair}: the peer opens the sockets, we probe"
    return None, f"a plain punch can work ({pair})"


#: Addresses that never lie beyond a NAT's public side: private (RFC 1918), carrier-grade
#: NAT (RFC 6598), loopback and link-local. Documentation ranges (RFC 5737) count as public
#: here, unlike ``ipaddress.is_private``: test networks and labs use them as "the internet".
_BEHIND_NAT = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def beyond_nat(endpoint: str) -> bool:
    """Whether ``endpoint``'s address can be a NAT's public side (a server-reflexive one)."""
    host = endpoint[1:].partition("]")[0] if endpoint.startswith("[") else endpoint.rpartition(":")[0]
    ip = ipaddress.ip_address(host)
    if ip.is_multicast or ip.is_unspecified:
        return False
    return not any(ip.version == net.version and ip in net for net in _BEHIND_NAT)


def target(record: PeerRecord) -> str | None:
    """The peer's endpoint to aim at: its first candidate beyond a NAT (the server-reflexive one)."""
    return next((c for c in record.candidates if beyond_nat(c)), None)


def blocked(state: State, record: PeerRecord) -> str | None:
    """Why no hard-NAT attempt may start for this peer now, or None when one may."""
    policy, key = state.policy, record.key
    book = state.hard_nat
    if not policy.hard_nat_enabled:
        return "hard-NAT attempts are off in this policy"
    if key in policy.hard_nat_off_peers:
        return "hard-NAT attempts are off for this peer"
    if not state.upgrades_allowed(record):
        return "the peer may not be upgraded to a direct path"
    early = beside_first_round(state, record)
    if record.state != lc.RELAY_CONNECTED and not early and not waiting_for_relay(state, record):
        return f"the peer is {record.state}, neither relayed nor waiting for a relay"
    role, why = role_for(state.local_nat, record.nat_type)
    if role is None:
        return why
    if key in book.open:
        return f"attempt {book.open[key].attempt} is under way"
    back = reporting_until(state, record)
    if back is not None and back > state.now:
        return f"the peer is back from an absence and has not said where it woke (waiting until {back} ms)"
    if not early and state.attempts.attempts(key) + record.probes_done == 0:
        return "no direct round has failed yet"
    if not early and state.attempts.open_round(key) is not None:
        return "a direct round is open"
    tries = book.tries.get(key, 0)
    if key in book.next_at and book.next_at[key] is None:
        return f"{tries} attempt(s) failed; none more until this node's addresses change"
    if policy.hard_nat_max_attempts and tries >= policy.hard_nat_max_attempts:
        return f"{tries} attempt(s) made, the policy allows {policy.hard_nat_max_attempts}"
    next_at = book.next_at.get(key)
    if next_at is not None and next_at > state.now:
        return f"the next attempt is due at {next_at} ms (backoff after {book.failures.get(key, 0)} failed)"
    if target(record) is None:
        return "the peer has no public endpoint to aim at"
    return None


def reporting_until(state: State, record: PeerRecord) -> int | None:
    """Until when a relayed peer that came back from an absence (its relay connects went
    unanswered, `relays_unanswered`, and it has reported no candidates since) is given to
    report where it woke, or None. Its NAT type and endpoints are from before it left, so an
    attempt aimed at them is wasted, and its failure backs the right one off by
    `hard_nat_retry_ms`; waiting costs at most one attempt's length. Only with the retry at
    once of `relay_unanswered_window_ms` (which brings such peers back before their report;
    0 keeps what recorded logs re-decide with)."""
    policy = state.policy
    if not (record.relays_unanswered and policy.relay_unanswered_window_ms):
        return None
    return record.since + policy.hard_nat_timeout_ms


def maybe_start(engine: Engine, record: PeerRecord) -> bool:
    """Start an attempt for this relayed peer if `blocked` allows one now."""
    if blocked(engine, record) is not None:
        return False
    policy, key, now = engine.policy, record.key, engine.now
    role, why = role_for(engine.local_nat, record.nat_type)
    endpoint = target(record)
    assert role is not None and endpoint is not None
    attempt = engine.hard_nat.next_attempt_number(key)
    deadline = now + policy.hard_nat_timeout_ms
    sockets, probes = policy.hard_nat_sockets, policy.hard_nat_probes
    failed = engine.attempts.attempts(key) + record.probes_done
    if beside_first_round(engine, record):
        where = "beside the peer's first direct round (both NAT types known)"
    elif record.state == lc.RELAY_CONNECTED:
        where = f"relayed, {failed} direct round(s) failed"
    else:
        where = f"no relay carries the peer, {failed} direct round(s) failed"
    reason = (
        f"{where}, and {why}: "
        f"{sockets} sockets on the hard side, {probes} probes at {policy.hard_nat_probe_rate}/s "
        "from the easy side, "
        f"{policy.hard_nat_timeout_ms} ms"
    )
    # The decision and the data plane's command carry the same budget.
    budget: dict[str, Any] = {
        "peer": key,
        "attempt": attempt,
        "role": role,
        "endpoint": endpoint,
        "sockets": sockets,
        "probes": probes,
        "rate_per_s": policy.hard_nat_probe_rate,
        "deadline": deadline,
    }
    emit(engine, HardNatAttemptStarted(at=now, reason=reason, **budget), StartHardNatAttempt(**budget))
    return True


def maybe_end(engine: Engine, record: PeerRecord) -> bool:
    """End the open attempt when its deadline passed or the peer is neither relayed nor
    waiting for a relay (on a direct path, or gone)."""
    tried = engine.hard_nat.open.get(record.key)
    if tried is None:
        return False
    now, policy, key = engine.now, engine.policy, record.key
    role, pairing = role_for(engine.local_nat, record.nat_type)
    if tried.deadline <= now:
        why = f"no pair met within {policy.hard_nat_timeout_ms} ms"
    elif record.state not in attempt_states(policy):
        why = f"the peer is {record.state} now"
    elif role is None:
        why = f"the pairing is no longer hard: {pairing}"
    else:
        return False
    failures = engine.hard_nat.failures.get(key, 0) + 1
    tries = engine.hard_nat.tries.get(key, 0)
    retry_at: int | None = now + policy.hard_nat_gap_ms(failures)
    if policy.hard_nat_max_attempts and tries >= policy.hard_nat_max_attempts:
        retry_at = None
        why += f"; that was attempt {tries} of {policy.hard_nat_max_attempts}"
    else:
        why += f"; the next may start at {retry_at} ms"
    emit(
        engine,
        HardNatAttemptFailed(at=now, peer=key, attempt=tried.attempt, retry_at=retry_at, reason=why),
        StopHardNatAttempt(peer=key, attempt=tried.attempt),
    )
    return True


def succeed(engine: Engine, event: HardNatPairMet) -> None:
    """The data plane found the pair: record it; the upgrade (hitless) follows in stepping."""
    tried = engine.hard_nat.open[event.peer]
    took = event.at - tried.started_at
    emit(
        engine,
        HardNatAttemptSucceeded(
            at=event.at,
            peer=event.peer,
            attempt=event.attempt,
            endpoint=event.endpoint,
            local_port=event.local_port,
            probes_sent=event.probes_sent,
            reason=f"our port {event.local_port} met {event.endpoint} after {event.probes_sent} "
            f"probe(s), {took} ms into attempt {event.attempt}",
        ),
    )


def wake_times(state: State, record: PeerRecord) -> list[int]:
    """When this peer needs the engine for hard-NAT reasons: a deadline, or the next try."""
    times = []
    tried = state.hard_nat.open.get(record.key)
    if tried is not None:
        times.append(tried.deadline)
    elif state.policy.hard_nat_enabled and record.state in attempt_states(state.policy):
        next_at = state.hard_nat.next_at.get(record.key)
        if next_at is not None and next_at > state.now:
            times.append(next_at)
        back = reporting_until(state, record)
        if back is not None and back > state.now:
            times.append(back)
    return times


def explain_line(state: State, record: PeerRecord) -> str | None:
    """For `explain`: the open attempt, or why none is made (None when it does not concern the peer)."""
    tried = state.hard_nat.open.get(record.key)
    if tried is not None:
        return f"hard NAT: attempt {tried.attempt} ({tried.role}) under way until {tried.deadline} ms"
    why = blocked(state, record)
    if why is None:
        return "hard NAT: an attempt may start now"
    if record.state not in attempt_states(state.policy):
        return None
    return f"hard NAT: no attempt — {why}"
