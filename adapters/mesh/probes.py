"""Path probes: the authenticated ping/pong two agents exchange on WireGuard's public port.

This module owns the wire format of the probes and nothing else (no sockets, no clock):
the path proxy (``path_proxy``) sends and answers them, and uses them to confirm a direct
path before any WireGuard packet is sent over it.

    magic "NRPRB" 0x01 (6) | type (1) | sender public key (32) | txid (12)
        | observed address (18: IPv6 or v4-mapped, port; pong only) | MAC (16)

- The magic's first byte (0x4e) can never start a WireGuard message (its first byte is a
  message type 1-4 followed by three zero bytes), so the proxy tells probes and WireGuard
  packets apart by their first six bytes, as Tailscale's disco does with "TS💬".
- The MAC is HMAC-SHA256 truncated to 16 bytes, keyed per pair of peers:
  ``pair_key = HMAC-SHA256(mesh secret, "natrelay probe v1" | sorted raw public keys)``.
  Both agents of a pair derive the same key from the per-mesh secret in their config and
  the two public keys; someone outside the mesh knows neither the secret nor, so, any
  pair key. Why a shared secret rather than a static Diffie-Hellman of the WireGuard keys
  (what NetBird/Tailscale get from their own key pairs): the agent never holds
  WireGuard's private key (it reads the interface through `wg`/UAPI, which hides it),
  and a mesh secret is one more line of configuration, like the TURN credentials. The
  cost: every member of the mesh can forge probes for every pair; a member could already
  disrupt the mesh in worse ways (it holds relay credentials and writes the rendezvous).
- A pong is only accepted for a txid this node sent to exactly that address and has not
  seen answered yet (``PendingPings``): a replayed or forged pong redirects nothing.
- Message types: PING (answer me), PONG (the answer, with the address the ping came
  from, like a STUN response), CALL (sent through the relay: "I am probing you now,
  probe me back", Tailscale's CallMeMaybe, so both NATs open their mappings together).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from typing import Literal

import attrs

MAGIC = b"NRPRB\x01"
PING, PONG, CALL = 1, 2, 3
KEY_LEN = 32
TXID_LEN = 12
ADDR_LEN = 18
MAC_LEN = 16
_HEAD = len(MAGIC) + 1 + KEY_LEN + TXID_LEN
MessageType = Literal[1, 2, 3]


class ProbeError(ValueError):
    """A datagram that starts like a probe but is not a valid one (the reason says why)."""


@attrs.frozen
class Probe:
    """A decoded, authenticated probe."""

    kind: int
    #: The sender's WireGuard public key (base64, as everywhere else).
    sender: str
    txid: bytes
    #: PONG only: where the answered ping came from, as the answering node saw it.
    observed: tuple[str, int] | None = None


def looks_like_probe(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def raw_key(public_key: str) -> bytes:
    raw = base64.b64decode(public_key, validate=True)
    if len(raw) != KEY_LEN:
        raise ProbeError(f"a WireGuard public key is {KEY_LEN} bytes, got {len(raw)}")
    return raw


def pair_key(secret: bytes, a: str, b: str) -> bytes:
    """The MAC key of the pair (a, b); the same for (b, a)."""
    first, second = sorted((raw_key(a), raw_key(b)))
    return hmac.new(secret, b"natrelay probe v1" + first + second, hashlib.sha256).digest()


def new_txid() -> bytes:
    return secrets.token_bytes(TXID_LEN)


def _addr_bytes(addr: tuple[str, int]) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + int(addr[1]).to_bytes(2, "big")


def _addr_from(raw: bytes) -> tuple[str, int]:
    ip = ipaddress.IPv6Address(raw[:16])
    host = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    return host, int.from_bytes(raw[16:18], "big")


def encode(kind: int, sender: str, key: bytes, txid: bytes, observed: tuple[str, int] | None = None) -> bytes:
    """One probe datagram from ``sender``, authenticated with the pair ``key``."""
    if len(txid) != TXID_LEN:
        raise ProbeError(f"txid must be {TXID_LEN} bytes")
    body = MAGIC + bytes([kind]) + raw_key(sender) + txid
    if kind == PONG:
        if observed is None:
            raise ProbeError("a pong carries the address the ping came from")
        body += _addr_bytes(observed)
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def sender_of(data: bytes) -> str:
    """The claimed sender of a probe (not yet authenticated): picks the pair key."""
    if len(data) < _HEAD + MAC_LEN or not looks_like_probe(data):
        raise ProbeError("too short or no magic")
    return base64.b64encode(data[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_LEN]).decode()


def decode(data: bytes, key: bytes) -> Probe:
    """Check the MAC with the pair ``key`` and decode; ``ProbeError`` when anything is off."""
    sender = sender_of(data)
    kind = data[len(MAGIC)]
    expected = _HEAD + (ADDR_LEN if kind == PONG else 0) + MAC_LEN
    if kind not in (PING, PONG, CALL):
        raise ProbeError(f"unknown probe type {kind}")
    if len(data) != expected:
        raise ProbeError(f"a probe of type {kind} is {expected} bytes, got {len(data)}")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]):
        raise ProbeError("bad MAC")
    txid = data[len(MAGIC) + 1 + KEY_LEN : _HEAD]
    observed = _addr_from(data[_HEAD : _HEAD + ADDR_LEN]) if kind == PONG else None
    return Probe(kind=kind, sender=sender, txid=txid, observed=observed)


@attrs.define
class PendingPings:
    """Pings sent and not yet answered: txid -> (peer, address, sent at)."""

    max_age: float = 10.0
    _sent: dict[bytes, tuple[str, tuple[str, int], float]] = attrs.field(factory=dict)

    def add(self, txid: bytes, peer: str, addr: tuple[str, int], now: float) -> None:
        self._sent[txid] = (peer, addr, now)
        if len(self._sent) > 4096:
            self.expire(now)

    def expire(self, now: float) -> None:
        for txid in [t for t, (_p, _a, at) in self._sent.items() if now - at > self.max_age]:
            del self._sent[txid]

    def answer(self, probe: Probe, addr: tuple[str, int], now: float) -> float | None:
        """The round trip (s) if ``probe`` answers a ping sent to ``addr`` by its sender; else None."""
        sent = self._sent.get(probe.txid)
        if sent is None:
            return None
        peer, to, at = sent
        if peer != probe.sender or to != addr or now - at > self.max_age:
            return None
        del self._sent[probe.txid]
        return now - at
