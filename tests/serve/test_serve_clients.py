"""Agents in other languages drive `natrelay serve`, and `natrelay replay --verify` passes on the log.

A JavaScript agent (Node.js, no packages) and a Rust agent (std only, built
here with rustc) each run the same small mesh in simulated time against one
service — a node each, on one log, at once — then the log is re-decided for
both nodes. The JavaScript agent also runs over stdio, spawning the service
itself. A missing `node` or `rustc` FAILS these tests (install the Debian
packages nodejs and rustc, listed in .ci/apt-packages.txt); they never skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from natrelay.eventlog import EventLog
from tests.serve.conftest import NATRELAY, Service, natrelay

CLIENTS = Path(__file__).parent / "clients"
#: Where each agent's peers end: what its decisions said (removed peers left out).
EXPECTED = {
    "server": "direct:198.51.100.7:51820",
    "phone": "direct:203.0.113.10:40001",
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: the serve tests drive the service from other languages "
            "(apt-get install nodejs rustc; see .ci/apt-packages.txt)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def rust_client(tmp_path_factory: pytest.TempPathFactory) -> str:
    rustc = tool("rustc")
    binary = tmp_path_factory.mktemp("rust") / "client"
    built = subprocess.run(
        [rustc, "-O", "--edition", "2021", "-o", str(binary), str(CLIENTS / "client.rs")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    assert "warning" not in built.stderr, built.stderr
    return str(binary)


def check_summary(summary: dict[str, object], node: str, relay: str) -> None:
    assert summary["node"] == node
    peers = summary["peers"]
    assert isinstance(peers, dict)
    assert set(peers) == {"server", "phone", "tv"}, peers  # nas was removed
    assert {k: peers[k] for k in EXPECTED} == EXPECTED
    assert isinstance(peers["tv"], str) and peers["tv"].startswith("relay:"), peers


def check_log(url: str, nodes: list[str]) -> None:
    for node in nodes:
        verified = natrelay("replay", url, "--verify", "--node", node)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "identical decisions" in verified.stdout
    with EventLog.open(url, create=False) as log:
        for node in nodes:
            types = [e.TYPE for _s, stream, e in log.read_events() if stream.startswith(f"node/{node}")]
            # the mesh really went through its story: timeouts, a relay, an upgrade, a removal
            for kind in (
                "direct_attempt_timed_out",
                "direct_round_failed",
                "relay_path_selected",
                "path_upgraded",
                "peer_removed",
                "tick",
            ):
                assert kind in types, (node, kind)


def test_a_javascript_and_a_rust_agent_share_one_service(
    log_url: str, serve: Callable[..., Service], rust_client: str
) -> None:
    node = tool("node")
    service = serve(log_url)
    rust = subprocess.Popen(
        [rust_client, service.socket_path, "beta", "relay-b"], stdout=subprocess.PIPE, text=True
    )
    js = subprocess.run(
        [
            node,
            str(CLIENTS / "client.mjs"),
            "--socket",
            service.socket_path,
            "--node",
            "alpha",
            "--relay",
            "relay-a",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rust_out, _ = rust.communicate(timeout=300)
    assert js.returncode == 0, js.stderr
    assert rust.returncode == 0
    js_summary, rust_summary = json.loads(js.stdout), json.loads(rust_out)
    check_summary(js_summary, "alpha", "relay-a")
    check_summary(rust_summary, "beta", "relay-b")
    assert js_summary["agree"] is True  # the service's welcome agrees with what the decisions said
    # both agents ran the same mesh in the same simulated time: the same story
    assert js_summary["decisions"] == rust_summary["decisions"]
    code, err = service.stop()
    assert code == 0, err
    check_log(log_url, ["alpha", "beta"])


def test_a_javascript_agent_spawns_the_service_on_stdio(tmp_path: Path) -> None:
    node = tool("node")
    url = str(tmp_path / "stdio.sqlite")
    js = subprocess.run(
        [
            node,
            str(CLIENTS / "client.mjs"),
            "--node",
            "gamma",
            "--relay",
            "relay-g",
            "--",
            *NATRELAY,
            "serve",
            "--stdio",
            "--log",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert js.returncode == 0, js.stderr
    check_summary(json.loads(js.stdout), "gamma", "relay-g")
    check_log(url, ["gamma"])
