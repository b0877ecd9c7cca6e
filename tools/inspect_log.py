"""Reading a log for humans: status rows, a peer's timeline, and the plain-words explanation.

Owns turning replayed state and stored events into rows and sentences. It
prints nothing itself (the CLI does), so every view is testable as data.
Every explanation line cites the seq of the event it rests on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from natrelay.core import lifecycle as lc
from natrelay.core.codec import to_payload
from natrelay.core.engine import Engine
from natrelay.core.events import (
    CandidatesUpdated,
    DirectAttemptStarted,
    DirectAttemptTimedOut,
    DirectPathSelected,
    DirectRoundFailed,
    Event,
    HandshakeObserved,
    HardNatAttemptFailed,
    HardNatAttemptStarted,
    HardNatAttemptSucceeded,
    ObservationRejected,
    PathLost,
    PathUpgraded,
    PeerAdded,
    PeerRemoved,
    RelayAbandoned,
    RelayChosen,
    RelayEligibilityReached,
    RelayPathSelected,
    RelaySessionClosed,
    RelaySessionEstablished,
    RelaySessionFailed,
    RelayUnavailable,
)
from natrelay.core.hard_nat import explain_line
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import nodes_in


class LookupError_(Exception):
    """A peer or node named on the command line is not in the log."""


def choose_node(log: EventLog, node: str | None) -> str:
    """The node to show: the one named, or the only one in the log."""
    nodes = nodes_in(log)
    if node is not None:
        if node not in nodes:
            known = ", ".join(nodes) or "none"
            raise LookupError_(f"node {node!r} has no events in this log (nodes: {known})")
        return node
    if not nodes:
        raise LookupError_("the log has no node streams yet (is it a natrelay log?)")
    if len(nodes) > 1:
        raise LookupError_(f"the log holds several nodes ({', '.join(nodes)}): pick one with --node")
    return nodes[0]


def resolve_peer(engine: Engine, text: str) -> str:
    """A peer by full key, unique key prefix, or name."""
    if text in engine.peers:
        return text
    by_name = [key for key, record in engine.peers.items() if record.name and record.name == text]
    matches = by_name or [key for key in engine.peers if key.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError_(f"no peer {text!r} in this log")
    raise LookupError_(f"{text!r} matches {len(matches)} peers; give more of the key")


def printable(text: str) -> str:
    """The text with control characters (terminal escapes included) made visible, on one line.

    Names, regions, reasons and paths come from outside (peers, relays, a hostile
    log); every human view here passes them through this, so ESC, CSI or OSC
    sequences print as `\\x1b[...` instead of driving the terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short(key: str) -> str:
    return key[:10] + "…"


