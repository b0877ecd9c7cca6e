"""`natrelay whatif`: the recorded policy beside another one on the same recorded mesh.

Owns the comparison and its report: the figures of the recorded run (read
from the log as recorded) and of the alternative (run against the
trace-driven world, adapters/whatif), per peer and in total; the first
decision where they diverge, with both decisions, the observation each
answered and the engine's reason; how every answer of the world was found
(recorded, nearby, extrapolated by which model); and how faithfully the world
reproduces the recorded run with the recorded policy. It prints nothing
itself except through `render`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from natrelay.adapters.whatif.counterfactual import Run, run
from natrelay.adapters.whatif.figures import Figures, PeerFigures, measure
from natrelay.adapters.whatif.trace import Trace
from natrelay.adapters.whatif.trace_world import MODEL_UNTRIED_ENDPOINT, MODEL_UNUSED_RELAY, SOURCES
from natrelay.adapters.whatif.world_hard_nat import MODEL_UNTRIED_HARD_NAT
from natrelay.core.codec import to_payload
from natrelay.core.events import Event
from natrelay.core.policy import Policy
from natrelay.tools.inspect_log import printable, short


@attrs.frozen
class Divergence:
    """The first decision the two runs take differently (None where a run has no decision left)."""

    recorded_seq: int | None
    recorded: Event | None
    recorded_cause: Event | None
    alternative_seq: int | None
    alternative: Event | None
    alternative_cause: Event | None


@attrs.frozen
class Fidelity:
    """The recorded policy replayed in the trace-driven world, against the log."""

    events: int
    identical_prefix: int
    first_difference_seq: int | None

    @property
    def exact(self) -> bool:
        return self.first_difference_seq is None


@attrs.frozen
class WhatIf:
    """Everything `natrelay whatif` reports."""

    node: str
    recorded_policy: str
    alternative_policy: Policy
    recorded: Figures
    alternative: Figures
    divergence: Divergence | None
    answers: dict[tuple[str, str], int]
    extrapolated_by_peer: dict[str, int]
    policy_changes_ignored: int
    fidelity: Fidelity | None
    #: The time of the log's first event (t=0 in the report).
    origin: int
    #: Peers the log shows losing handshakes (their alternative figures depend on chance).
    lossy: frozenset[str]
    #: The alternative's run (its events), for callers that want more.
    run: Run = attrs.field(repr=False, eq=False)

    @property
    def extrapolated(self) -> int:
        return sum(n for (_, source), n in self.answers.items() if source == "extrapolated")


def what_if(trace: Trace, policy: Policy, *, fidelity: bool = True) -> WhatIf:
    """Run `policy` against the trace and compare it with the recorded run."""
    alternative = run(trace, policy)
    recorded_events = [event for _, event in trace.recorded]
    faithful = None
    if fidelity:
        again = run(trace, None)
        faithful = compare_events(trace, again.events)
    names = [p.policy.name for p in trace.policies]
    return WhatIf(
        node=trace.node,
        recorded_policy=" then ".join(dict.fromkeys(names)) or "default",
        alternative_policy=policy,
        recorded=measure(recorded_events, trace),
        alternative=measure(alternative.events, trace),
        divergence=first_divergence(trace, alternative),
        answers=dict(alternative.world.answers),
        extrapolated_by_peer=dict(alternative.world.extrapolated_by_peer),
        policy_changes_ignored=alternative.world.policy_changes_ignored,
        fidelity=faithful,
        origin=trace.recorded[0][1].at,
        lossy=trace.lossy,
        run=alternative,
    )


def compare_events(trace: Trace, events: tuple[Event, ...]) -> Fidelity:
    """How far a replay's events equal the recorded ones, in order."""
    recorded = trace.recorded
    same = 0
    for (_, want), got in zip(recorded, events, strict=False):
        if want != got:
            break
        same += 1
    exact = same == len(recorded) == len(events)
    first = None
    if not exact:
        first = recorded[same][0] if same < len(recorded) else recorded[-1][0] + 1
    return Fidelity(len(recorded), same, first)


def _decision_key(event: Event) -> tuple[str, tuple[tuple[str, Any], ...]]:
    payload = to_payload(event)
    payload.pop("reason", None)
    return event.TYPE, tuple(sorted((k, repr(v)) for k, v in payload.items()))


