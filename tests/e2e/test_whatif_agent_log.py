"""`natrelay whatif` on a log written by real agents (WireGuard, NATs, coturn in namespaces).

The agents connect through a relay (symmetric NAT on one side), run a little,
stop; then the log of each node is replayed under other policies. The agent's
log has its own shapes — wall-clock times, a Tick every poll, handshakes seen
when `wg show` changes, TURN session ids — and whatif must answer on it: the
recorded figures from the log, the alternative's from the trace-driven world.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mesh import Mesh

pytestmark = pytest.mark.e2e


def _whatif(log: Path, node: str, policy: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "natrelay.tools.cli",
            "whatif",
            str(log),
            "--node",
            node,
            "--policy",
            policy,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_whatif_answers_on_a_real_agent_log(mesh_factory, tmp_path: Path) -> None:
    mesh: Mesh = mesh_factory("preserving", "symmetric")
    # relayed first, as the module says: no hard-NAT attempt beside the first round (the
    # default), which would often take the pair direct before any relay
    mesh.policy["hard_nat_with_first_round"] = False
    mesh.start_agent("a")
    mesh.start_agent("b")
    mesh.wait_path("relay", 30)
    time.sleep(5)
    assert mesh.stop_agent("a") == 0, mesh.agent_log("a")[-2000:]
    assert mesh.stop_agent("b") == 0, mesh.agent_log("b")[-2000:]
    log = tmp_path / "agent-mesh.db"
    shutil.copy(mesh.log_path, log)
    keep = os.environ.get("NATRELAY_KEEP_AGENT_LOG")
    if keep:
        shutil.copy(mesh.log_path, keep)
    for node in ("a", "b"):
        for policy in ("formnet", "tailscale", "natrelay"):
            report = _whatif(log, node, policy)
            recorded = report["totals"]["recorded"]
            alternative = report["totals"]["alternative"]
            assert recorded["first_path_p50_s"] is not None and math.isfinite(recorded["first_path_p50_s"])
            assert recorded["never_connected"] == 0
            assert alternative["probes"] + alternative["relay_connects"] > 0
            assert report["peers"] and report["peers"][0]["alternative"] is not None
            assert report["fidelity"]["events"] > 0
            print(node, policy, json.dumps(report["totals"]), report["fidelity"])
