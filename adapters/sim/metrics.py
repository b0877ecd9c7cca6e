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
  the first moment the peer is on a working direct path; a hard pairing (a
  symmetric NAT against a port-restricted cone, a firewall or another
  symmetric NAT) has a direct path, one only a birthday punch opens
  (docs/hard-nat.md): a policy that never tries one never gets there;
- relayed_share_while_direct_possible: time on a working relay while a direct
  path existed, over the time a direct path existed;
- switches_per_peer_hour: data-plane path changes (not counting a peer's
  first path) per peer-hour in the mesh;
- peak_relay_load: the most relay sessions open at once;
- recovery p50/p99: after a remote network change left a peer's path dead (a
  rebinding, waking on another network), the time some path existed until the
  peer's path worked again; never recovered: infinite;
- failover p50/p99: the same after the peer's relay went down. Kept apart from
  recovery because which peers a relay outage hits depends on the policy (one
  that relays a pair another takes direct has more, and faster, failovers), so a
  mixed percentile would compare different sets of changes;
- blackout_share: time the peer's traffic was pointed at a path that did not
  work while some path existed, over the time some path existed (a dead path
  not yet noticed, or a probe that moved WireGuard off the live path);
- over_capacity_events: connects that reached a relay with no room (the relay
  refused them "at capacity");
- hard NATs (issue 16; docs/hard-nat.md): hard_pairs, the peers whose pairing with
  the local NAT defeats a plain punch but not UDP (symmetric against a
  port-restricted cone, a firewall or a symmetric NAT); hard_direct_share, the
  share of them on a working direct path at some time after a hard-NAT attempt
  (0 for a policy that makes none); hard_met_10s_share, the share of attempts whose pair met within 10 s
  of the attempt's start; probes_per_success, easy-side probes of all attempts
  per meeting; hard_ttd p50/p95, from a peer's first attempt to its first direct
  path (never: infinite). The oracle makes no attempt (NaN: no data): it takes
  the pair direct at once (sim_oracle), which its "went direct" shows.
A metric with nothing to measure (no peer present, no network change) is NaN:
"no data", never 0. In JSON (`to_json`) an infinite value is the string "inf"
and a missing one `null`.
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
    """part / whole, or NaN ("no data") when there is nothing to divide by."""
    return part / whole if whole else math.nan


def json_number(value: Any) -> Any:
    """A float for JSON: "inf" / "-inf" for infinite ("never"), None for NaN ("no data")."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


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
    recovery_p50_s: float
    recovery_p99_s: float
    recoveries: int
    failover_p50_s: float
    failover_p99_s: float
    failovers: int
    blackout_share: float
    over_capacity_events: int
    events_appended: int
    wall_s: float
    hard_pairs: int = 0
    hard_direct_share: float = math.nan
    hard_attempts: int = 0
    hard_met_10s_share: float = math.nan
    probes_per_success: float = math.nan
    hard_ttd_p50_s: float = math.nan
    hard_ttd_p95_s: float = math.nan
    #: Not in the table: per-peer time to first path (s), and relay sessions over time.
    ttfp_samples: tuple[float, ...] = attrs.field(default=(), repr=False)
    relay_series: tuple[tuple[int, int], ...] = attrs.field(default=(), repr=False)
    #: Not in the table: each recovery and failover as (peer's account index, when the change
    #: came, s), so that two runs of one scenario and seed can be compared change by change.
    recovery_samples: tuple[tuple[int, int, float], ...] = attrs.field(default=(), repr=False)
    failover_samples: tuple[tuple[int, int, float], ...] = attrs.field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        for name in ("ttfp_samples", "relay_series", "recovery_samples", "failover_samples"):
            data.pop(name)
        return {k: json_number(v) for k, v in data.items()}


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
    over_capacity: int = 0,
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
    recovered = tuple((i, at, ms / 1000) for i, a in enumerate(accounts) for at, ms in a.recoveries)
    failed_over = tuple((i, at, ms / 1000) for i, a in enumerate(accounts) for at, ms in a.failovers)
    recoveries = [s for _, _, s in recovered]
    failovers = [s for _, _, s in failed_over]
    series = relay_series(load_changes)
    hard = [a for a in accounts if a.hard_pair]
    tried = [a for a in hard if a.hard_first_start is not None]
    ttd = [
        (a.hard_direct_at - a.hard_first_start) / 1000 if a.hard_direct_at is not None else INF
        for a in tried
        if a.hard_first_start is not None
    ]
    attempts = sum(a.hard_attempts for a in accounts)
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
        recovery_p50_s=percentile(recoveries, 0.50),
        recovery_p99_s=percentile(recoveries, 0.99),
        recoveries=len(recoveries),
        failover_p50_s=percentile(failovers, 0.50),
        failover_p99_s=percentile(failovers, 0.99),
        failovers=len(failovers),
        blackout_share=_share(sum(a.blackout_ms for a in accounts), sum(a.possible_ms for a in accounts)),
        over_capacity_events=over_capacity,
        hard_pairs=len(hard),
        hard_direct_share=_share(sum(a.hard_direct_at is not None for a in hard), len(hard)),
        hard_attempts=attempts,
        hard_met_10s_share=_share(sum(a.hard_met_10s for a in accounts), attempts),
        probes_per_success=_share(sum(a.hard_probes for a in accounts), sum(a.hard_met for a in accounts)),
        hard_ttd_p50_s=percentile(ttd, 0.50),
        hard_ttd_p95_s=percentile(ttd, 0.95),
        events_appended=events_appended,
        wall_s=wall_s,
        ttfp_samples=tuple(ttfp),
        recovery_samples=recovered,
        failover_samples=failed_over,
        relay_series=series,
    )


#: Metrics where more is better; every other number in the table is better lower.
HIGHER_IS_BETTER = frozenset({"connectivity", "connectivity_possible", "connected_time_share"})
#: Not outcomes (sizes, costs of the run itself): never compared between policies.
NOT_COMPARED = frozenset(
    {"name", "peers", "recoveries", "failovers", "events_appended", "wall_s"}
    # hard-NAT attempts (issue 16): the oracle knows only what a plain punch opens
    | {"hard_pairs", "hard_direct_share", "hard_attempts", "hard_met_10s_share", "probes_per_success"}
    | {"hard_ttd_p50_s", "hard_ttd_p95_s"}
)


def comparable(metrics: RunMetrics) -> dict[str, float]:
    """The outcome metrics of a run, by name (what the oracle bounds)."""
    return {
        name: value
        for name, value in attrs.asdict(metrics, recurse=False).items()
        if name not in NOT_COMPARED and isinstance(value, int | float)
    }


#: What a run spends to connect, not what it achieves: a policy that connects fewer peers
#: spends less (innernet uses no relay at all), so spending less only counts as beating
#: another run that connected no less (see `beats`).
COSTS = frozenset({"switches_per_peer_hour", "relayed_share_while_direct_possible", "peak_relay_load"})


#: Shares closer than this (0.001 percentage points) are a tie: which of several peers
#: waiting for a full relay gets the slot that frees moves a share by ~1e-6.
SHARE_TIE = 1e-5


#: Percentiles over the changes that left a path dead, which differ between runs: compared on
#: the changes both runs lost a path to (`paired`).
PER_CHANGE = {
    "recovery_p50_s": ("recovery", "p50"),
    "recovery_p99_s": ("recovery", "p99"),
    "failover_p50_s": ("failover", "p50"),
    "failover_p99_s": ("failover", "p99"),
}


def beats(policy: RunMetrics, bound: RunMetrics) -> list[str]:
    """The metrics on which `policy` does strictly better than `bound` (for the oracle: none).
    Recovery and failover percentiles are compared on the changes both lost a path to: each
    run's own set differs (matrix seed 3: natrelay's p99 5.18 s over its 152 changes, the
    oracle's 10.07 s over its 138, while on every change both had the oracle was as fast)."""
    found = []
    ours, theirs = comparable(policy), comparable(bound)
    pairs = {kind: paired(policy, bound, kind) for kind in ("recovery", "failover")}
    share = "connected_time_share"
    delivered = not better(share, theirs[share], ours[share])
    for name, value in ours.items():
        against = theirs[name]
        if name in COSTS and not delivered:
            continue
        if name.endswith("_share") and abs(value - against) < SHARE_TIE:
            continue
        if name in PER_CHANGE:
            kind, rank = PER_CHANGE[name]
            value, against = getattr(pairs[kind], f"ours_{rank}_s"), getattr(pairs[kind], f"theirs_{rank}_s")
        if better(name, value, against):
            found.append(f"{name}: {policy.name} {value!r}, {bound.name} {against!r}")
    return found


