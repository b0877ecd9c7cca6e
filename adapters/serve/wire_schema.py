"""The JSON Schema of every `natrelay serve` message, generated from the event and command classes.

Owns one function, `protocol_schema()`: a JSON Schema (draft 2020-12) document
whose `$defs` hold every observation, decision and command, the policy, and the
protocol's own messages. Event schemas come from the attrs classes of
`core.events` (field by field: the validator says the JSON type and its bounds,
the default says whether it is required); commands from the type hints of
`core.commands`. A validator this module does not know is an error at
generation time, so a new kind of field cannot slip into the protocol without
its schema (docs/protocol.md embeds the output; a test keeps the two equal).
"""

from __future__ import annotations

import typing
from typing import Any, Literal, get_args, get_origin

import attrs

from natrelay.core import values as v
from natrelay.core.events import DECISIONS, OBSERVATIONS, Event, RelayScore
from natrelay.core.policy import Policy, RelayWeights

from . import protocol as p

Schema = dict[str, Any]

# a base64 WireGuard key: 43 characters, the last of which carries 4 bits, then '='
_KEY = {
    "type": "string",
    "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
    "description": "a WireGuard public key: base64 of 32 bytes",
}
_ENDPOINT = {
    "type": "string",
    "pattern": r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9a-fA-F:.]+\]):[0-9]{1,5}$",
    "description": "a canonical endpoint: a.b.c.d:port or [ipv6]:port (port 1-65535)",
}
_IDENTIFIER = {
    "type": "string",
    "minLength": 1,
    "maxLength": v.MAX_ID_LENGTH,
    "pattern": "^[^\\s/\\u0000-\\u001f\\u007f]+$",
}
_TIME = {"type": "integer", "minimum": 0, "maximum": v.MAX_TIME_MS - 1, "description": "milliseconds"}
_NULL = {"type": "null"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, _NULL]}


def _known_validators() -> dict[Any, Schema]:
    from natrelay.core import events as events_module
    from natrelay.core import policy as policy_module

    return {
        v.public_key: _KEY,
        v.endpoint: _ENDPOINT,
        v.optional_endpoint: _nullable(_ENDPOINT),
        v.endpoints: {"type": "array", "items": _ENDPOINT, "uniqueItems": True},
        v.candidates: {
            "type": "array",
            "items": _ENDPOINT,
            "uniqueItems": True,
            "maxItems": v.MAX_CANDIDATES,
        },
        v.identifier: _IDENTIFIER,
        v.optional_identifier: _nullable(_IDENTIFIER),
        v.time_ms: _TIME,
        v.non_negative_int: {"type": "integer", "minimum": 0},
        v.positive_int: {"type": "integer", "minimum": 1},
        v.fraction: {"type": "number", "minimum": 0, "maximum": 1},
        v.text: {"type": "string", "maxLength": 1000},
        policy_module._non_negative_number: {"type": "number", "minimum": 0},
        policy_module._factor: {"type": "number", "minimum": 1},
        policy_module._key_list: {"type": "array", "items": _KEY},
        # one kind per candidate, or none at all ("" where a kind is not known)
        events_module._kinds: {"type": "array", "items": {"enum": list(events_module.CANDIDATE_KINDS)}},
    }


_REFS: dict[type, str] = {Policy: "Policy", RelayWeights: "RelayWeights", RelayScore: "RelayScore"}


def _ref(cls: type) -> Schema:
    return {"$ref": f"#/$defs/{_REFS[cls]}"}


def _from_validator(validator: Any, where: str) -> Schema:
    known = _known_validators()
    if validator in known:
        return dict(known[validator])
    choices = getattr(validator, "choices", None)
    if choices is not None:
        return {"enum": list(choices)}
    inner = getattr(validator, "validator", None)
    if type(validator).__name__ == "_OptionalValidator" and inner is not None:
        return _nullable(_from_validator(inner, where))
    wanted = getattr(validator, "type", None)
    if type(validator).__name__ == "_InstanceOfValidator":
        if wanted is bool:
            return {"type": "boolean"}
        if wanted in _REFS:
            return _ref(wanted)
    raise TypeError(f"no JSON schema for the validator of {where}: {validator!r}; teach wire_schema about it")


def _from_hint(hint: Any, where: str) -> Schema:
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint in _REFS:
        return _ref(hint)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _from_hint(args[0], where)}
    if origin in (typing.Union, __import__("types").UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _nullable(_from_hint(rest[0], where))
    raise TypeError(f"no JSON schema for the type of {where}: {hint!r}; teach wire_schema about it")


def _default(attribute: attrs.Attribute) -> tuple[bool, Any]:  # type: ignore[type-arg]
    default = attribute.default
    if default is attrs.NOTHING:
        return False, None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return True, attrs.NOTHING
    if isinstance(default, tuple):
        return True, list(default)
    return True, default


def _class_schema(cls: type, *, type_const: str | None, description: str) -> Schema:
    hints = typing.get_type_hints(cls)
    properties: Schema = {}
    required: list[str] = []
    if type_const is not None:
        properties["type"] = {"const": type_const}
        required.append("type")
    for attribute in attrs.fields(cls):
        where = f"{cls.__name__}.{attribute.name}"
        if attribute.validator is not None:
            schema = _from_validator(attribute.validator, where)
        else:
            schema = _from_hint(hints[attribute.name], where)
        has_default, default = _default(attribute)
        if not has_default:
            required.append(attribute.name)
        elif default is not attrs.NOTHING:
            schema["default"] = default
        properties[attribute.name] = schema
    out: Schema = {"type": "object", "description": description, "properties": properties}
    out["required"] = required
    out["additionalProperties"] = False
    return out


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split())


