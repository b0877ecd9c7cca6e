"""The agent's TOML configuration: this node, its peers, its relays, where credentials live.

This module owns reading and validating the file that ``natrelay agent --config`` takes.
It never holds a TURN password in a value that prints: the file names environment
variables or a credential file, and ``load_credentials`` reads them at startup into
``TurnCredentials`` (whose repr hides them).

    node = "a"                       # names this node's streams: node/<node>/...
    persistent_keepalive = 1         # seconds; keeps NAT mappings and TURN channels warm
    advertise_reflexive = true       # publish <public ip>:<listen port> via the rendezvous

    [credentials]                    # default for every relay; a relay may override
    username_env = "NATRELAY_TURN_USER"
    password_env = "NATRELAY_TURN_PASSWORD"
    # file = "/etc/natrelay/turn.cred"   (one line: user:password)

    [policy]                         # any natrelay.core.policy.Policy field
    min_direct_attempts = 2

    [[peers]]
    name = "b"
    public_key = "…44 base64 chars…"
    allowed_ips = ["10.77.0.2/32"]
    endpoints = []                   # known candidates; the rendezvous adds more
    access = "auto"                  # auto | relay_only | direct_only

    [[relays]]
    id = "r1"
    url = "turn:203.0.113.11:3478?transport=udp"
    region = "lab"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from ..core import values as v
from ..core.policy import Policy
from .turn_relay import TurnCredentials, TurnError, TurnServer


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message says where."""


@attrs.frozen
class CredentialSource:
    """Where a relay's TURN credentials come from (never the credentials themselves)."""

    username_env: str | None = "NATRELAY_TURN_USER"
    password_env: str | None = "NATRELAY_TURN_PASSWORD"
    file: str | None = None

    def load(self) -> TurnCredentials:
        return TurnCredentials.from_env_or_file(
            username_env=self.username_env, password_env=self.password_env, file=self.file)


@attrs.frozen
class PeerSpec:
    name: str
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoints: tuple[str, ...] = ()
    access: str = "auto"
    preferred_region: str | None = None


@attrs.frozen
class RelaySpec:
    server: TurnServer
    credentials: CredentialSource


@attrs.frozen
class AgentConfig:
    node: str
    peers: tuple[PeerSpec, ...]
    relays: tuple[RelaySpec, ...]
    policy: Policy
    persistent_keepalive: int = 1
    advertise_reflexive: bool = True
    extra_candidates: tuple[str, ...] = ()

    def peer(self, public_key: str) -> PeerSpec | None:
        return next((p for p in self.peers if p.public_key == public_key), None)

    def relay(self, relay_id: str) -> RelaySpec | None:
        return next((r for r in self.relays if r.server.relay_id == relay_id), None)


def _credentials(data: Any, where: str, default: CredentialSource) -> CredentialSource:
    if data is None:
        return default
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(data) - {"username_env", "password_env", "file"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (passwords never go here: "
                          "name an environment variable or a file)")
    return CredentialSource(
        username_env=data.get("username_env", default.username_env),
        password_env=data.get("password_env", default.password_env),
        file=data.get("file", default.file))


def _endpoints(values: Any, where: str) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: expected a list of ip:port")
    try:
        return tuple(v.parse_endpoint(e) for e in values)
    except v.InvalidValue as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """Validate a parsed TOML document."""
    node = data.get("node")
    if v.identifier_problem(node):
        raise ConfigError(f"{source}: node: {v.identifier_problem(node)}")
    default_creds = _credentials(data.get("credentials"), f"{source}: [credentials]",
                                 CredentialSource())
    peers = []
    for i, raw in enumerate(data.get("peers", [])):
        where = f"{source}: peers[{i}]"
        key = raw.get("public_key")
        problem = v.public_key_problem(key)
        if problem:
            raise ConfigError(f"{where}.public_key: {problem}")
        allowed = raw.get("allowed_ips", [])
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise ConfigError(f"{where}.allowed_ips: expected a list of CIDR strings")
        access = raw.get("access", "auto")
        if access not in ("auto", "relay_only", "direct_only"):
            raise ConfigError(f"{where}.access: {access!r} is not auto/relay_only/direct_only")
        peers.append(PeerSpec(
            name=str(raw.get("name", key[:8])), public_key=key, allowed_ips=tuple(allowed),
            endpoints=_endpoints(raw.get("endpoints", []), f"{where}.endpoints"),
            access=access, preferred_region=raw.get("preferred_region")))
    relays = []
    for i, raw in enumerate(data.get("relays", [])):
        where = f"{source}: relays[{i}]"
        relay_id = raw.get("id")
        if v.identifier_problem(relay_id):
            raise ConfigError(f"{where}.id: {v.identifier_problem(relay_id)}")
        try:
            server = TurnServer.from_url(relay_id, str(raw.get("url", "")),
                                         region=str(raw.get("region", "default")))
        except TurnError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        relays.append(RelaySpec(server, _credentials(raw.get("credentials"),
                                                     f"{where}.credentials", default_creds)))
    try:
        policy = Policy.from_dict(data.get("policy", {}))
    except (v.InvalidValue, TypeError) as exc:
        raise ConfigError(f"{source}: [policy]: {exc}") from None
    keepalive = data.get("persistent_keepalive", 1)
    if not isinstance(keepalive, int) or not 1 <= keepalive <= 65535:
        raise ConfigError(f"{source}: persistent_keepalive must be 1-65535 seconds")
    return AgentConfig(
        node=node, peers=tuple(peers), relays=tuple(relays), policy=policy,  # type: ignore[arg-type]
        persistent_keepalive=keepalive,
        advertise_reflexive=bool(data.get("advertise_reflexive", True)),
        extra_candidates=_endpoints(data.get("candidates", []), f"{source}: candidates"))


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the TOML file at ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, str(path))
