"""Path-quality metrics of a simulated run, computed from the simulator's ground truth.

Owns the definitions (docs/policies.md repeats them for readers):
- connectivity: at the end of the run, the share of peers in the mesh whose
  data-plane path physically works; `connectivity_possible` restricts to the
  peers for which some path (direct or relay) exists at that moment;
- connected_time_share: the share of the time some path existed during which
  the peer's path worked (outages and detection delays count here);
- time to first path (ttfp): from a peer's first join to the first moment its
  data plane works, for peers with a possible path at join; a peer never
  connected counts as infinite (it lands in the top percentiles);
- time to direct path (ttdp): from the first moment a direct path exists to
  the first moment the peer is on a working direct path;
- relayed_share_while_direct_possible: time on a working relay while a direct
  path existed, over the time a direct path existed;
- switches_per_peer_hour: data-plane path changes (not counting a peer's
  first path) per peer-hour in the mesh;
- peak_relay_load: the most relay sessions open at once.
It never runs a simulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from natrelay.adapters.sim.sim_model import Account

INF = math.inf


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; `values` may hold infinities (never connected)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


@attrs.frozen
class RunMetrics:
    """Everything the benchmark reports about one policy on one scenario."""

    name: str
    peers: int
    connectivity: float
    connectivity_possible: float
    connected_time_share: float
    ttfp_p50_s: float
    ttfp_p95_s: float
    ttfp_p99_s: float
    ttdp_p50_s: float
    ttdp_p95_s: float
    relayed_share_while_direct_possible: float
    switches_per_peer_hour: float
    peak_relay_load: int
    events_appended: int
    wall_s: float
    #: Not in the table: per-peer time to first path (s), and relay sessions over time.
    ttfp_samples: tuple[float, ...] = attrs.field(default=(), repr=False)
    relay_series: tuple[tuple[int, int], ...] = attrs.field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data.pop("ttfp_samples")
        data.pop("relay_series")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def relay_series(changes: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """(time, open sessions) after each change, closes before opens at the same instant."""
    level = 0
    series: list[tuple[int, int]] = []
    for at, delta in sorted(changes):
        level += delta
        if series and series[-1][0] == at:
            series[-1] = (at, level)
        else:
            series.append((at, level))
    return tuple(series)


def compute(
    name: str,
    accounts: Sequence[Account],
    load_changes: Iterable[tuple[int, int]],
    *,
    events_appended: int = 0,
    wall_s: float = 0.0,
) -> RunMetrics:
    """The metrics of a finished run (every account closed at the end time)."""
    present = [a for a in accounts if a.present]
    possible = [a for a in present if a.possible]
    ttfp = [
        (a.first_path_at - a.first_join_at) / 1000 if a.first_path_at is not None else INF
        for a in accounts
        if a.possible_at_join and a.first_join_at is not None
    ]
    ttdp = [
        (a.first_direct_at - a.first_direct_possible_at) / 1000 if a.first_direct_at is not None else INF
        for a in accounts
        if a.first_direct_possible_at is not None
    ]
    peer_hours = sum(a.present_ms for a in accounts) / 3_600_000
    series = relay_series(load_changes)
    return RunMetrics(
        name=name,
        peers=len(accounts),
        connectivity=_share(sum(a.working for a in present), len(present)),
        connectivity_possible=_share(sum(a.working for a in possible), len(possible)),
        connected_time_share=_share(
            sum(a.connected_possible_ms for a in accounts), sum(a.possible_ms for a in accounts)
        ),
        ttfp_p50_s=percentile(ttfp, 0.50),
        ttfp_p95_s=percentile(ttfp, 0.95),
        ttfp_p99_s=percentile(ttfp, 0.99),
        ttdp_p50_s=percentile(ttdp, 0.50),
        ttdp_p95_s=percentile(ttdp, 0.95),
        relayed_share_while_direct_possible=_share(
            sum(a.relayed_while_direct_ms for a in accounts), sum(a.direct_possible_ms for a in accounts)
        ),
        switches_per_peer_hour=_share(sum(a.switches for a in accounts), peer_hours),
        peak_relay_load=max((level for _, level in series), default=0),
        events_appended=events_appended,
        wall_s=wall_s,
        ttfp_samples=tuple(ttfp),
        relay_series=series,
    )
