"""Simulation scenarios: the values, and reading them from TOML or JSON files.

Owns what a scenario is (local vantage NATs, the peer mix, links, relays,
outages, the dynamics of the mesh, and optional hand-written peers and events)
and turning a file into one, with errors that name the file and the key. It
never runs anything; `simulated_network` turns a scenario into events. The format is
documented in docs/scenarios.md.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from natrelay.adapters.sim.birthday import PortRules
from natrelay.adapters.sim.nat_model import NAT_TYPES

BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"
EVENT_KINDS = ("join", "leave", "rebind", "sleep", "wake", "relay_down", "relay_up")


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the file and the key."""


@attrs.frozen
class RelaySpec:
    """A relay (TURN or DERP-like) the mesh can use."""

    id: str
    region: str = "default"
    rtt_ms: int = 40
    capacity: int = 100_000
    loss: float = 0.0


@attrs.frozen
class OutageSpec:
    """A relay is down from `at_ms` for `duration_ms`."""

    relay: str
    at_ms: int
    duration_ms: int


@attrs.frozen
class PeerSpec:
    """A hand-written peer (tiny scenarios, tests)."""

    name: str
    nat: str = "port_restricted_cone"
    rtt_ms: int = 50
    loss: float = 0.0
    join_ms: int = 0
    lan: bool = False
    stale_candidate: bool = False


@attrs.frozen
class EventSpec:
    """A hand-written event: a peer joins, leaves, rebinds, sleeps, wakes (maybe on a new NAT)."""

    at_ms: int
    kind: str
    peer: str = ""
    nat: str | None = None
    relay: str = ""


@attrs.frozen
class Dynamics:
    """How the generated part of the mesh behaves over time; shares are of all peers."""

    join_window_ms: int = 30_000
    lan_share: float = 0.05
    stale_candidate_share: float = 0.3
    lossy_share: float = 0.1
    lossy_loss: float = 0.05
    rebinding_share: float = 0.1
    network_change_share: float = 0.05
    #: How long a peer that changes network sleeps: each draws a length in [low, high]
    #: (seeded per peer); sleeps of one fixed length put every waking peer in the same phase
    #: of a policy's retry cycle, which measures the cycle's period, not the policy.
    sleep_ms: tuple[int, int] = (120_000, 120_000)
    leave_share: float = 0.03
    rejoin_after_ms: int = 300_000
    candidate_report_delay_ms: int = 5_000
    #: Events of the dynamics happen in this window of the run (fractions of the duration).
    active_from: float = 0.1
    active_until: float = 0.8


@attrs.frozen
class Scenario:
    """Everything a simulation needs besides the policy and the seed."""

    name: str
    description: str = ""
    duration_ms: int = 3_600_000
    peers: int = 0
    #: One vantage (a simulated local node) per entry; peers are dealt among them round robin.
    local_nats: tuple[str, ...] = ("port_restricted_cone",)
    local_hairpinning: bool = True
    mix: tuple[tuple[str, float], ...] = (("port_restricted_cone", 1.0),)
    rtt_ms: tuple[int, int] = (20, 150)
    loss: tuple[float, float] = (0.0, 0.01)
    relays: tuple[RelaySpec, ...] = (RelaySpec("relay-1"),)
    outages: tuple[OutageSpec, ...] = ()
    dynamics: Dynamics = Dynamics()
    peer_list: tuple[PeerSpec, ...] = ()
    events: tuple[EventSpec, ...] = ()
    #: How symmetric NATs pick ports, and every NAT's mapping limit and timeout (`[nat]`):
    #: what a hard-NAT (birthday) attempt meets (issue 16).
    ports: PortRules = attrs.field(factory=PortRules)
    source: str = "<built-in>"

    def with_overrides(self, *, peers: int | None = None, duration_ms: int | None = None) -> Scenario:
        changes: dict[str, Any] = {}
        if peers is not None:
            changes["peers"] = peers
        if duration_ms is not None:
            changes["duration_ms"] = duration_ms
        return attrs.evolve(self, **changes)


# ---------------------------------------------------------------- reading


