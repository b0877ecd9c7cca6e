"""The fleet view of one shared log: relays ranked across nodes, direct success by NAT pair,
and the peers stuck on a relay the longest.

Owns aggregating every node's replayed engine into one report. It reads the
log (each node's streams plus the fleet-wide relay streams) and never writes.
"""

from __future__ import annotations

from typing import Any

import attrs

from natrelay.core import lifecycle as lc
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import nodes_in, rebuild


@attrs.frozen
class RelayStanding:
    """One relay as the whole fleet experienced it."""

    relay: str
    region: str
    rtt_ms: int | None
    load: int
    sessions_ok: int
    sessions_failed: int
    peers_now: int

    @property
    def reliability(self) -> float | None:
        total = self.sessions_ok + self.sessions_failed
        return None if total == 0 else self.sessions_ok / total


@attrs.frozen
class NatPairCell:
    """Direct-path success between nodes behind one NAT type and peers behind another."""

    node_nat: str
    peer_nat: str
    peers: int
    direct: int

    @property
    def share(self) -> float:
        return self.direct / self.peers if self.peers else 0.0


@attrs.frozen
class StuckPeer:
    node: str
    peer: str
    name: str
    relay: str
    relayed_for_ms: int


@attrs.frozen
class FleetReport:
    nodes: tuple[str, ...]
    relays: tuple[RelayStanding, ...]
    matrix: tuple[NatPairCell, ...]
    stuck: tuple[StuckPeer, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "relays": [{**attrs.asdict(r), "reliability": r.reliability} for r in self.relays],
            "nat_matrix": [{**attrs.asdict(c), "direct_share": c.share} for c in self.matrix],
            "stuck_on_relay": [attrs.asdict(s) for s in self.stuck],
        }


def fleet_report(log: EventLog, *, stuck_limit: int = 10) -> FleetReport:
    """Replay every node of the log and aggregate what they saw."""
    nodes = tuple(nodes_in(log))
    outcomes: dict[str, list[int]] = {}
    relay_info: dict[str, tuple[str, int | None, int, int]] = {}
    carrying: dict[str, int] = {}
    cells: dict[tuple[str, str], list[int]] = {}
    stuck: list[StuckPeer] = []
    for node in nodes:
        engine, _ = rebuild(log, node)
        for relay, info in engine.registry.relays.items():
            known = relay_info.get(relay)
            if known is None or info.last_seen >= known[3]:
                relay_info[relay] = (info.region, info.rtt_ms, info.load, info.last_seen)
        for key, record in engine.peers.items():
            if record.state == lc.REMOVED:
                continue
            entry = engine.relay_cache.peers.get(key)
            if entry is not None:
                for relay, (ok, failed) in entry.stats.items():
                    counts = outcomes.setdefault(relay, [0, 0])
                    counts[0] += ok
                    counts[1] += failed
            cell = cells.setdefault((engine.local_nat, record.nat_type), [0, 0])
            cell[0] += 1
            if record.state == lc.DIRECT_CONNECTED or key in engine.direct_cache.entries:
                cell[1] += 1
            if record.state == lc.RELAY_CONNECTED and record.path is not None:
                carrying[record.path] = carrying.get(record.path, 0) + 1
                stuck.append(StuckPeer(node, key, record.name, record.path, engine.now - record.since))
    standings = []
    for relay in sorted(set(relay_info) | set(outcomes)):
        region, rtt, load, _ = relay_info.get(relay, ("?", None, 0, 0))
        ok, failed = outcomes.get(relay, [0, 0])
        standings.append(RelayStanding(relay, region, rtt, load, ok, failed, carrying.get(relay, 0)))
    standings.sort(
        key=lambda r: (
            -(r.reliability if r.reliability is not None else -1.0),
            r.rtt_ms if r.rtt_ms is not None else 1 << 30,
            r.relay,
        )
    )
    matrix = tuple(
        NatPairCell(node_nat, peer_nat, total, direct)
        for (node_nat, peer_nat), (total, direct) in sorted(cells.items())
    )
    stuck.sort(key=lambda s: (-s.relayed_for_ms, s.node, s.peer))
    return FleetReport(nodes, tuple(standings), matrix, tuple(stuck[:stuck_limit]))
