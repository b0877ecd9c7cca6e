"""A small built-in mesh on the in-memory network: the foundation's demo and embedding example.

Twelve peers: a third answer directly on their reflexive endpoint, a third
only on a LAN address that is listed last, a third never answer directly and
need a relay; relay `eu-1` refuses sessions so the engine fails over to
`us-1`. Deterministic: no clock, no randomness.
"""

from __future__ import annotations

import base64
import hashlib

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.events import PeerAdded, RelayAnnounced, RelayHealthMeasured
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog

DEMO_PEERS = 12
DEMO_DURATION_MS = 10 * 60_000
#: The demo tells the direct-first story (three failed rounds, then a relay),
#: whatever the tuned default policy is.
DEMO_POLICY = Policy(
    name="demo-direct-first",
    mode="direct_first",
    step_interval_ms=500,
    attempt_timeout_ms=1000,
    parallel_endpoints=2,
)


def demo_key(index: int) -> str:
    """A stable WireGuard-shaped public key for demo peer `index`."""
    return base64.b64encode(hashlib.sha256(f"natrelay-demo-{index}".encode()).digest()).decode()


def run_demo(log: EventLog, *, node: str = "demo", peers: int = DEMO_PEERS) -> Node:
    """Run the demo mesh to completion on `log` and return the node."""
    network = MemoryNetwork(relays={"us-1": 90})
    mesh = Node(log, network, node=node, policy=DEMO_POLICY)
    mesh.observe(RelayAnnounced(at=0, relay="eu-1", region="eu", capacity=50))
    mesh.observe(RelayAnnounced(at=0, relay="us-1", region="us", capacity=50))
    mesh.observe(RelayHealthMeasured(at=0, relay="eu-1", rtt_ms=20, load=10))
    mesh.observe(RelayHealthMeasured(at=0, relay="us-1", rtt_ms=90, load=30))
    for index in range(peers):
        key = demo_key(index)
        lan = f"192.168.{index // 200}.{index % 200 + 2}:51820"
        reflexive = f"198.51.100.{index % 250 + 1}:{51820 + index}"
        if index % 3 == 0:
            network.answering[(key, reflexive)] = 25
        elif index % 3 == 1:
            network.answering[(key, lan)] = 2
        mesh.observe(PeerAdded(at=0, peer=key, name=f"peer-{index:02d}", candidates=(reflexive, lan)))
    mesh.run_until(DEMO_DURATION_MS)
    return mesh
