"""What the log hands back: stored events and snapshots, and the hot encode/decode paths.

Owns `StoredEvent` (a row of `events`, decoded only when asked) and `Snapshot`.
The fast paths here give exactly the bytes and events of `natrelay.core.codec`
(a test holds them to it); they skip the codec's generic walk for the common
case and fall back to the codec for anything unusual, so every error still comes
from the codec, naming the seq.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

from natrelay.core import codec
from natrelay.core.events import EVENT_TYPES, Event


@attrs.frozen(slots=True)
class StoredEvent:
    """One event as stored: its place in the log, and its payload, not yet decoded."""

    seq: int
    stream: str
    stream_version: int
    type: str
    schema_version: int
    #: Milliseconds: when it happened (the event's `at`).
    at: int
    #: Milliseconds: when the log stored it.
    recorded_at: int
    payload: bytes

    def decode(self) -> Event:
        """The event, or `DecodeError` naming this seq."""
        return decode(self.type, self.schema_version, self.payload, self.seq)


@attrs.frozen(slots=True)
class Snapshot:
    """Projection state as of `seq`, saved under `name`."""

    name: str
    seq: int
    created_at: int
    format: str
    state: bytes


# --- encoding ------------------------------------------------------------------


def _nested(value: object) -> dict[str, Any]:
    """orjson `default`: an attrs value inside an event (a RelayScore, a Policy)."""
    cls = type(value)
    if attrs.has(cls):
        return {f.name: getattr(value, f.name) for f in attrs.fields(cls)}
    raise TypeError(f"cannot encode {cls.__name__}")


def _compile_encoder(cls: type[Event]) -> Callable[[Event], bytes]:
    """A function building `cls`'s payload as one dict literal: twice as fast as a
    generic walk. The names come from the class's own attrs fields."""
    names = [field.name for field in attrs.fields(cls)]
    assert all(name.isidentifier() for name in names)
    entries = ", ".join(f"{name!r}: event.{name}" for name in names)
    source = (
        "def payload(event, dumps=dumps, default=default):\n"
        f"    return dumps({{{entries}}}, default=default)\n"
    )
    namespace: dict[str, Any] = {"dumps": orjson.dumps, "default": _nested}
    exec(source, namespace)
    return namespace["payload"]  # type: ignore[no-any-return]


_PAYLOAD: dict[type[Event], Callable[[Event], bytes]] = {
    cls: _compile_encoder(cls) for cls in EVENT_TYPES.values()
}


def encode(event: Event) -> tuple[str, int, int, bytes]:
    """(type, schema_version, at, payload), byte for byte what `codec.encode` gives."""
    payload = _PAYLOAD.get(type(event))
    if payload is None:
        encoded = codec.encode(event)  # raises TypeError for an unregistered class
        return encoded.type, encoded.schema_version, encoded.at, encoded.payload
    return event.TYPE, event.VERSION, event.at, payload(event)


# --- decoding ------------------------------------------------------------------

#: (type, schema_version) -> the class to build directly, for current-schema rows.
_CURRENT: dict[tuple[str, int], type[Event]] = {(cls.TYPE, cls.VERSION): cls for cls in EVENT_TYPES.values()}


#: type -> a builder that trusts the row (no validators), for current-schema rows.
_TRUSTED: dict[tuple[str, int], Callable[[dict[str, Any]], Event]] = {
    (cls.TYPE, cls.VERSION): codec.TRUSTED[cls.TYPE] for cls in EVENT_TYPES.values()
}


#: type -> (its current schema version, its trusted builder): `EventLog.read_events` inlines
#: `decode_trusted` with it on the replay hot path.
TRUSTED_BUILDERS: dict[str, tuple[int, Callable[[dict[str, Any]], Event]]] = {
    cls.TYPE: (cls.VERSION, codec.TRUSTED[cls.TYPE]) for cls in EVENT_TYPES.values()
}


def decode_trusted(type_name: str, schema_version: int, payload: bytes, seq: int | None = None) -> Event:
    """The event of a row this log stored, built without validators (the hot path of replay).

    Rows are validated when they are made (an event that exists is valid) and by `replay
    --check`; folding them again need not re-validate each field. Anything unusual — an older
    schema, a missing field, a payload that is not an object — takes the validating path, so
    errors still name the seq.
    """
    build = _TRUSTED.get((type_name, schema_version))
    if build is not None:
        try:
            data = orjson.loads(payload)
            if type(data) is dict:
                return build(data)
        except Exception:
            pass  # the codec says precisely what is wrong
    return codec.decode(type_name, schema_version, payload, seq)


def decode(type_name: str, schema_version: int, payload: bytes, seq: int | None = None) -> Event:
    """The event of a stored row, or `DecodeError` naming `seq` (what `codec.decode` does)."""
    cls = _CURRENT.get((type_name, schema_version))
    if cls is not None:
        try:
            return cls(**orjson.loads(payload))
        except Exception:
            pass  # the codec says precisely what is wrong
    return codec.decode(type_name, schema_version, payload, seq)
