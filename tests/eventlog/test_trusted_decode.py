"""The trusted decode of the replay hot path gives exactly the events of the validating codec,
and refuses — to the validating path, which names the seq — any payload of the wrong shape:
a wrong type in any field gives the codec's own error."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import orjson
import pytest

from natrelay.adapters.sim.run import run_policy
from natrelay.adapters.sim.scenario import load_scenario
from natrelay.core import codec
from natrelay.core.codec import DecodeError
from natrelay.core.events import EVENT_TYPES
from natrelay.core.presets import preset
from natrelay.eventlog import EventLog
from natrelay.eventlog.records import decode_trusted
from tests.unit.test_codec import SAMPLES

AGENT_LOG = Path(__file__).parents[1] / "whatif" / "data" / "agent-relay-mesh.jsonl"


def stored_rows(tmp_path: Path) -> list[tuple[int, str, int, bytes]]:
    """(seq, type, schema version, payload) of a simulated mesh, a real agent's log, the codec samples."""
    scenario = load_scenario("mesh").with_overrides(peers=30, duration_ms=900_000)
    path = tmp_path / "mesh.db"
    run_policy(
        attrs.evolve(scenario, local_nats=scenario.local_nats[:1]), preset("natrelay"), seed=3, log=str(path)
    )
    with EventLog.open(str(path), create=False) as log:
        rows = [(s.seq, s.type, s.schema_version, s.payload) for s in log.read()]
    for line in AGENT_LOG.read_text().splitlines():
        row = json.loads(line)
        rows.append((row["seq"], row["type"], row["schema_version"], orjson.dumps(row["payload"])))
    for index, event in enumerate(SAMPLES):
        encoded = codec.encode(event)
        rows.append((-index, encoded.type, encoded.schema_version, encoded.payload))
    return rows


def test_trusted_and_validated_decoding_give_the_same_events(tmp_path: Path) -> None:
    rows = stored_rows(tmp_path)
    kinds = set()
    for seq, type_name, version, payload in rows:
        trusted = decode_trusted(type_name, version, payload, seq)
        validated = codec.decode(type_name, version, payload, seq)
        assert trusted == validated and repr(trusted) == repr(validated), f"seq {seq}"
        assert hash(trusted) == hash(validated)
        kinds.add(type_name)
    assert len(kinds) >= 18, sorted(set(EVENT_TYPES) - kinds)


def _wrong(value: object) -> object:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, str):
        return 7
    if isinstance(value, int | float):
        return "7"
    if isinstance(value, list):
        return [7] if value and isinstance(value[0], str) else 7
    return 7


def test_a_payload_of_the_wrong_shape_takes_the_validating_path(tmp_path: Path) -> None:
    checked = 0
    for seq, type_name, version, payload in stored_rows(tmp_path):
        data = orjson.loads(payload)
        for name, value in data.items():
            if value is None or name in ("policy", "ranking"):
                continue
            broken = orjson.dumps({**data, name: _wrong(value)})
            try:
                expected = codec.decode(type_name, version, broken, seq)
            except DecodeError as exc:
                with pytest.raises(DecodeError) as caught:
                    decode_trusted(type_name, version, broken, seq)
                assert str(caught.value) == str(exc)
                checked += 1
            else:  # a field the codec does not validate either (ObservationRejected.peer)
                assert decode_trusted(type_name, version, broken, seq) == expected
        extra = orjson.dumps({**data, "colour": "blue"})
        with pytest.raises(DecodeError, match="unknown fields: colour"):
            decode_trusted(type_name, version, extra, seq)
    assert checked > 1000
