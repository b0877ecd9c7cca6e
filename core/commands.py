"""What the engine asks the shell to do.

Commands are instructions, not facts: they are not logged (the decisions that
caused them are), and executing one produces observations later. Every adapter
(WireGuard, TURN relay, simulator, in-memory) executes the same five; the two
hard-NAT commands only a data plane that carries them out (docs/hard-nat.md).
"""

from __future__ import annotations

import attrs

from .events import HardNatRole, Purpose


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


@attrs.frozen(kw_only=True)
class StartHardNatAttempt:
    """Birthday punch toward `endpoint` in `role`, within the budget, until `deadline`.

    `sockets` is the hard side's budget, `probes` and `rate_per_s` the easy side's (both
    sides' agents see the same numbers). hard: open `sockets` sockets, each sending
    authenticated probes to `endpoint`; easy: send up to `probes` probes, `rate_per_s` at
    most, from WireGuard's port to ports of `endpoint`'s address; both: the two at once.
    The first pair that meets both ways is reported (`HardNatPairMet`); the other
    sockets close at once, the relay stays the path until the engine switches.
    """

    peer: str
    attempt: int
    role: HardNatRole
    endpoint: str
    sockets: int
    probes: int
    rate_per_s: int
    deadline: int


@attrs.frozen(kw_only=True)
class StopHardNatAttempt:
    """Attempt `attempt` is over: close its sockets, stop its probes (a found path stays)."""

    peer: str
    attempt: int


Command = (
    TryDirectEndpoint
    | ConnectViaRelay
    | SwitchPath
    | CloseRelaySession
    | ForgetPeer
    | StartHardNatAttempt
    | StopHardNatAttempt
)
