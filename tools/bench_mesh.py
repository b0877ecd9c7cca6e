"""The benchmarks' mesh: a scripted in-memory mesh, and the loop that drives an engine through it.

Owns the workload that the engine, memory, replay and serve benchmarks share, so
each measures the same mesh: a third of the peers answer directly, the rest need
one of two relays.
"""

from __future__ import annotations

from natrelay.adapters.memory import MemoryNetwork
from natrelay.core.engine import Engine
from natrelay.core.events import Event, PeerAdded, RelayAnnounced, Tick
from natrelay.tools.demo import demo_key


def mesh_inputs(peers: int) -> tuple[MemoryNetwork, list[Event]]:
    """A mesh where a third of the peers answer directly and the rest need relays."""
    network = MemoryNetwork(relays={"relay-a": 80, "relay-b": 60})
    setup: list[Event] = [
        RelayAnnounced(at=0, relay="relay-a", region="eu", capacity=100_000),
        RelayAnnounced(at=0, relay="relay-b", region="us", capacity=100_000),
    ]
    for index in range(peers):
        key = demo_key(index)
        reflexive = f"198.51.{index // 250 % 250}.{index % 250 + 1}:{1024 + index % 60000}"
        lan = f"10.{index // 65536 % 250}.{index // 256 % 256}.{index % 256}:51820"
        if index % 3 == 0:
            network.answering[(key, reflexive)] = 20 + index % 50
        setup.append(PeerAdded(at=index % 1000, peer=key, candidates=(reflexive, lan)))
    return network, setup


def drive(engine: Engine, network: MemoryNetwork, events: list[Event], end_ms: int) -> int:
    """Feed `events`, then run engine and scripted network together until `end_ms`, no log.

    Returns the events handled and decided (observations plus decisions).
    """
    handled = 0

    def feed(event: Event) -> None:
        nonlocal handled
        reaction = engine.handle(event)
        handled += 1 + len(reaction.decisions)
        for command in reaction.commands:
            network.execute(command, engine.now)

    for event in events:
        feed(event)
    while True:
        times = [t for t in (engine.next_deadline(), network.next_event_at()) if t is not None]
        if not times or min(times) > end_ms:
            return handled
        now = max(min(times), engine.now)
        for event in network.poll(now):
            feed(event)
        deadline = engine.next_deadline()
        if deadline is not None and deadline <= now:
            feed(Tick(at=now))
