"""Field vocabularies and validators of the events (kept apart so `events` stays one screenful per kind).

`events` re-exports every name here; import them from `events`.
"""

from __future__ import annotations

from typing import Any

from . import values as v

#: NAT behaviours in RFC 4787 terms, as an agent's STUN tests classify them.
NAT_TYPES = (
    "unknown",
    "none",
    "full_cone",
    "restricted_cone",
    "port_restricted_cone",
    "symmetric",
    "firewall",
    "udp_blocked",
)

#: How a node learned it may be reached at a candidate endpoint ("" when not known).
CANDIDATE_KINDS = ("", "host", "mapped", "reflexive", "configured")

#: Which side of a hard-NAT (birthday) attempt this node plays (docs/hard-nat.md): "hard"
#: opens many sockets toward the peer, "easy" sprays probes at the peer's ports, "both":
#: two symmetric NATs, each side does both.
HARD_NAT_ROLES = ("hard", "easy", "both")


def kinds(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: empty, or one kind per candidate, in the candidates' order."""
    if not isinstance(value, tuple):
        raise v.InvalidValue(f"kinds={value!r}: expected a list of candidate kinds")
    if value and len(value) != len(instance.candidates):
        raise v.InvalidValue(f"kinds: {len(value)} kinds for {len(instance.candidates)} candidates")
    for kind in value:
        if kind not in CANDIDATE_KINDS:
            raise v.InvalidValue(f"kinds: {kind!r} is not one of {', '.join(CANDIDATE_KINDS[1:])}")
