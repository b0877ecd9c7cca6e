"""The event codec: events <-> (type, schema version, orjson payload).

Encoding is separate from storage (the eventsourcing library's mapper/recorder
split): the log stores what this module produces and gives back what it
accepts. Decoding an older schema goes through registered upcasters, one
version step at a time; a newer schema than this code knows, an unknown type,
a payload that is not a JSON object, or one that fails validation raises
`DecodeError` naming the seq when the caller knows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

from .events import EVENT_TYPES, Event
from .values import InvalidValue

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


class DecodeError(ValueError):
    """A stored event cannot be turned back into an event."""

    def __init__(self, problem: str, seq: int | None = None) -> None:
        self.problem = problem
        self.seq = seq
        where = f"event seq {seq}: " if seq is not None else ""
        super().__init__(where + problem)


@attrs.frozen
class EncodedEvent:
    """An event as the log stores it."""

    type: str
    schema_version: int
    at: int
    payload: bytes


#: (type, from_version) -> function turning a payload of that version into the next.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register how to turn a `type_name` payload of `from_version` into `from_version + 1`."""

    def register(function: Upcaster) -> Upcaster:
        _UPCASTERS[(type_name, from_version)] = function
        return function

    return register


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    return value


_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in attrs.fields(cls)) for cls in EVENT_TYPES.values()
}


def to_payload(event: Event) -> Payload:
    """The event's fields as plain JSON-able data."""
    return {name: _plain(getattr(event, name)) for name in _FIELDS[type(event)]}


def encode(event: Event) -> EncodedEvent:
    cls = type(event)
    if EVENT_TYPES.get(cls.TYPE) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered event type")
    payload = orjson.dumps(to_payload(event))
    return EncodedEvent(cls.TYPE, cls.VERSION, event.at, payload)


