"""The agent's TOML configuration: this node, its peers, its relays, where credentials live.

This module owns reading and validating the file that ``natrelay agent --config`` takes.
It never holds a TURN password in a value that prints: the file names environment
variables or a credential file, and ``load_credentials`` reads them at startup into
``TurnCredentials`` (whose repr hides them).

    node = "a"                       # names this node's streams: node/<node>/...
    persistent_keepalive = 1         # seconds; keeps NAT mappings and TURN channels warm
    advertise_reflexive = true       # publish <public ip>:<listen port> via the rendezvous
    advertise_host = true            # publish every interface address with the listen port
    port_mapping = true              # ask the router for a mapping (UPnP IGD, NAT-PMP/PCP)
    data_plane = "shared"            # shared: WireGuard owns the public port; probes share it
                                     #   through raw sockets (docs/real-mesh.md, the default)
                                     # proxy: the agent owns the public port, WireGuard moves
                                     #   to a free loopback one; every packet crosses the agent
                                     # endpoint: WireGuard owns it; probes move its endpoint
    listen_port = 51820              # the public UDP port (WireGuard's in shared mode)
    snapshot_every = 20000           # observations between two automatic snapshots (0: never):
                                     #   status, explain and a restart read snapshot + tail
    probe_secret_env = "NATRELAY_PROBE_SECRET"   # the per-mesh secret that keys the probes
    # probe_secret_file = "/etc/natrelay/mesh.secret"

    [credentials]                    # default for every relay; a relay may override
    username_env = "NATRELAY_TURN_USER"
    password_env = "NATRELAY_TURN_PASSWORD"
    # file = "/etc/natrelay/turn.cred"   (one line: user:password)

    [policy]                         # any Policy field, over natrelay's default (its preset)
    min_direct_attempts = 2
    # hard_nat_enabled = false       # birthday punches: on by default with data_plane = shared
    # or, instead of [policy]: policy_file = "suggested-policy.toml" (natrelay whatif --sweep)

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

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import attrs

from natrelay.adapters import liveness as lv
from natrelay.adapters.mesh.turn_relay import TurnCredentials, TurnError, TurnServer
from natrelay.adapters.node import DEFAULT_SNAPSHOT_EVERY
from natrelay.adapters.policy_file import PolicyFileError, load_policy
from natrelay.core import values as v
from natrelay.core.policy import Policy
from natrelay.core.presets import natrelay as natrelay_preset

#: The data planes an agent can run (docs/real-mesh.md, "Hitless data plane").
DATA_PLANES = ("proxy", "shared", "endpoint")
DEFAULT_DATA_PLANE = "shared"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message says where."""


@attrs.frozen
class CredentialSource:
    """Where a relay's TURN credentials come from (never the credentials themselves)."""

    username_env: str | None = "NATRELAY_TURN_USER"
    password_env: str | None = "NATRELAY_TURN_PASSWORD"
    file: str | None = None

    def load(self) -> TurnCredentials:
        """The credentials; a missing or unreadable file is a `ConfigError` naming it (never its text)."""
        try:
            return TurnCredentials.from_env_or_file(
                username_env=self.username_env, password_env=self.password_env, file=self.file
            )
        except OSError as exc:
            raise ConfigError(f"cannot read the credential file {self.file}: {exc.strerror}") from None


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
    persistent_keepalive: int = lv.DEFAULT_KEEPALIVE_S
    advertise_reflexive: bool = True
    extra_candidates: tuple[str, ...] = ()
    advertise_host: bool = True
    port_mapping: bool = True
    data_plane: str = DEFAULT_DATA_PLANE
    listen_port: int = 51820
    probe_secret_env: str | None = "NATRELAY_PROBE_SECRET"
    probe_secret_file: str | None = None
    #: Observations between two automatic snapshots of the engine (None: never).
    snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY

    def probe_secret(self) -> bytes:
        """The per-mesh probe secret; a `ConfigError` names where it was looked for."""
        if self.probe_secret_file is not None:
            try:
                secret = Path(self.probe_secret_file).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the probe secret file {self.probe_secret_file}: {exc.strerror}"
                ) from None
        else:
            import os

            secret = os.environ.get(self.probe_secret_env or "", "").encode()
        if len(secret) < 16:
            where = self.probe_secret_file or f"${self.probe_secret_env}"
            raise ConfigError(
                f"probe secret ({where}): expected at least 16 bytes shared by every node of the mesh"
            )
        return secret

    def peer(self, public_key: str) -> PeerSpec | None:
        return next((p for p in self.peers if p.public_key == public_key), None)

    def relay(self, relay_id: str) -> RelaySpec | None:
        return next((r for r in self.relays if r.server.relay_id == relay_id), None)


