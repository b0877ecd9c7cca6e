"""The wire protocol of `natrelay serve`: newline-delimited JSON messages, parsed and built.

Owns what crosses the socket: turning one received line into a validated client
message (or a `ProtocolError` naming the offending field), and turning the
engine's events and commands into the plain JSON objects the service sends.
Events travel as `{"type": <TYPE>, ...their fields}`, exactly the payload the log
stores (`core.codec`); commands as `{"type": <snake_case class name>, ...fields}`.
Nothing here touches a socket, the log or a clock.

Every field of an incoming event is checked with the event class's own
converter and validator, one field at a time, so an error names the field
(`event.candidates`) rather than the whole message; the schema in
`wire_schema` is generated from the same classes.
"""

from __future__ import annotations

import functools
import re
import typing
from typing import Any

import attrs
import orjson

from natrelay.core import values as v
from natrelay.core.codec import to_payload
from natrelay.core.commands import Command
from natrelay.core.events import EVENT_TYPES, OBSERVATIONS, Event
from natrelay.core.policy import Policy

#: The protocol version this service speaks (bumped on any incompatible change).
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: A line longer than this is refused (and the connection closed): 1 MiB.
MAX_LINE_BYTES = 1 << 20

#: Error codes, with what each means (docs/protocol.md lists them from here).
ERROR_CODES: dict[str, str] = {
    "bad_json": "the line is not valid JSON (UTF-8, one object per line)",
    "not_an_object": "the line is JSON but not an object",
    "missing_field": "a required field is absent; `field` names it",
    "unknown_field": "a field this message type does not have; `field` names it",
    "invalid_field": "a field has the wrong type or value; `field` names it, `message` says why",
    "unknown_message": "`type` is not a message a client may send",
    "unsupported_protocol": "the hello asks for a protocol version this service does not speak",
    "hello_required": "the first message of a connection must be a hello",
    "already_hello": "this connection already serves a node (one node per connection)",
    "node_in_use": "another connection is serving this node now",
    "log_write_failed": "the log refused the append; nothing was logged, the engine was rebuilt",
    "internal_error": "the engine failed on this observation; nothing was logged, the engine was rebuilt",
    "line_too_long": "the line exceeds the limit; the connection is closed",
}

#: Observation types a client may send, by TYPE.
OBSERVATION_TYPES: dict[str, type[Event]] = {cls.TYPE: cls for cls in OBSERVATIONS}


class ProtocolError(Exception):
    """A message the service refuses: a code, the field at fault (dotted path) and why."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        assert code in ERROR_CODES, code
        self.code = code
        self.field = field
        self.message = message
        super().__init__(f"{code}: {field + ': ' if field else ''}{message}")


@attrs.frozen
class Hello:
    """The first message of a connection: which node, which protocol, which policy."""

    id: Any
    protocol: int
    node: str
    policy: Policy | None
    client: str


@attrs.frozen
class Observe:
    """One observation for the connection's node."""

    id: Any
    event: Event


ClientMessage = Hello | Observe


# ---------------------------------------------------------------- commands


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


#: Command classes by their wire type.
COMMAND_TYPES: dict[str, type] = {_snake(cls.__name__): cls for cls in typing.get_args(Command)}
_COMMAND_NAME = {cls: name for name, cls in COMMAND_TYPES.items()}


def command_to_wire(command: Command) -> dict[str, Any]:
    """A command as sent: its type and every field (None included)."""
    return {"type": _COMMAND_NAME[type(command)], **attrs.asdict(command)}


def event_to_wire(event: Event) -> dict[str, Any]:
    """An event as sent: its TYPE and the payload the log stores."""
    return {"type": event.TYPE, **to_payload(event)}


# ----------------------------------------------------------------- parsing


def parse_line(line: bytes) -> ClientMessage:
    """One received line (without or with its newline) as a validated message."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("not_an_object", f"expected a JSON object, got {_json_type(data)}")
    kind = data.get("type")
    if kind == "hello":
        return _hello(data)
    if kind == "observe":
        return _observe(data)
    if "type" not in data:
        raise ProtocolError("missing_field", "every message has a type", "type")
    raise ProtocolError("unknown_message", f"{kind!r} is not a client message (hello, observe)", "type")


def message_id(line: bytes) -> Any:
    """The `id` of a line, if it is an object with a JSON scalar id (to echo in an error)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        value = data.get("id")
        if _valid_id(value):
            return value
    return None


def _valid_id(value: object) -> bool:
    return (
        value is None
        or (type(value) is int and abs(value) < 2**53)
        or (isinstance(value, str) and len(value) <= 128)
    )