def seconds(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 10_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms // 1000} s"
    return f"{ms / 3_600_000:.1f} h"


@attrs.frozen
class StatusRow:
    peer: str
    name: str
    state: str
    path: str
    attempts: int
    handshake_age_ms: int | None
    since_ms: int

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def status_rows(engine: Engine) -> list[StatusRow]:
    """One row per peer, in key order; ages are relative to the log's last time."""
    rows = []
    now = engine.now
    for key, record in sorted(engine.peers.items()):
        if record.state == lc.RELAY_CONNECTED:
            path = f"relay {record.path}"
        elif record.state == lc.DIRECT_CONNECTED:
            path = f"direct {record.path}"
        elif record.relay_pending:
            path = f"connecting via {record.relay_pending}"
        else:
            path = "-"
        seen = record.last_handshake_at
        if record.state not in lc.CONNECTED_STATES:
            seen = record.direct_seen_at
        rows.append(
            StatusRow(
                peer=key,
                name=printable(record.name),
                state=record.state,
                path=printable(path),
                attempts=engine.attempts.attempts(key),
                handshake_age_ms=None if seen is None else now - seen,
                since_ms=record.since,
            )
        )
    return rows


def peer_events(log: EventLog, node: str, peer: str) -> Iterator[tuple[int, Event]]:
    for seq, _stream, event in log.read_events(streams=[f"node/{node}/peer/{peer}"]):
        yield seq, event


def timeline_rows(log: EventLog, node: str, peer: str) -> list[tuple[int, int, str, str, str]]:
    """(seq, time ms, kind, type, details) for every event of the peer."""
    rows = []
    for seq, event in peer_events(log, node, peer):
        payload = to_payload(event)
        for drop in ("at", "peer"):
            payload.pop(drop, None)
        details = ", ".join(f"{k}={_compact(v)}" for k, v in payload.items() if v not in (None, "", ()))
        rows.append((seq, event.at, event.KIND, event.TYPE, printable(details)))
    return rows


def _compact(value: Any) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "relay" in value[0]:
            return "[" + ", ".join(f"{item['relay']}:{item['score']:.3f}" for item in value) + "]"
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def explain_lines(log: EventLog, node: str, peer: str, engine: Engine, *, full: bool = False) -> list[str]:
    """Why the peer is on its path, in plain words, each line citing its seq.

    By default the story starts at the last time the peer (re)entered the
    lifecycle or lost a path, which is what explains the present; `full`
    tells the whole history.
    """
    story: list[tuple[int, Event, str]] = []
    kinds: dict[str, str] = {}
    for seq, event in peer_events(log, node, peer):
        if isinstance(event, PeerAdded | CandidatesUpdated):
            kinds = {c: k for c, k in zip(event.candidates, event.kinds, strict=False) if k}
        if isinstance(event, DirectAttemptStarted) and event.purpose == "connect" and not full:
            continue  # the round's failure (or success) names the endpoints it tried
        line = _sentence(event, kinds)
        if line is None:
            continue
        if not full and isinstance(event, PeerAdded | PathLost):
            story = []
        story.append((seq, event, line))
    told = [(seq, text) for seq, _, text in story] if full else _fold_repeats(story)
    lines = [f"seq {seq:>7}  {text}" for seq, text in told]
    lines.append(_present(engine, peer, engine.peers[peer]))
    return [printable(line) for line in lines]


def _is_repeat(event: Event) -> bool:
    return isinstance(event, DirectRoundFailed | DirectAttemptStarted) and (
        event.purpose == "upgrade_probe" or isinstance(event, DirectRoundFailed)
    )


def _fold_repeats(story: list[tuple[int, Event, str]]) -> list[tuple[int, str]]:
    """Runs of more than three failed rounds or probes become first, a summary line, last."""
    folded: list[tuple[int, str]] = []
    run: list[tuple[int, Event, str]] = []

    def close_run() -> None:
        if len(run) > 3:
            first, last = run[0], run[-1]
            folded.append((first[0], first[2]))
            folded.append((run[1][0], f"… {len(run) - 2} more like these, seq {run[1][0]}-{run[-2][0]} …"))
            folded.append((last[0], last[2]))
        else:
            folded.extend((seq, text) for seq, _, text in run)
        run.clear()

    for item in story:
        if _is_repeat(item[1]):
            run.append(item)
        else:
            close_run()
            folded.append((item[0], item[2]))
    close_run()
    return folded


def _named(endpoint: str, kinds: dict[str, str]) -> str:
    """``endpoint`` with its candidate kind when known: "10.1.0.2:51820 (host)"."""
    kind = kinds.get(endpoint)
    return f"{endpoint} ({kind})" if kind else endpoint


def _sentence(event: Event, kinds: dict[str, str] | None = None) -> str | None:
    at = f"at {seconds(event.at)}"
    kinds = kinds or {}
    if isinstance(event, PeerAdded):
        cands = ", ".join(_named(c, kinds) for c in event.candidates) or "none"
        return f"{at}: peer added ({event.access}); candidates: {cands}"
    if isinstance(event, CandidatesUpdated):
        cands = ", ".join(_named(c, kinds) for c in event.candidates) or "none"
        return f"{at}: candidates now: {cands}"
    if isinstance(event, PeerRemoved):
        return f"{at}: peer removed from the mesh"
    if isinstance(event, DirectAttemptStarted):
        if event.purpose == "upgrade_probe":
            return f"{at}: probed {_named(event.endpoint, kinds)} for a direct path (round {event.attempt})"
        return f"{at}: tried {_named(event.endpoint, kinds)} directly — {event.reason}"
    if isinstance(event, DirectAttemptTimedOut):
        return f"{at}: {event.endpoint} did not answer (round {event.attempt})"
    if isinstance(event, DirectRoundFailed):
        what = "probe round" if event.purpose == "upgrade_probe" else "direct round"
        return f"{at}: {what} {event.attempt} failed — {event.reason}"
    if isinstance(event, RelayEligibilityReached):
        return f"{at}: relay became allowed — {event.reason}"
    if isinstance(event, RelayChosen):
        others = ", ".join(f"{s.relay} {s.score:.3f}" for s in event.ranking)
        return f"{at}: chose relay {event.relay} — {event.reason}; ranking: {others}"
    if isinstance(event, RelayAbandoned):
        return f"{at}: gave up on relay {event.relay} — {event.reason}"
    if isinstance(event, RelayUnavailable):
        return f"{at}: no relay to use — {event.reason}; retry at {seconds(event.retry_at)}"
    if isinstance(event, RelaySessionFailed):
        why = f": {event.reason}" if event.reason else ""
        return f"{at}: relay {event.relay} could not open a session{why}"
    if isinstance(event, RelaySessionEstablished):
        return f"{at}: relay {event.relay} established session {event.session}"
    if isinstance(event, RelayPathSelected):
        return f"{at}: now relayed through {event.relay} (relayed, session {event.session})"
    if isinstance(event, DirectPathSelected):
        return f"{at}: now direct at {_named(event.endpoint, kinds)} — {event.reason}"
    if isinstance(event, PathUpgraded):
        to = _named(event.endpoint, kinds)
        return f"{at}: upgraded from relay {event.relay} to direct {to} — {event.reason}"
    if isinstance(event, PathLost):
        return f"{at}: lost the {event.path_kind} path {event.path} — {event.reason}"
    if isinstance(event, RelaySessionClosed):
        return f"{at}: relay session {event.session} via {event.relay} closed {event.reason}".rstrip()
    if isinstance(event, ObservationRejected):
        return f"{at}: ignored a {event.observation} — {event.reason}"
    if isinstance(event, HardNatAttemptStarted):
        return f"{at}: hard-NAT attempt {event.attempt} as the {event.role} side — {event.reason}"
    if isinstance(event, HardNatAttemptSucceeded | HardNatAttemptFailed):
        outcome = "met" if isinstance(event, HardNatAttemptSucceeded) else "failed"
        return f"{at}: hard-NAT attempt {event.attempt} {outcome} — {event.reason}"
    if isinstance(event, HandshakeObserved):
        return None  # renewals would drown the story; `timeline` shows them
    return None


def _present(engine: Engine, peer: str, record: Any) -> str:
    state = record.state
    since = seconds(record.since)
    if state == lc.DIRECT_CONNECTED:
        return f"now: direct at {record.path} since {since}"
    if state == lc.RELAY_CONNECTED:
        probe = seconds(record.next_probe_at) if record.next_probe_at is not None else "-"
        hard = explain_line(engine, record)
        more = f"\n{hard}" if hard else ""
        return f"now: relayed through {record.path} since {since}; next direct probe at {probe}{more}"
    if state == lc.REMOVED:
        return f"now: removed since {since}"
    attempts = engine.attempts.attempts(peer)
    return (
        f"now: {state} since {since}; {attempts} failed direct round(s), "
        f"threshold {engine.policy.min_direct_attempts}"
    )
