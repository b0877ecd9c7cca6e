"""Fixtures of the end-to-end tests: a topology that is always torn down, prerequisites that fail loudly."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from natrelay.tools.topology import NatKind, Topology, cleanup_stale, missing_prerequisites

sys.path.insert(0, str(Path(__file__).parent))

from mesh import Mesh


@pytest.fixture(scope="session", autouse=True)
def _prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.fail(
            "end-to-end tests need: "
            + ", ".join(missing)
            + " (install .ci/apt-packages.txt and run as root)",
            pytrace=False,
        )
    cleanup_stale()


MeshFactory = Callable[[NatKind, NatKind], Mesh]


@pytest.fixture
def mesh_factory() -> Iterator[MeshFactory]:
    """Build two relays and peers a, b behind NATs of the given kinds; tear down always."""
    topologies: list[Topology] = []

    def build(nat_a: NatKind, nat_b: NatKind) -> Mesh:
        topo = Topology()
        topologies.append(topo)
        topo.start()
        topo.add_relay("r1")
        topo.add_relay("r2")
        topo.add_peer("a", nat_a)
        topo.add_peer("b", nat_b)
        return Mesh(topo)

    yield build
    for topo in topologies:
        topo.teardown()