def better(name: str, a: float, b: float) -> bool:
    """Is `a` strictly better than `b` on metric `name`? NaN ("no data") is never better."""
    if math.isnan(a) or math.isnan(b):
        return False
    return a > b if name in HIGHER_IS_BETTER else a < b


def best_of(first: RunMetrics, second: RunMetrics) -> RunMetrics:
    """Metric by metric, the better of two runs (the oracle row: each metric's physical limit).

    The samples behind the plot come from `first`; each change's recovery (and failover) is
    the faster of the two runs', so that `paired` compares a policy with the limit per change.
    """
    changes: dict[str, Any] = {}
    for name, value in comparable(second).items():
        if better(name, value, getattr(first, name)):
            changes[name] = value
    changes["wall_s"] = first.wall_s + second.wall_s
    for kind in ("recovery_samples", "failover_samples"):
        fastest: dict[tuple[int, int], float] = {}
        for index, at, took in (*getattr(first, kind), *getattr(second, kind)):
            fastest[(index, at)] = min(took, fastest.get((index, at), math.inf))
        changes[kind] = tuple((index, at, took) for (index, at), took in sorted(fastest.items()))
    return attrs.evolve(first, **changes)


@attrs.frozen
class Paired:
    """Two runs of one scenario and seed on the changes both had to recover from (issue 13).

    Which changes leave a path dead depends on the policy (a pair one policy relays, and whose
    relay outlives a rebinding, another takes direct), so each run's own percentiles compare
    different sets of changes; these compare the same ones, and count the rest apart.
    """

    common: int
    ours_p50_s: float
    ours_p99_s: float
    theirs_p50_s: float
    theirs_p99_s: float
    faster: int
    slower: int
    only_ours: int
    only_theirs: int


def paired(ours: RunMetrics, theirs: RunMetrics, kind: str = "recovery") -> Paired:
    """`ours` against `theirs` on the changes (peer, moment) both recovered from; `kind` is
    "recovery" (remote network changes) or "failover" (a relay went down)."""
    mine = {(i, at): s for i, at, s in getattr(ours, f"{kind}_samples")}
    other = {(i, at): s for i, at, s in getattr(theirs, f"{kind}_samples")}
    both = sorted(mine.keys() & other.keys())
    a, b = [mine[k] for k in both], [other[k] for k in both]
    return Paired(
        common=len(both),
        ours_p50_s=percentile(a, 0.50),
        ours_p99_s=percentile(a, 0.99),
        theirs_p50_s=percentile(b, 0.50),
        theirs_p99_s=percentile(b, 0.99),
        faster=sum(x < y for x, y in zip(a, b, strict=True)),
        slower=sum(x > y for x, y in zip(a, b, strict=True)),
        only_ours=len(mine.keys() - other.keys()),
        only_theirs=len(other.keys() - mine.keys()),
    )