def from_payload(type_name: str, schema_version: int, data: object, seq: int | None = None) -> Event:
    """Build an event from an already parsed payload, upcasting older versions."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise DecodeError(f"unknown event type {type_name!r}", seq)
    if not isinstance(data, dict):
        raise DecodeError(f"{type_name} payload is not a JSON object", seq)
    if schema_version > cls.VERSION:
        raise DecodeError(
            f"{type_name} has schema version {schema_version}, newer than this natrelay"
            f" understands ({cls.VERSION}); upgrade natrelay to read this log",
            seq,
        )
    version = schema_version
    while version < cls.VERSION:
        upcaster = _UPCASTERS.get((type_name, version))
        if upcaster is None:
            raise DecodeError(f"no upcaster for {type_name} from schema version {version}", seq)
        data = upcaster(dict(data))
        version += 1
    fields = _FIELDS[cls]
    extra = set(data) - set(fields)
    if extra:
        raise DecodeError(f"{type_name} payload has unknown fields: {', '.join(sorted(extra))}", seq)
    try:
        return cls(**data)
    except TypeError as exc:
        raise DecodeError(f"{type_name} payload is incomplete: {exc}", seq) from None
    except (InvalidValue, ValueError) as exc:
        raise DecodeError(f"{type_name} payload is invalid: {exc}", seq) from None


#: A field's declared type -> a cheap check of its JSON value's type (the trusted path checks
#: types, not values: a payload of the wrong shape still goes to the validating path).
_TYPE_CHECKS: dict[str, str] = {
    "int": "type(v) is int",
    "int | None": "v is None or type(v) is int",
    "str": "type(v) is str",
    "str | None": "v is None or type(v) is str",
    "float": "type(v) is float or type(v) is int",
    "Purpose": "type(v) is str",
    "HardNatRole": "type(v) is str",
    "PeerAccess": "type(v) is str",
    "Literal['direct', 'relay']": "type(v) is str",
    # JSON gives exact types: isinstance(i, str) is type(i) is str, mapped in C
    "tuple[str, ...]": "type(v) is list and all(map(is_str, v))",
    "tuple[RelayScore, ...]": "type(v) is list",  # the converter builds (validated) RelayScores
    "Policy": "type(v) is dict",  # the converter builds a (validated) Policy
}


class Untrusted(Exception):
    """A payload the trusted path will not build: take the validating path."""


def _compile_trusted(cls: type[Event], unread: frozenset[str] = frozenset()) -> Callable[[Payload], Event]:
    """A function building `cls` from a payload this code wrote, without running validators.

    Each field's JSON type is checked (a number where a name belongs is refused) and
    converters still run (a JSON list becomes the tuple the field holds, a nested dict its
    value); value validators and `__attrs_post_init__` do not: the row was validated when
    it was made, and `replay --check` validates every row again. A missing or extra field
    or a wrong type raises, which the caller answers with the validating path.

    `unread`: fields whose type is checked but whose slot is left unset (nor converted) —
    for a caller that reads only the others (replay's fold: `evolve.UNREAD`); reading one
    raises AttributeError.
    """
    lines = [
        "def build(data, new=object.__new__, put=object.__setattr__, cls=cls, Untrusted=Untrusted):",
        "    if len(data) != count:",
        "        raise Untrusted",
        "    event = new(cls)",
    ]
    namespace: dict[str, Any] = {
        "cls": cls,
        "Untrusted": Untrusted,
        "count": len(attrs.fields(cls)),
        "is_str": str.__instancecheck__,
    }
    for field in attrs.fields(cls):
        name = field.name
        assert name.isidentifier()
        check = _TYPE_CHECKS[str(field.type)]
        lines.append(f"    v = data[{name!r}]")
        lines.append(f"    if not ({check}):")
        lines.append("        raise Untrusted")
        if name in unread:
            continue
        value = "v"
        converter = field.converter
        if (
            getattr(converter, "__qualname__", None) == "_tuple"
            and getattr(converter, "__module__", None) == cls.__module__
            and check.startswith("type(v) is list")
        ):
            value = "tuple(v)"  # events._tuple of a list, without the call
        elif field.converter is not None:
            namespace[f"convert_{name}"] = field.converter
            value = f"convert_{name}(v)"
        # the slot's own descriptor: twice as fast as object.__setattr__ (frozen classes refuse setattr)
        slot = next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)
        if slot is not None and hasattr(slot, "__set__") and type(slot).__name__ == "member_descriptor":
            namespace[f"set_{name}"] = slot.__set__
            lines.append(f"    set_{name}(event, {value})")
        else:
            lines.append(f"    put(event, {name!r}, {value})")
    lines.append("    return event")
    exec("\n".join(lines), namespace)
    return namespace["build"]  # type: ignore[no-any-return]


def compile_trusted(cls: type[Event], unread: frozenset[str]) -> Callable[[Payload], Event]:
    """A trusted builder of `cls` that leaves the `unread` fields unset (see `_compile_trusted`)."""
    return _compile_trusted(cls, unread)


#: type -> the trusted builder of its current schema version.
TRUSTED: dict[str, Callable[[Payload], Event]] = {
    cls.TYPE: _compile_trusted(cls) for cls in EVENT_TYPES.values()
}


def from_payload_trusted(type_name: str, schema_version: int, data: object, seq: int | None = None) -> Event:
    """`from_payload` for the log's own rows: no validators on the current schema; anything
    else (an older schema, a field missing or extra, a wrong type) takes the validating path."""
    build = TRUSTED.get(type_name)
    if build is not None and type(data) is dict and schema_version == EVENT_TYPES[type_name].VERSION:
        try:
            return build(data)
        except (KeyError, Untrusted):
            pass
    return from_payload(type_name, schema_version, data, seq)


def decode(type_name: str, schema_version: int, payload: bytes, seq: int | None = None) -> Event:
    """Turn a stored row back into an event, or raise `DecodeError` naming `seq`."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{type_name} payload is not valid JSON ({exc})", seq) from None
    return from_payload(type_name, schema_version, data, seq)


@register_upcaster("peer_added", 1)
@register_upcaster("candidates_updated", 1)
def _candidate_kinds_unknown(payload: Payload) -> Payload:
    """Version 2 added each candidate's kind; older events did not know them."""
    payload.setdefault("kinds", [])
    return payload