#: Keys a config file may hold, at the top and in each table (a typo is an error, not ignored).
_TOP_KEYS = {
    "node",
    "persistent_keepalive",
    "advertise_reflexive",
    "advertise_host",
    "port_mapping",
    "data_plane",
    "listen_port",
    "snapshot_every",
    "probe_secret_env",
    "probe_secret_file",
    "candidates",
    "credentials",
    "policy",
    "policy_file",
    "peers",
    "relays",
}
_PEER_KEYS = {"name", "public_key", "allowed_ips", "endpoints", "access", "preferred_region"}
_RELAY_KEYS = {"id", "url", "region", "credentials"}
_CREDENTIAL_KEYS = {"username_env", "password_env", "file"}


def _kind(value: object) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _fail(where: str, expected: str, value: object = None, *, show: bool = True) -> ConfigError:
    """`<file>: <key>: expected ..., got ...` (the value shown only when it is no secret)."""
    got = f", got {_kind(value)}" if not show else f", got {value!r}"
    return ConfigError(f"{where}: expected {expected}{got}")


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "a table", value, show=False)
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "an array", value, show=False)
    return value


def _known_keys(data: dict[str, Any], allowed: set[str], where: str, hint: str = "") -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))}){hint}"
        )


def _string(data: dict[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _fail(f"{where}.{key}", "a string", value, show=False)
    return value


def _checked(value: object, where: str, problem: str | None, expected: str) -> None:
    if problem is not None:
        raise ConfigError(f"{where}: expected {expected}: {problem}")


def _credentials(data: Any, where: str, default: CredentialSource) -> CredentialSource:
    if data is None:
        return default
    table = _table(data, where)
    _known_keys(
        table, _CREDENTIAL_KEYS, where, " (passwords never go here: name an environment variable or a file)"
    )
    return CredentialSource(
        username_env=_string(table, "username_env", where, default.username_env),
        password_env=_string(table, "password_env", where, default.password_env),
        file=_string(table, "file", where, default.file),
    )


def _endpoints(values: Any, where: str) -> tuple[str, ...]:
    endpoints = _array(values, where)
    if len(endpoints) > v.MAX_CANDIDATES:
        raise ConfigError(f"{where}: expected at most {v.MAX_CANDIDATES} endpoints, got {len(endpoints)}")
    parsed = []
    for i, endpoint in enumerate(endpoints):
        try:
            parsed.append(v.parse_endpoint(endpoint))
        except v.InvalidValue as exc:
            raise ConfigError(
                f"{where}[{i}]: expected ip:port or [ipv6]:port, got {endpoint!r}: {exc}"
            ) from None
    return tuple(dict.fromkeys(parsed))


def _peer(raw: Any, where: str) -> PeerSpec:
    table = _table(raw, where)
    _known_keys(table, _PEER_KEYS, where)
    key = table.get("public_key")
    _checked(key, f"{where}.public_key", v.public_key_problem(key), "a WireGuard public key")
    allowed = _array(table.get("allowed_ips", []), f"{where}.allowed_ips")
    for i, cidr in enumerate(allowed):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            raise _fail(f"{where}.allowed_ips[{i}]", "a CIDR such as 10.0.0.2/32", cidr) from None
    access = table.get("access", "auto")
    if access not in ("auto", "relay_only", "direct_only"):
        raise _fail(f"{where}.access", "one of auto, relay_only, direct_only", access)
    name = _string(table, "name", where, key[:8])
    assert name is not None
    if len(name) > 200 or not name.isprintable():
        raise ConfigError(f"{where}.name: expected at most 200 printable characters")
    region = table.get("preferred_region")
    if region is not None:
        _checked(region, f"{where}.preferred_region", v.identifier_problem(region), "a region id")
    return PeerSpec(
        name=name,
        public_key=key,
        allowed_ips=tuple(allowed),
        endpoints=_endpoints(table.get("endpoints", []), f"{where}.endpoints"),
        access=access,
        preferred_region=region,
    )


def _relay(raw: Any, where: str, default_creds: CredentialSource) -> RelaySpec:
    table = _table(raw, where)
    _known_keys(table, _RELAY_KEYS, where)
    relay_id = table.get("id")
    _checked(relay_id, f"{where}.id", v.identifier_problem(relay_id), "a relay id")
    url = _string(table, "url", where)
    if url is None:
        raise ConfigError(f"{where}.url: expected a turn:host:port URL, got nothing")
    region = _string(table, "region", where, "default")
    _checked(region, f"{where}.region", v.identifier_problem(region), "a region id")
    try:
        server = TurnServer.from_url(relay_id, url, region=str(region))
    except TurnError as exc:
        raise ConfigError(f"{where}.url: expected turn:host[:port][?transport=udp]: {exc}") from None
    if not 1 <= server.port <= 65535:
        raise _fail(f"{where}.url", "a port in 1-65535", server.port)
    return RelaySpec(server, _credentials(table.get("credentials"), f"{where}.credentials", default_creds))


def parse_config(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """Validate a parsed TOML document; a `ConfigError` names `source`, the key and what was expected."""
    _known_keys(data, _TOP_KEYS, source)
    node = data.get("node")
    _checked(node, f"{source}: node", v.identifier_problem(node), "a node name")
    default_creds = _credentials(data.get("credentials"), f"{source}: credentials", CredentialSource())
    peers = [
        _peer(raw, f"{source}: peers[{i}]")
        for i, raw in enumerate(_array(data.get("peers", []), f"{source}: peers"))
    ]
    seen: dict[str, int] = {}
    for i, peer in enumerate(peers):
        if peer.public_key in seen:
            raise ConfigError(
                f"{source}: peers[{i}].public_key: expected a key not used before, "
                f"got the key of peers[{seen[peer.public_key]}]"
            )
        seen[peer.public_key] = i
    relays = [
        _relay(raw, f"{source}: relays[{i}]", default_creds)
        for i, raw in enumerate(_array(data.get("relays", []), f"{source}: relays"))
    ]
    ids = [r.server.relay_id for r in relays]
    for i, relay_id in enumerate(ids):
        if relay_id in ids[:i]:
            raise ConfigError(
                f"{source}: relays[{i}].id: expected an id not used before, got {relay_id!r} again"
            )
    data_plane = data.get("data_plane", DEFAULT_DATA_PLANE)
    if data_plane not in DATA_PLANES:
        raise _fail(f"{source}: data_plane", " or ".join(DATA_PLANES), data_plane)
    # Hard-NAT attempts (issue 16) are on by default where the data plane carries them out
    # (`shared`, the default), off elsewhere.
    policy_table = {
        "hard_nat_enabled": data_plane == "shared",
        **_table(data.get("policy", {}), f"{source}: policy"),
    }
    try:
        policy = Policy.from_dict({**_NATRELAY_DEFAULT, **policy_table})
    except (v.InvalidValue, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: policy: {exc}") from None
    where = "policy.hard_nat_enabled"
    if "policy_file" in data:
        policy, where = _policy_file(data, source), "policy_file"
    if policy.hard_nat_enabled and data_plane != "shared":  # every attempt would only time out
        raise ConfigError(
            f'{source}: {where}: its hard_nat_enabled = true needs data_plane = "shared", and data_plane '
            f'is {data_plane!r} (only data_plane = "shared" carries a hard-NAT attempt out)'
        )
    keepalive = data.get("persistent_keepalive", 1)
    if type(keepalive) is not int or not 1 <= keepalive <= 65535:
        raise _fail(f"{source}: persistent_keepalive", "an integer of seconds in 1-65535", keepalive)
    advertise = data.get("advertise_reflexive", True)
    if not isinstance(advertise, bool):
        raise _fail(f"{source}: advertise_reflexive", "true or false", advertise)
    flags = {}
    for key in ("advertise_host", "port_mapping"):
        flag = data.get(key, True)
        if not isinstance(flag, bool):
            raise _fail(f"{source}: {key}", "true or false", flag)
        flags[key] = flag
    listen_port = data.get("listen_port", 51820)
    if type(listen_port) is not int or not 1 <= listen_port <= 65535:
        raise _fail(f"{source}: listen_port", "a UDP port in 1-65535", listen_port)
    snapshot_every = data.get("snapshot_every", DEFAULT_SNAPSHOT_EVERY)
    if type(snapshot_every) is not int or not 0 <= snapshot_every <= 100_000_000:
        raise _fail(f"{source}: snapshot_every", "an integer of observations (0: never)", snapshot_every)
    return AgentConfig(
        snapshot_every=snapshot_every or None,
        advertise_host=flags["advertise_host"],
        port_mapping=flags["port_mapping"],
        data_plane=data_plane,
        listen_port=listen_port,
        probe_secret_env=_string(data, "probe_secret_env", f"{source}:", "NATRELAY_PROBE_SECRET"),
        probe_secret_file=_string(data, "probe_secret_file", f"{source}:"),
        node=node,
        peers=tuple(peers),
        relays=tuple(relays),
        policy=policy,  # type: ignore[arg-type]
        persistent_keepalive=keepalive,
        advertise_reflexive=advertise,
        extra_candidates=_endpoints(data.get("candidates", []), f"{source}: candidates"),
    )


#: The agent's policy before its [policy] table: natrelay's default, the preset the simulator
#: measures (BENCHMARKS.md), not the bare `Policy()`, which keeps what a recorded log needs
#: to re-decide as written (e.g. the relay connect timeout, the unanswered-relay window).
_NATRELAY_DEFAULT: dict[str, Any] = attrs.asdict(natrelay_preset(), recurse=False)


def _policy_file(data: dict[str, Any], source: str) -> Policy:
    """The policy of `policy_file` (a path relative to the config's folder), e.g. the one
    `natrelay whatif --sweep` suggests; a config has it or a [policy] table, not both."""
    name = data["policy_file"]
    if not isinstance(name, str) or not name:
        raise _fail(f"{source}: policy_file", "a path to a TOML policy file", name)
    if "policy" in data:
        raise ConfigError(f"{source}: policy_file: give it or a [policy] table, not both")
    path = Path(name)
    if not path.is_absolute():
        path = Path(source).parent / path
    try:
        return load_policy(str(path))
    except PolicyFileError as exc:
        raise ConfigError(f"{source}: policy_file: {exc}") from None


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
