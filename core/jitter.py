"""Deterministic pseudo-randomness from stable inputs.

The engine must decide the same way on every replay, so it never draws from a
generator: jitter is a hash of stable keys (peer key, round number).
"""

from __future__ import annotations

import hashlib


def unit_hash(*parts: str | int) -> float:
    """A number in [0, 1) that depends only on `parts`."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
