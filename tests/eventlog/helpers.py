"""Helpers of the event log tests: sample events and URL conversions."""

from __future__ import annotations

import base64
import random

from natrelay.core import events as E
from natrelay.core.policy import Policy


def libpq_url(url: str) -> str:
    """The libpq form (for psycopg) of a SQLAlchemy PostgreSQL URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def public_key(n: int) -> str:
    return base64.b64encode(n.to_bytes(32, "big")).decode()


def sample_events(count: int, seed: int = 0, peers: int = 20) -> list[tuple[str, E.Event]]:
    """`count` valid (stream, event) pairs of many types, deterministic for a seed."""
    rng = random.Random(seed)
    out: list[tuple[str, E.Event]] = []
    for i in range(count):
        at = 1_000 + i
        peer = public_key(rng.randrange(peers) + 1)
        endpoint = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:51820"
        relay = f"relay-{rng.randrange(4)}"
        kind = rng.randrange(8)
        event: E.Event
        if kind == 0:
            event = E.PeerAdded(at=at, peer=peer, candidates=(endpoint,), name=f"peer {i}")
        elif kind == 1:
            event = E.HandshakeObserved(at=at, peer=peer, endpoint=endpoint)
        elif kind == 2:
            event = E.DirectAttemptTimedOut(at=at, peer=peer, endpoint=endpoint, attempt=i % 9 + 1)
        elif kind == 3:
            event = E.RelayHealthMeasured(at=at, relay=relay, rtt_ms=rng.randrange(300), load=7)
        elif kind == 4:
            event = E.RelayChosen(
                at=at,
                peer=peer,
                relay=relay,
                deadline=at + 500,
                ranking=(E.RelayScore(relay=relay, score=0.75), E.RelayScore(relay="z", score=0.5)),
                reason="best ranked",
            )
        elif kind == 5:
            event = E.PolicySet(at=at, policy=Policy(min_direct_attempts=rng.randrange(5)))
        elif kind == 6:
            event = E.Tick(at=at)
        else:
            event = E.DirectAttemptStarted(at=at, peer=peer, endpoint=endpoint, attempt=1, deadline=at + 1000)
        out.append((E.stream_of(event, "n1"), event))
    return out
