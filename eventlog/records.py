"""What the log hands back: stored events and snapshots, and the hot encode/decode paths.

Owns `StoredEvent` (a row of `events`, decoded only when asked) and `Snapshot`.
The fast paths here give exactly the bytes and events of `natrelay.core.codec`
(a test holds them to it); they skip the codec's generic walk for the common
case and fall back to the codec for anything unusual, so every error still comes
from the codec, naming the seq.
"""

from __future__ import annotations

from operator import attrgetter
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


_GETTERS: dict[type[Event], tuple[tuple[str, ...], Any]] = {}
for _cls in EVENT_TYPES.values():
    _names = tuple(f.name for f in attrs.fields(_cls))
    _GETTERS[_cls] = (_names, attrgetter(*_names))


def encode(event: Event) -> tuple[str, int, int, bytes]:
    """(type, schema_version, at, payload), byte for byte what `codec.encode` gives."""
    entry = _GETTERS.get(type(event))
    if entry is None:
        encoded = codec.encode(event)  # raises TypeError for an unregistered class
        return encoded.type, encoded.schema_version, encoded.at, encoded.payload
    names, getter = entry
    values = getter(event) if len(names) > 1 else (getter(event),)
    return (
        event.TYPE,
        event.VERSION,
        event.at,
        orjson.dumps(dict(zip(names, values, strict=True)), default=_nested),
    )


# --- decoding ------------------------------------------------------------------

#: (type, schema_version) -> the class to build directly, for current-schema rows.
_CURRENT: dict[tuple[str, int], type[Event]] = {
    (cls.TYPE, cls.VERSION): cls for cls in EVENT_TYPES.values()
}


def decode(type_name: str, schema_version: int, payload: bytes, seq: int | None = None) -> Event:
    """The event of a stored row, or `DecodeError` naming `seq` (what `codec.decode` does)."""
    cls = _CURRENT.get((type_name, schema_version))
    if cls is not None:
        try:
            return cls(**orjson.loads(payload))
        except Exception:
            pass  # the codec says precisely what is wrong
    return codec.decode(type_name, schema_version, payload, seq)