def first_divergence(trace: Trace, alternative: Run) -> Divergence | None:
    """The first decision (in order, reasons aside) the two runs take differently."""
    recorded: list[tuple[int, Event, Event | None]] = []
    cause: Event | None = None
    for seq, event in trace.recorded:
        if event.KIND == "decision":
            recorded.append((seq, event, cause))
        else:
            cause = event
    produced = [
        (index + 1, event, alternative.events[alternative.causes[index]])
        for index, event in enumerate(alternative.events)
        if event.KIND == "decision"
    ]
    for i in range(max(len(recorded), len(produced))):
        left = recorded[i] if i < len(recorded) else None
        right = produced[i] if i < len(produced) else None
        if left is not None and right is not None and _decision_key(left[1]) == _decision_key(right[1]):
            continue
        return Divergence(
            recorded_seq=None if left is None else left[0],
            recorded=None if left is None else left[1],
            recorded_cause=None if left is None else left[2],
            alternative_seq=None if right is None else right[0],
            alternative=None if right is None else right[1],
            alternative_cause=None if right is None else right[2],
        )
    return None


# -- output ----------------------------------------------------------------------------------

TOTALS: tuple[tuple[str, str, str], ...] = (
    ("time to first path p50", "first_path_p50_s", "s"),
    ("time to first path p95", "first_path_p95_s", "s"),
    ("time to first path p99", "first_path_p99_s", "s"),
    ("peers never on a path", "never_connected", "int"),
    ("relayed while direct known to work", "relayed_while_direct_s", "s"),
    ("path switches", "switches", "int"),
    ("probe cost: direct attempts", "probes", "int"),
    ("probe cost: relay connects", "relay_connects", "int"),
    ("time without a path (peer-s)", "without_path_s", "s"),
)


def fmt(value: float, kind: str) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if kind == "s":
        return f"{value:,.3f} s"
    return f"{int(value):,}"


def _event_json(event: Event | None) -> dict[str, Any] | None:
    return None if event is None else {"type": event.TYPE, **to_payload(event)}


def _peer_json(figures: PeerFigures) -> dict[str, Any]:
    data = attrs.asdict(figures)
    if math.isinf(data["first_path_ms"]):
        data["first_path_ms"] = None
    return data


