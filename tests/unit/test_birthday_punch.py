"""The arithmetic of a birthday punch: which ports the easy side sprays, and the chance of a meeting."""

from __future__ import annotations

import math
import random

from natrelay.adapters.mesh.birthday_punch import PORT_HIGH, PORT_LOW, meet_probability, spray_ports


def test_sprayed_ports_are_distinct_and_in_the_nats_range() -> None:
    """Kills a spray that probes a port twice (a wasted probe of the budget) or outside the range."""
    ports = spray_ports(3000, random.Random(1))
    assert len(ports) == len(set(ports)) == 3000
    assert all(PORT_LOW <= p <= PORT_HIGH for p in ports)
    assert spray_ports(10, random.Random(2), 100, 104) == spray_ports(10, random.Random(2), 100, 104)
    assert sorted(spray_ports(10, random.Random(2), 100, 104)) == [100, 101, 102, 103, 104]


def test_the_chance_of_a_meeting_is_the_birthday_bound() -> None:
    """Kills a model that treats probes as independent draws with replacement (it overstates the
    budget needed) or that is not monotone in the budget."""
    span = PORT_HIGH - PORT_LOW + 1
    assert meet_probability(0, 1000) == 0.0
    assert meet_probability(256, span) == 1.0
    # 256 mappings, 580 probes: the classic ~90 %
    assert 0.89 < meet_probability(256, 580) < 0.91
    with_replacement = 1 - (1 - 256 / span) ** 580
    assert meet_probability(256, 580) > with_replacement
    assert math.isclose(meet_probability(1, 1, span=10), 0.1)
    assert meet_probability(256, 200) < meet_probability(256, 400) < meet_probability(512, 400)
