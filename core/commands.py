"""What the engine asks the shell to do.

Commands are instructions, not facts: they are not logged (the decisions that
caused them are), and executing one produces observations later. Every adapter
(WireGuard, TURN relay, simulator, in-memory) executes the same five.
"""

from __future__ import annotations

import attrs

from .events import Purpose


@attrs.frozen(kw_only=True)
class TryDirectEndpoint:
    """Point the peer at `endpoint` and start a handshake now; report by `deadline`."""

    peer: str
    endpoint: str
    attempt: int
    deadline: int
    purpose: Purpose = "connect"


@attrs.frozen(kw_only=True)
class ConnectViaRelay:
    """Open a session to the peer through `relay`; report by `deadline`."""

    peer: str
    relay: str
    deadline: int


@attrs.frozen(kw_only=True)
class SwitchPath:
    """Send the peer's traffic over this path: a direct `endpoint`, or `relay`'s session."""

    peer: str
    endpoint: str | None = None
    relay: str | None = None


@attrs.frozen(kw_only=True)
class CloseRelaySession:
    """Tear down the peer's session through `relay` (`session` None: a pending connect)."""

    peer: str
    relay: str
    session: str | None = None


@attrs.frozen(kw_only=True)
class ForgetPeer:
    """The peer left the mesh: remove it from the data plane."""

    peer: str


Command = TryDirectEndpoint | ConnectViaRelay | SwitchPath | CloseRelaySession | ForgetPeer
