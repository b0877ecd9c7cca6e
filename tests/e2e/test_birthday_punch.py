"""End to end, the packets of a hard-NAT attempt (issue 16): birthday punching between namespaces.

Peer ``a`` sits behind ``MASQUERADE --random-fully`` (symmetric: a new random public
port for every destination), peer ``b`` behind a port-preserving NAT that drops
unsolicited inbound (a port-restricted cone). A plain punch cannot work between them:
``b`` never learns which port ``a``'s NAT will use. Each try runs ``HardSide`` in ``a``
(256 sockets towards ``b``'s public endpoint) and ``spray`` in ``b`` (pings to random
ports of ``a``'s public address) at 200 probes a second for at most 10 s, with both
NATs' connection tracking flushed first, so no try inherits a mapping. The share that
met, the time to meet and the probes spent are printed (run with -s) and recorded in
BENCHMARKS.md ("Hard NATs").
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.adapters.mesh.birthday_punch import meet_probability
from natrelay.tools.topology import Topology
from natrelay.tools.topology_shell import run

pytestmark = pytest.mark.e2e

TRIES, SOCKETS, RATE, DURATION = 20, 256, 200.0, 10.0
EASY_PORT = 40000
SIDES = str(Path(__file__).parent / "punch_sides.py")


def _side(topo: Topology, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", topo.peers[name].ns, sys.executable, SIDES, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_birthday_punching_meets_through_a_random_port_symmetric_nat() -> None:
    """Kills a hard side that answers from another socket than the one that was reached (the
    easy side's NAT drops the answer), a spray that repeats ports, and any attempt that
    overruns its time or probe budget."""
    topo = Topology()
    try:
        topo.start()
        hard, easy = topo.add_peer("a", "symmetric"), topo.add_peer("b", "preserving")
        results = []
        for attempt in range(TRIES):
            for peer in (hard, easy):
                run(["conntrack", "-F"], ns=peer.router_ns, check=False)
            easy_side = _side(
                topo,
                "b",
                "easy",
                hard.wan_ip,
                str(EASY_PORT),
                str(int(RATE * DURATION)),
                str(RATE),
                str(DURATION),
                str(attempt),
            )
            target = f"{easy.wan_ip}:{EASY_PORT}"
            hard_side = _side(topo, "a", "hard", target, str(SOCKETS), str(RATE), str(DURATION))
            out_hard, err_hard = hard_side.communicate(timeout=DURATION + 20)
            out_easy, err_easy = easy_side.communicate(timeout=DURATION + 20)
            assert hard_side.returncode == 0 and easy_side.returncode == 0, err_hard + err_easy
            results.append((json.loads(out_hard), json.loads(out_easy)))
    finally:
        topo.teardown()
    met = [(h, e) for h, e in results if h["met"] and e["met"]]
    times = sorted(max(h["took"], e["took"]) for h, e in met)
    easy_probes = [e["probes"] for _h, e in met]
    share = len(met) / TRIES
    expected = meet_probability(SOCKETS, int(RATE * DURATION))
    print(
        f"birthday punch, random-port symmetric vs port-restricted, {TRIES} tries: {len(met)} met "
        f"({share:.0%}; the model's chance within the budget {expected:.1%}); time to meet "
        f"median {statistics.median(times) if times else float('nan'):.2f} s, "
        f"max {max(times, default=0):.2f} s; "
        f"easy-side probes median {statistics.median(easy_probes) if easy_probes else 0:.0f}; "
        f"hard side {SOCKETS} sockets, {statistics.median(h['probes'] for h, _e in results):.0f} pings"
    )
    for hard_result, easy_result in results:
        assert hard_result["sockets"] <= SOCKETS
        assert hard_result["took"] <= DURATION + 0.5 and easy_result["took"] <= DURATION + 0.5
        assert easy_result["probes"] <= int(RATE * DURATION) + 1
        assert hard_result["met"] == easy_result["met"], (hard_result, easy_result)
    assert share >= 0.8, f"only {len(met)} of {TRIES} tries met"
