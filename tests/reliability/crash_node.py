"""A node that appends batches forever, to be killed with SIGKILL by test_crash_consistency.

Run as `python -m tests.reliability.crash_node LOG SEED`. It opens (or resumes)
the log, rebuilds its engine, prints `resumed <last seq> <state digest>`, then
drives a `Node` over the in-memory network: peers join (several candidates, so
a batch holds an observation and several decisions), some answer directly,
some need a relay, one relay refuses, candidates change, time moves on. After
every append that returned, it prints `committed <seq>`: a seq the log
promised to keep. It never stops by itself.
"""

from __future__ import annotations

import base64
import hashlib
import random
import sys

import orjson

from natrelay.adapters.memory import MemoryNetwork
from natrelay.adapters.node import Node
from natrelay.core.engine import Reaction
from natrelay.core.events import (
    CandidatesUpdated,
    Event,
    PeerAdded,
    PolicySet,
    RelayAnnounced,
    RelayHealthMeasured,
)
from natrelay.core.policy import Policy
from natrelay.eventlog import EventLog

NODE = "crash"
POLICY = Policy(mode="direct_first", min_direct_attempts=2, attempt_timeout_ms=500, parallel_endpoints=3)


def key(index: int) -> str:
    return base64.b64encode(hashlib.sha256(f"crash-peer-{index}".encode()).digest()).decode()


def candidates(index: int, generation: int) -> tuple[str, ...]:
    return (
        f"198.51.{generation % 200}.{index % 250 + 1}:{40000 + index % 20000}",
        f"10.{index % 250}.{generation % 250}.2:51820",
        f"203.0.113.{index % 250 + 1}:51820",
    )


def digest(state: dict[str, object]) -> str:
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def main(location: str, seed: int) -> None:
    rng = random.Random(seed)
    network = MemoryNetwork(relays={"relay-b": 30})
    with EventLog.open(location) as log:
        node = Node(log, network, node=NODE, snapshot_every=40)
        sys.stdout.write(f"resumed {node.last_seq} {digest(node.engine.state())}\n")
        sys.stdout.flush()

        def committed(_observation: Event, _reaction: Reaction) -> None:
            sys.stdout.write(f"committed {node.last_seq}\n")
            sys.stdout.flush()

        node.on_reaction = committed
        if node.last_seq == 0:
            node.observe(PolicySet(at=0, policy=POLICY))
        for relay, region in (("relay-a", "eu"), ("relay-b", "us")):
            if not node.engine.registry.knows(relay):
                node.observe(RelayAnnounced(at=node.engine.now, relay=relay, region=region))
        index = len(node.engine.peers)
        generation = 0
        while True:
            now = node.engine.now + rng.randrange(1, 400)
            choice = rng.random()
            if choice < 0.35:
                peer = key(index)
                answers = candidates(index, 0)
                if index % 3 == 0:
                    network.answering[(peer, answers[index % 3])] = rng.randrange(5, 200)
                node.observe(PeerAdded(at=now, peer=peer, name=f"peer-{index}", candidates=answers))
                index += 1
            elif choice < 0.45 and index:
                generation += 1
                target = rng.randrange(index)
                node.observe(
                    CandidatesUpdated(at=now, peer=key(target), candidates=candidates(target, generation))
                )
            elif choice < 0.5:
                relay = rng.choice(("relay-a", "relay-b"))
                node.observe(RelayHealthMeasured(at=now, relay=relay, rtt_ms=rng.randrange(5, 150), load=10))
            node.advance(now)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
