"""Intake: peers, candidates and relay announcements from outside, turned into observations.

This module owns the edge between untrusted input (rendezvous records, relay
announcements, another node's data, a config entry read at run time) and the
engine. Each function returns either the observation to feed, or an
`InputRejected` observation saying what was wrong, so the shell records the
refusal in the log like any other fact and keeps running. It never raises on
bad input, never logs and never truncates a candidate list silently.

What is refused here: an invalid public key, relay id or region; an endpoint
with port 0 or out of range, a multicast, broadcast or unspecified address,
or a non-canonical spelling it cannot fix; more than `MAX_CANDIDATES`
candidates (innernet's cap). What is refused by the engine instead, with a
recorded `ObservationRejected`: announcements that expired or claim validity
too far ahead, and unknown capability bits (they are valid events, but do not
apply).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from natrelay.core import values as v
from natrelay.core.events import CANDIDATE_KINDS, CandidatesUpdated, InputRejected, PeerAdded, RelayAnnounced

#: How much of an offending value is kept in the log.
SUBJECT_CHARS = 120

Intake = PeerAdded | CandidatesUpdated | RelayAnnounced | InputRejected


def rejected(at: int, source: str, subject: object, reason: str) -> InputRejected:
    """The refusal of `subject` from `source`, shortened to what the log should keep."""
    text = subject if isinstance(subject, str) else repr(subject)
    if len(text) > SUBJECT_CHARS:
        text = text[:SUBJECT_CHARS] + "…"
    return InputRejected(at=at, source=source, subject=text, reason=reason[:500])


def candidate_list(values: object) -> tuple[str, ...]:
    """Canonical, distinct endpoints from an outside list, or `InvalidValue` saying why not."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise v.InvalidValue(f"candidates: expected a list of ip:port, got {type(values).__name__}")
    items = list(values)
    if len(items) > v.MAX_CANDIDATES:
        raise v.InvalidValue(f"candidates: {len(items)} endpoints, at most {v.MAX_CANDIDATES} allowed")
    parsed = []
    for item in items:
        try:
            parsed.append(v.parse_endpoint(item))
        except v.InvalidValue as exc:
            raise v.InvalidValue(f"candidate {item!r}: {exc}") from None
    return tuple(dict.fromkeys(parsed))


def _key_problem(peer: object) -> str | None:
    problem = v.public_key_problem(peer)
    return None if problem is None else f"invalid public key: {problem}"


def peer_added(
    at: int,
    source: str,
    *,
    peer: object,
    candidates: object = (),
    name: object = "",
    access: object = "auto",
    preferred_region: object = None,
) -> PeerAdded | InputRejected:
    """A peer from outside, or its refusal."""
    problem = _key_problem(peer)
    if problem is not None:
        return rejected(at, source, peer, problem)
    try:
        return PeerAdded(
            at=at,
            peer=peer,  # type: ignore[arg-type]
            candidates=candidate_list(candidates),
            name=name,  # type: ignore[arg-type]
            access=access,  # type: ignore[arg-type]
            preferred_region=preferred_region,  # type: ignore[arg-type]
        )
    except (v.InvalidValue, TypeError) as exc:
        return rejected(at, source, peer, f"peer refused: {exc}")


def candidate_kinds(candidates: tuple[str, ...], kinds: object) -> tuple[str, ...]:
    """Each candidate's kind from an outside ``{endpoint: kind}`` mapping ("" when unnamed)."""
    if not isinstance(kinds, dict) or not kinds:
        return ()
    named = {}
    for endpoint, kind in kinds.items():
        try:
            named[v.parse_endpoint(endpoint)] = kind if kind in CANDIDATE_KINDS else ""
        except v.InvalidValue:
            continue
    return tuple(named.get(c, "") for c in candidates)


def candidates_updated(
    at: int, source: str, *, peer: object, candidates: object, kinds: object = None, nat_type: object = None
) -> CandidatesUpdated | InputRejected:
    """New candidates for a peer from outside, or their refusal (the subject is the peer)."""
    problem = _key_problem(peer)
    if problem is not None:
        return rejected(at, source, peer, problem)
    try:
        listed = candidate_list(candidates)
        return CandidatesUpdated(
            at=at,
            peer=peer,  # type: ignore[arg-type]
            candidates=listed,
            kinds=candidate_kinds(listed, kinds),
            nat_type=nat_type,  # type: ignore[arg-type]
        )
    except (v.InvalidValue, TypeError) as exc:
        return rejected(at, source, peer, f"candidates refused: {exc}")


def relay_announced(at: int, source: str, data: Any) -> RelayAnnounced | InputRejected:
    """A relay announcement from outside (a mapping of RelayAnnounced's fields), or its refusal.

    Validity in time and capability bits are left to the engine, which rejects
    them with a recorded `ObservationRejected`.
    """
    if not isinstance(data, dict):
        return rejected(at, source, data, f"expected a relay announcement object, got {type(data).__name__}")
    relay = data.get("relay")
    fields = {"relay", "region", "capabilities", "capacity", "address", "expires_at"}
    unknown = sorted(set(data) - fields)
    if unknown:
        return rejected(at, source, relay, f"unknown announcement fields: {', '.join(map(str, unknown))}")
    try:
        address = data.get("address")
        return RelayAnnounced(
            at=at,
            relay=relay,
            region=data.get("region"),
            capabilities=data.get("capabilities", 0),
            capacity=data.get("capacity", 100),
            address=None if address is None else v.parse_endpoint(address),
            expires_at=data.get("expires_at"),
        )
    except (v.InvalidValue, TypeError) as exc:
        return rejected(at, source, relay, f"announcement refused: {exc}")