def _messages() -> dict[str, Schema]:
    ident = {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 128}, _NULL]}
    events = {"type": "array", "items": {"$ref": "#/$defs/Decision"}}
    commands = {"type": "array", "items": {"$ref": "#/$defs/Command"}}
    deadline = _nullable(_TIME)

    def message(kind: str, description: str, props: Schema, required: list[str]) -> Schema:
        return {
            "type": "object",
            "description": description,
            "properties": {"type": {"const": kind}, **props},
            "required": ["type", *required],
            "additionalProperties": False,
        }

    peer = {
        "type": "object",
        "properties": {
            "peer": _KEY,
            "name": {"type": "string"},
            "state": {"type": "string"},
            "path": _nullable({"type": "string"}),
            "session": _nullable({"type": "string"}),
        },
        "required": ["peer", "name", "state", "path", "session"],
        "additionalProperties": False,
    }
    return {
        "hello": message(
            "hello",
            "Client, first line: the node this connection speaks for, and the protocol version.",
            {
                "id": ident,
                "protocol": {"const": p.PROTOCOL_VERSION},
                "node": _IDENTIFIER,
                "policy": {"$ref": "#/$defs/Policy"},
                "client": {"type": "string", "maxLength": 200},
            },
            ["protocol", "node"],
        ),
        "observe": message(
            "observe",
            "Client: one observation for the connection's node; answered by a reaction or an error.",
            {"id": ident, "event": {"$ref": "#/$defs/Observation"}},
            ["event"],
        ),
        "welcome": message(
            "welcome",
            "Server, answer to hello: where the node stands (peers, the log's last seq, next deadline).",
            {
                "id": ident,
                "protocol": {"const": p.PROTOCOL_VERSION},
                "natrelay": {"type": "string"},
                "node": _IDENTIFIER,
                "created": {"type": "boolean"},
                "last_seq": {"type": "integer", "minimum": 0},
                "now": _TIME,
                "next_deadline": deadline,
                "peers": {"type": "array", "items": peer},
            },
            ["id", "protocol", "natrelay", "node", "created", "last_seq", "now", "next_deadline", "peers"],
        ),
        "reaction": message(
            "reaction",
            "Server, answer to observe, sent after the observation and its decisions were appended.",
            {
                "id": ident,
                "seq": {"type": "integer", "minimum": 1},
                "decisions": events,
                "commands": commands,
                "now": _TIME,
                "next_deadline": deadline,
            },
            ["id", "seq", "decisions", "commands", "now", "next_deadline"],
        ),
        "push": message(
            "push",
            "Server, unsolicited: this node's decisions on another node's relay observation (logged).",
            {
                "seq": {"type": "integer", "minimum": 1},
                "cause": {"$ref": "#/$defs/Observation"},
                "decisions": events,
                "commands": commands,
                "now": _TIME,
                "next_deadline": deadline,
            },
            ["seq", "cause", "decisions", "commands", "now", "next_deadline"],
        ),
        "error": message(
            "error",
            "Server: the message was refused and nothing was logged for it.",
            {
                "id": ident,
                "code": {"enum": list(p.ERROR_CODES)},
                "field": _nullable({"type": "string"}),
                "message": {"type": "string"},
            },
            ["id", "code", "field", "message"],
        ),
        "goodbye": message(
            "goodbye",
            "Server: the service is shutting down; the connection closes after this line.",
            {"reason": {"type": "string"}},
            ["reason"],
        ),
    }


def protocol_schema() -> Schema:
    """The whole protocol as one JSON Schema document."""
    defs: Schema = {}
    messages = _messages()
    for name, schema in messages.items():
        defs[f"message_{name}"] = schema
    observation_classes: tuple[type[Event], ...] = tuple(p.OBSERVATION_TYPES.values())
    assert set(observation_classes) == set(OBSERVATIONS)
    for cls in (*observation_classes, *DECISIONS):
        defs[cls.TYPE] = _class_schema(cls, type_const=cls.TYPE, description=_doc(cls))
    for name, cls in p.COMMAND_TYPES.items():
        defs[f"command_{name}"] = _class_schema(cls, type_const=name, description=_doc(cls))
    for cls, name in _REFS.items():
        defs[name] = _class_schema(cls, type_const=None, description=_doc(cls))
    defs["Observation"] = {"oneOf": [{"$ref": f"#/$defs/{cls.TYPE}"} for cls in observation_classes]}
    defs["Decision"] = {"oneOf": [{"$ref": f"#/$defs/{cls.TYPE}"} for cls in DECISIONS]}
    defs["Command"] = {"oneOf": [{"$ref": f"#/$defs/command_{name}"} for name in p.COMMAND_TYPES]}
    defs["ClientMessage"] = {
        "oneOf": [{"$ref": "#/$defs/message_hello"}, {"$ref": "#/$defs/message_observe"}]
    }
    defs["ServerMessage"] = {
        "oneOf": [
            {"$ref": f"#/$defs/message_{n}"} for n in ("welcome", "reaction", "push", "error", "goodbye")
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://natrelay.invalid/serve/protocol-{p.PROTOCOL_VERSION}.json",
        "title": f"natrelay serve protocol {p.PROTOCOL_VERSION}",
        "description": "One JSON object per line; a line is a ClientMessage or a ServerMessage.",
        "oneOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": defs,
    }