class _Reader:
    """Typed access to a parsed file that reports the file and the dotted key on error."""

    def __init__(self, source: str, data: dict[str, Any], prefix: str = "") -> None:
        self.source, self.data, self.prefix = source, data, prefix
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: key '{self.prefix}{key}': {problem}")

    def get(self, key: str, default: Any, check: Callable[[Any], Any], expected: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        try:
            return check(value)
        except (TypeError, ValueError, KeyError):
            raise self.fail(key, f"expected {expected}, got {value!r}") from None

    def sub(self, key: str) -> _Reader:
        self.seen.add(key)
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {value!r}")
        return _Reader(self.source, value, f"{self.prefix}{key}.")

    def items(self, key: str) -> list[_Reader]:
        self.seen.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.fail(key, "expected a list of tables")
        return [_Reader(self.source, item, f"{self.prefix}{key}[{i}].") for i, item in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key (see docs/scenarios.md)")


def _int(value: Any) -> int:
    """A whole number >= 0 (2.0 is 2; 2.5 peers or sessions mean nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError
    return number


def _weight(value: Any) -> float:
    """A mix weight: a number >= 0 (not a string, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError
    return float(value)


def _ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError
    return round(value * 1000)


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _nat(value: Any) -> str:
    if value not in NAT_TYPES:
        raise ValueError
    return str(value)


def _nats(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ValueError
    return tuple(_nat(item) for item in values)


def _range(check: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, Any]]:
    def parse(value: Any) -> tuple[Any, Any]:
        if not isinstance(value, int | float | list) or isinstance(value, bool):
            raise ValueError
        low, high = (value, value) if not isinstance(value, list) else value
        low, high = check(low), check(high)
        if low > high:
            raise ValueError
        return (low, high)

    return parse


_NAT_NAMES = ", ".join(NAT_TYPES)


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """A Scenario from parsed TOML/JSON; ScenarioError names `source` and the key."""
    top = _Reader(source, data)
    name = top.get("name", Path(source).stem, _str, "a non-empty string")
    description = top.get("description", "", str, "a string")
    duration_ms = top.get("duration_s", 3_600_000, _ms, "seconds >= 0")
    peers = top.get("peers", 0, _int, "a whole number of peers >= 0")
    local = top.sub("local")
    local_nats = local.get("nat", ("port_restricted_cone",), _nats, f"a NAT type or a list of: {_NAT_NAMES}")
    hairpinning = local.get("hairpinning", True, _bool, "true or false")
    local.done()
    mix_table = top.sub("mix")
    for nat in sorted(mix_table.data):
        if nat not in NAT_TYPES:
            raise mix_table.fail(nat, f"unknown NAT type; use one of {_NAT_NAMES}")
    mix = tuple((nat, mix_table.get(nat, 0.0, _weight, "a number >= 0")) for nat in sorted(mix_table.data))
    mix_table.done()
    if mix and not any(weight > 0 for _, weight in mix):
        raise top.fail("mix", "every weight is 0: no peer could be drawn")
    if not mix:
        mix = (("port_restricted_cone", 1.0),)
    links = top.sub("links")
    rtt = links.get("rtt_ms", (20, 150), _range(_int), "milliseconds or [low, high]")
    loss = links.get("loss", (0.0, 0.01), _range(_fraction), "a fraction or [low, high] in 0..1")
    links.done()
    relays = []
    for item in top.items("relays"):
        relays.append(
            RelaySpec(
                id=item.get("id", None, _str, "a relay id"),
                region=item.get("region", "default", _str, "a region name"),
                rtt_ms=item.get("rtt_ms", 40, _int, "milliseconds"),
                capacity=item.get("capacity", 100_000, _positive_int, "a whole number of sessions >= 1"),
                loss=item.get("loss", 0.0, _fraction, "a fraction in 0..1"),
            )
        )
        if relays[-1].id is None:
            raise item.fail("id", "missing")
        if relays[-1].id in {relay.id for relay in relays[:-1]}:
            raise item.fail("id", f"duplicate relay id {relays[-1].id!r}")
        item.done()
    relay_ids = {relay.id for relay in relays}
    outages = []
    for item in top.items("outages"):
        relay = item.get("relay", "", _str, "a relay id")
        if relay not in relay_ids:
            raise item.fail("relay", f"no relay {relay!r} in [[relays]]")
        outages.append(
            OutageSpec(relay, item.get("at_s", 0, _ms, "seconds"), item.get("duration_s", 60, _ms, "seconds"))
        )
        item.done()
    dyn = top.sub("dynamics")
    base = Dynamics()
    dynamics = Dynamics(
        join_window_ms=dyn.get("join_window_s", base.join_window_ms, _ms, "seconds"),
        lan_share=dyn.get("lan_share", base.lan_share, _fraction, "a fraction in 0..1"),
        stale_candidate_share=dyn.get(
            "stale_candidate_share", base.stale_candidate_share, _fraction, "a fraction in 0..1"
        ),
        lossy_share=dyn.get("lossy_share", base.lossy_share, _fraction, "a fraction in 0..1"),
        lossy_loss=dyn.get("lossy_loss", base.lossy_loss, _fraction, "a fraction in 0..1"),
        rebinding_share=dyn.get("rebinding_share", base.rebinding_share, _fraction, "a fraction in 0..1"),
        network_change_share=dyn.get(
            "network_change_share", base.network_change_share, _fraction, "a fraction in 0..1"
        ),
        sleep_ms=dyn.get("sleep_s", base.sleep_ms, _range(_ms), "seconds or [low, high]"),
        leave_share=dyn.get("leave_share", base.leave_share, _fraction, "a fraction in 0..1"),
        rejoin_after_ms=dyn.get("rejoin_after_s", base.rejoin_after_ms, _ms, "seconds"),
        candidate_report_delay_ms=dyn.get(
            "candidate_report_delay_s", base.candidate_report_delay_ms, _ms, "seconds"
        ),
        active_from=dyn.get("active_from", base.active_from, _fraction, "a fraction of the run"),
        active_until=dyn.get("active_until", base.active_until, _fraction, "a fraction of the run"),
    )
    dyn.done()
    if dynamics.active_from > dynamics.active_until:
        raise dyn.fail(
            "active_until",
            f"{dynamics.active_until} is before active_from {dynamics.active_from}: the window is empty",
        )
    shares = dynamics.rebinding_share + dynamics.network_change_share + dynamics.leave_share
    if shares > 1 + 1e-9:
        raise dyn.fail(
            "rebinding_share",
            f"rebinding_share + network_change_share + leave_share = {shares:g}: a peer does at most "
            "one of them, so they may not sum past 1",
        )
    peer_list: list[PeerSpec] = []
    for item in top.items("peer"):
        peer_list.append(
            PeerSpec(
                name=item.get("name", f"peer-{len(peer_list)}", _str, "a name"),
                nat=item.get("nat", "port_restricted_cone", _nat, f"one of {_NAT_NAMES}"),
                rtt_ms=item.get("rtt_ms", 50, _int, "milliseconds"),
                loss=item.get("loss", 0.0, _fraction, "a fraction in 0..1"),
                join_ms=item.get("join_s", 0, _ms, "seconds"),
                lan=item.get("lan", False, _bool, "true or false"),
                stale_candidate=item.get("stale_candidate", False, _bool, "true or false"),
            )
        )
        if peer_list[-1].name in {peer.name for peer in peer_list[:-1]}:
            raise item.fail("name", f"duplicate peer name {peer_list[-1].name!r}")
        item.done()
    nat_table = top.sub("nat")
    ports = PortRules(
        allocation=nat_table.get(
            "symmetric_ports",
            "random",
            lambda value: value if value in ("random", "sequential") else int("x"),
            '"random" or "sequential"',
        ),
        delta=nat_table.get("port_delta", 1, _positive_int, "a whole number >= 1"),
        mapping_limit=nat_table.get("mapping_limit", 0, _int, "a whole number of mappings (0: no limit)"),
        mapping_timeout_ms=nat_table.get("mapping_timeout_s", 120_000, _ms, "seconds"),
    )
    nat_table.done()
    names = {peer.name for peer in peer_list}
    events = []
    for item in top.items("event"):
        kind = item.get("kind", "", lambda v: v if v in EVENT_KINDS else int("x"), f"one of {EVENT_KINDS}")
        peer = item.get("peer", "", _str, "a peer name")
        relay = item.get("relay", "", _str, "a relay id")
        if kind.startswith("relay_"):
            if relay not in relay_ids:
                raise item.fail("relay", f"no relay {relay!r} in [[relays]]")
        elif peer not in names:
            raise item.fail("peer", f"no peer {peer!r} in [[peer]]")
        events.append(
            EventSpec(
                at_ms=item.get("at_s", 0, _ms, "seconds"),
                kind=kind,
                peer=peer,
                nat=item.get("nat", None, _nat, f"one of {_NAT_NAMES}"),
                relay=relay,
            )
        )
        item.done()
    top.done()
    return Scenario(
        name=name,
        description=description,
        duration_ms=duration_ms,
        peers=peers,
        local_nats=local_nats,
        local_hairpinning=hairpinning,
        mix=mix,
        rtt_ms=rtt,
        loss=loss,
        relays=tuple(relays) or (RelaySpec("relay-1"),),
        outages=tuple(outages),
        dynamics=dynamics,
        peer_list=tuple(peer_list),
        events=tuple(events),
        ports=ports,
        source=source,
    )


def builtin_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every built-in scenario, by name."""
    found = []
    for file in sorted(BUILTIN_DIR.glob("*.toml")):
        scenario = load_scenario(file)
        found.append((file.stem, scenario.description))
    return found


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario from a .toml or .json file, or a built-in by name (`matrix`, `mesh`, ...)."""
    file = Path(path)
    if not file.exists() and (BUILTIN_DIR / f"{path}.toml").exists():
        file = BUILTIN_DIR / f"{path}.toml"
    if not file.exists():
        builtins = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
        raise ScenarioError(f"{path}: no such file, and not a built-in scenario ({builtins})")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{file}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{file}: expected a table at the top level")
    return parse_scenario(data, str(file))