def _clean(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def report_json(result: WhatIf) -> dict[str, Any]:
    """The whole report as JSON-able data."""
    alternative = {p.peer: p for p in result.alternative.peers}
    divergence = result.divergence
    return {
        "node": result.node,
        "recorded_policy": result.recorded_policy,
        "alternative_policy": result.alternative_policy.to_dict(),
        "totals": {
            "recorded": {k: _clean(v) for k, v in result.recorded.totals().items()},
            "alternative": {k: _clean(v) for k, v in result.alternative.totals().items()},
        },
        "peers": [
            {
                "peer": p.peer,
                "name": p.name,
                "recorded": _peer_json(p),
                "alternative": _peer_json(alternative[p.peer]) if p.peer in alternative else None,
                "extrapolated_answers": result.extrapolated_by_peer.get(p.peer, 0),
                "lost_handshakes": p.peer in result.lossy,
            }
            for p in result.recorded.peers
        ],
        "first_divergence": None
        if divergence is None
        else {
            "recorded_seq": divergence.recorded_seq,
            "recorded": _event_json(divergence.recorded),
            "recorded_cause": _event_json(divergence.recorded_cause),
            "alternative_seq": divergence.alternative_seq,
            "alternative": _event_json(divergence.alternative),
            "alternative_cause": _event_json(divergence.alternative_cause),
        },
        "answers": [
            {"kind": kind, "source": source, "count": n}
            for (kind, source), n in sorted(result.answers.items())
        ],
        "extrapolated_answers": result.extrapolated,
        "models": {
            "untried_endpoint": MODEL_UNTRIED_ENDPOINT,
            "unused_relay": MODEL_UNUSED_RELAY,
            "untried_hard_nat": MODEL_UNTRIED_HARD_NAT,
        },
        "policy_changes_ignored": result.policy_changes_ignored,
        "lossy_peers": sorted(result.lossy),
        "fidelity": None if result.fidelity is None else attrs.asdict(result.fidelity),
    }


def _describe(event: Event | None, cause: Event | None, seq: int | None, label: str, origin: int) -> str:
    if event is None:
        return f"{label}: no further decision"
    payload = to_payload(event)
    reason = payload.pop("reason", "")
    peer = payload.pop("peer", None)
    payload.pop("at", None)
    fields = ", ".join(f"{k}={v}" for k, v in payload.items() if v not in (None, ()))
    where = f"seq {seq}" if label == "recorded" else f"#{seq}"
    who = f" peer {short(peer)}" if peer else ""
    because = f" after {cause.TYPE} at t={(cause.at - origin) / 1000:.3f} s" if cause is not None else ""
    return (
        f"{label} ({where}, t={(event.at - origin) / 1000:.3f} s){who}: {event.TYPE} {fields}\n"
        f"    why: {reason}{because}"
    )


def render(result: WhatIf, console: Console, *, peers: int = 20) -> None:
    """The report for people: totals side by side, the most changed peers, the divergence, the models."""
    alt_name = result.alternative_policy.name
    table = Table(title=f"what if node {escape(printable(result.node))} had run {escape(alt_name)}")
    table.add_column("")
    table.add_column(f"recorded ({escape(result.recorded_policy)})", justify="right")
    table.add_column(f"what if ({escape(alt_name)})", justify="right")
    recorded, alternative = result.recorded.totals(), result.alternative.totals()
    for label, key, kind in TOTALS:
        table.add_row(label, fmt(recorded[key], kind), fmt(alternative[key], kind))
    console.print(table)
    if peers:
        console.print(peer_table(result, peers))
    divergence = result.divergence
    if divergence is None:
        console.print("the alternative takes every decision the recorded run took: no divergence")
    else:
        console.print("first divergence:")
        d, origin = divergence, result.origin
        for text in (
            _describe(d.recorded, d.recorded_cause, d.recorded_seq, "recorded", origin),
            _describe(d.alternative, d.alternative_cause, d.alternative_seq, "what if", origin),
        ):
            for line in text.split("\n"):
                console.print(escape(printable(line)), soft_wrap=True)
    counts: Counter[str] = Counter()
    for (_, source), n in result.answers.items():
        counts[source] += n
    answered = ", ".join(f"{counts[s]} {s}" for s in SOURCES)
    console.print(f"the world's answers to the alternative: {answered}")
    if result.extrapolated:
        console.print(
            f"[yellow]{result.extrapolated} answers extrapolated[/yellow] for "
            f"{len(result.extrapolated_by_peer)} peers (the log never answered those questions); models:\n"
            f"  endpoints: {MODEL_UNTRIED_ENDPOINT}\n  relays: {MODEL_UNUSED_RELAY}\n"
            f"  hard-NAT attempts: {MODEL_UNTRIED_HARD_NAT}",
            soft_wrap=True,
        )
    if result.lossy:
        console.print(
            f"{len(result.lossy)} peers lost handshakes in the recorded run: which ones another policy "
            "would lose is chance, so their what-if figures are one possible outcome"
        )
    if result.policy_changes_ignored:
        console.print(f"{result.policy_changes_ignored} later policy changes of the log were ignored")
    fidelity = result.fidelity
    if fidelity is not None:
        if fidelity.exact:
            console.print(
                f"fidelity: the recorded policy replayed in this world gives the log's "
                f"{fidelity.events} events exactly"
            )
        else:
            console.print(
                f"fidelity: the recorded policy replayed in this world matches the log for "
                f"{fidelity.identical_prefix} of {fidelity.events} events (first difference at seq "
                f"{fidelity.first_difference_seq})"
            )


def peer_table(result: WhatIf, limit: int) -> Table:
    """The peers whose figures changed most (all with limit < 0)."""
    alternative = {p.peer: p for p in result.alternative.peers}

    def change(p: PeerFigures) -> float:
        other = alternative.get(p.peer)
        if other is None:
            return 0.0
        first = (
            abs(other.first_path_ms - p.first_path_ms)
            if math.isfinite(other.first_path_ms) and math.isfinite(p.first_path_ms)
            else (0.0 if other.first_path_ms == p.first_path_ms else 1e12)
        )
        return (
            first
            + abs(other.relayed_while_direct_ms - p.relayed_while_direct_ms)
            + abs(other.without_path_ms - p.without_path_ms)
            + 1000 * abs(other.switches - p.switches)
        )

    rows = sorted(result.recorded.peers, key=lambda p: (-change(p), p.peer))
    if limit > 0:
        rows = rows[:limit]
    shown = (
        "every peer"
        if limit <= 0 or limit >= len(result.recorded.peers)
        else f"the {len(rows)} peers that changed most"
    )
    table = Table(title=f"per peer, recorded / what if ({shown}; --peers N, --json for all)")
    for heading in (
        "peer",
        "first path",
        "relayed while\ndirect known",
        "switches",
        "probes",
        "without path",
        "extra-\npolated",
    ):
        table.add_column(heading, justify="right" if heading != "peer" else "left")
    for p in rows:
        other = alternative.get(p.peer)
        if other is None:
            continue
        table.add_row(
            escape(printable(p.name or short(p.peer))),
            f"{fmt(p.first_path_ms / 1000, 's')} / {fmt(other.first_path_ms / 1000, 's')}",
            f"{fmt(p.relayed_while_direct_ms / 1000, 's')} / "
            f"{fmt(other.relayed_while_direct_ms / 1000, 's')}",
            f"{p.switches} / {other.switches}",
            f"{p.probes + p.relay_connects} / {other.probes + other.relay_connects}",
            f"{fmt(p.without_path_ms / 1000, 's')} / {fmt(other.without_path_ms / 1000, 's')}",
            str(result.extrapolated_by_peer.get(p.peer, 0)),
        )
    return table