def _json_type(value: object) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _check_keys(data: dict[str, Any], allowed: set[str], required: set[str], where: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise ProtocolError(
                "unknown_field", f"not a field of this message ({', '.join(sorted(allowed))})", where + key
            )
    for key in sorted(required):
        if key not in data:
            raise ProtocolError("missing_field", "required", where + key)


def _id(data: dict[str, Any]) -> Any:
    value = data.get("id")
    if not _valid_id(value):
        raise ProtocolError(
            "invalid_field", "an id is null, an integer or a string of at most 128 characters", "id"
        )
    return value


def _hello(data: dict[str, Any]) -> Hello:
    _check_keys(data, {"type", "id", "protocol", "node", "policy", "client"}, {"protocol", "node"})
    ident = _id(data)
    protocol = data["protocol"]
    if type(protocol) is not int:
        raise ProtocolError("invalid_field", f"expected an integer, got {_json_type(protocol)}", "protocol")
    if protocol not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "unsupported_protocol",
            f"protocol {protocol} is not supported; this service speaks"
            f" {', '.join(map(str, SUPPORTED_VERSIONS))}",
            "protocol",
        )
    node = data["node"]
    problem = v.identifier_problem(node)
    if problem is not None:
        raise ProtocolError("invalid_field", problem, "node")
    policy = data.get("policy")
    if policy is not None:
        if not isinstance(policy, dict):
            raise ProtocolError("invalid_field", f"expected an object, got {_json_type(policy)}", "policy")
        policy = _build(Policy, policy, "policy.")
    client = data.get("client", "")
    if not isinstance(client, str) or len(client) > 200:
        raise ProtocolError("invalid_field", "expected a string of at most 200 characters", "client")
    return Hello(ident, protocol, node, policy, client)


def _observe(data: dict[str, Any]) -> Observe:
    _check_keys(data, {"type", "id", "event"}, {"event"})
    ident = _id(data)
    return Observe(ident, event_from_wire(data["event"]))


def event_from_wire(data: object, where: str = "event") -> Event:
    """An observation from its JSON object; a `ProtocolError` names the first bad field."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_field", f"expected an object, got {_json_type(data)}", where)
    if "type" not in data:
        raise ProtocolError("missing_field", "an event has a type", f"{where}.type")
    type_name = data["type"]
    cls = OBSERVATION_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        if isinstance(type_name, str) and type_name in EVENT_TYPES:
            problem = f"{type_name} is a decision: only the engine takes those"
        else:
            problem = f"{type_name!r} is not an observation ({', '.join(OBSERVATION_TYPES)})"
        raise ProtocolError("invalid_field", problem, f"{where}.type")
    fields = {key: value for key, value in data.items() if key != "type"}
    built = _build(cls, fields, f"{where}.")
    assert isinstance(built, Event)
    return built


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Construct attrs class `cls` from `data`, checking each field on its own first."""
    attributes = attrs.fields(cls)
    names = {a.name for a in attributes}
    required = {a.name for a in attributes if a.default is attrs.NOTHING}
    _check_keys(data, names, required, where)
    hints = _hints(cls)
    for attribute in attributes:
        if attribute.name not in data:
            continue
        value = data[attribute.name]
        nested = hints.get(attribute.name)
        if isinstance(value, dict) and isinstance(nested, type) and attrs.has(nested):
            value = _build(nested, value, f"{where}{attribute.name}.")  # names the inner field
        try:
            if attribute.converter is not None:
                value = attribute.converter(value)  # type: ignore[misc,operator]
            if attribute.validator is not None:
                attribute.validator(None, attribute, value)
        except (v.InvalidValue, TypeError, ValueError) as exc:
            raise ProtocolError(
                "invalid_field", _strip_name(str(exc), attribute.name), where + attribute.name
            ) from None
    try:
        return cls(**data)
    except (v.InvalidValue, TypeError, ValueError) as exc:  # a rule across fields
        raise ProtocolError("invalid_field", str(exc), where.rstrip(".")) from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_name(message: str, name: str) -> str:
    """Validators prefix their message with `name=value: ` or `name: `; the field says it already."""
    for prefix in (f"{name}: ",):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# ----------------------------------------------------------- server messages


def welcome(
    ident: Any,
    node: str,
    *,
    version: str,
    last_seq: int,
    now: int,
    next_deadline: int | None,
    peers: list[dict[str, Any]],
    created: bool,
) -> dict[str, Any]:
    return {
        "type": "welcome",
        "id": ident,
        "protocol": PROTOCOL_VERSION,
        "natrelay": version,
        "node": node,
        "created": created,
        "last_seq": last_seq,
        "now": now,
        "next_deadline": next_deadline,
        "peers": peers,
    }


def reaction(
    ident: Any,
    seq: int,
    decisions: tuple[Event, ...],
    commands: tuple[Command, ...],
    now: int,
    next_deadline: int | None,
) -> dict[str, Any]:
    return {
        "type": "reaction",
        "id": ident,
        "seq": seq,
        "decisions": [event_to_wire(d) for d in decisions],
        "commands": [command_to_wire(c) for c in commands],
        "now": now,
        "next_deadline": next_deadline,
    }


def push(
    cause: Event,
    seq: int,
    decisions: tuple[Event, ...],
    commands: tuple[Command, ...],
    now: int,
    next_deadline: int | None,
) -> dict[str, Any]:
    """Decisions this node took on another node's relay observation (unsolicited)."""
    return {
        "type": "push",
        "seq": seq,
        "cause": event_to_wire(cause),
        "decisions": [event_to_wire(d) for d in decisions],
        "commands": [command_to_wire(c) for c in commands],
        "now": now,
        "next_deadline": next_deadline,
    }


def error(ident: Any, exc: ProtocolError) -> dict[str, Any]:
    return {"type": "error", "id": ident, "code": exc.code, "field": exc.field, "message": exc.message}


def goodbye(reason: str) -> dict[str, Any]:
    return {"type": "goodbye", "reason": reason}


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line."""
    return orjson.dumps(message) + b"\n"
