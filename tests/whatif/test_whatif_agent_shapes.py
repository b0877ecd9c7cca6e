"""`natrelay whatif` on a log with the real agent's shapes.

`data/agent-relay-mesh.jsonl` is the log two `natrelay agent`s wrote in the
end-to-end relay test (tests/e2e/test_whatif_agent_log.py makes a fresh one):
wall-clock times, relays announced before the policy, a Tick per poll, relay
handshakes off WireGuard's 120 s beat, TURN session ids. On top of it the test
feeds node a what the agent also reports — a silent path, a session closed by
a restart, the relay back — decided by the engine as the agent would.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from natrelay.adapters.whatif.trace import read_trace
from natrelay.core.codec import from_payload
from natrelay.core.events import (
    PathSilent,
    RelaySessionClosed,
    RelaySessionEstablished,
    Tick,
    stream_of,
)
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.replay import rebuild
from natrelay.tools.cli.common import app
from natrelay.tools.whatif import what_if

DATA = Path(__file__).parent / "data" / "agent-relay-mesh.jsonl"


def agent_log(path: Path) -> Path:
    """The recorded agent log, then node a's path falling silent, a restart, the relay again."""
    with EventLog.open(str(path)) as log:
        for line in DATA.read_text().splitlines():
            row = json.loads(line)
            event = from_payload(row["type"], row["schema_version"], row["payload"], row["seq"])
            log.append([(row["stream"], event)])
        engine, _ = rebuild(log, "a")
        peer = next(iter(engine.peers))
        record = engine.peers[peer]
        start = engine.now
        session = str(record.session)
        observations = [
            PathSilent(at=start + 4_000, peer=peer, silent_ms=4_000),
            Tick(at=start + 4_300),
            RelaySessionClosed(
                at=start + 9_000, peer=peer, relay="r1", session=session, reason="agent restarted"
            ),
            Tick(at=start + 9_200),
            RelaySessionEstablished(at=start + 9_400, peer=peer, relay="r1", session="9f00aa11"),
            Tick(at=start + 12_000),
        ]
        for observation in observations:
            reaction = engine.handle(observation)
            items = [(stream_of(observation, "a"), observation)]
            items += [(stream_of(d, "a"), d) for d in reaction.decisions]
            log.append(items)
    return path


def test_whatif_reads_the_agent_log_and_answers_from_its_evidence(tmp_path: Path) -> None:
    path = agent_log(tmp_path / "agent.db")
    with EventLog.open(str(path), create=False) as log:
        trace = read_trace(log, "a")
    assert trace.verified, "the agent's decisions re-decide from its observations"
    # the relay answered the recorded connect 129 ms after it was asked
    (connect,) = next(v for (p, r), v in trace.connects.items() if r == "r1")[:1]
    assert connect.outcome == "established" and connect.answered_at - connect.at == 129
    # relay handshakes seen off the 120 s beat are path events, not answers
    assert all(event.relay == "r1" for _, _, event in trace.unsolicited)
    recorded_first = 2_567
    for name in ("tailscale", "netbird", "formnet", "natrelay"):
        result = what_if(trace, preset(name))
        assert result.extrapolated == 0, name  # every question was one the log answered
        (figures,) = result.recorded.peers
        assert figures.first_path_ms == recorded_first
        (alternative,) = result.alternative.peers
        divergence = result.divergence
        assert divergence is not None
        if preset(name).mode == "relay_first":
            # a relay asked at once answers as fast as the recorded one did
            assert alternative.first_path_ms == 129, name
            assert divergence.recorded_seq == 8 and divergence.alternative is not None
            assert divergence.alternative.TYPE == "relay_eligibility_reached"
        else:
            assert alternative.first_path_ms > 1_000, name  # direct rounds fail first, as recorded
            # the same first attempt; the engine's own deadline comes before the agent's next poll
            assert divergence.recorded_seq == 10 and divergence.alternative_cause == Tick(at=1795895753244)
        assert result.fidelity is not None and result.fidelity.identical_prefix >= 5


def test_whatif_cli_on_the_agent_log(tmp_path: Path) -> None:
    path = agent_log(tmp_path / "agent.db")
    runner = CliRunner()
    for node in ("a", "b"):
        done = runner.invoke(app, ["whatif", str(path), "--node", node, "--policy", "tailscale", "--json"])
        assert done.exit_code == 0, done.output
        report = json.loads(done.output)
        assert report["totals"]["recorded"]["never_connected"] == 0
        assert report["first_divergence"]["recorded_seq"] is not None
    sweep = runner.invoke(
        app,
        [
            "whatif",
            str(path),
            "--node",
            "a",
            "--sweep",
            "mode=relay_first,direct_first",
            "--out",
            str(tmp_path),
        ],
    )
    assert sweep.exit_code == 0, sweep.output
    assert (tmp_path / "suggested-policy.toml").exists()
