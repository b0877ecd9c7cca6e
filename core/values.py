"""Validation of the values that cross natrelay's edges: keys, endpoints, times.

This module owns what a valid WireGuard public key, endpoint, relay id and
millisecond time look like. It never parses configuration files and never
touches the network: it only says yes, or says precisely what is wrong.

Checks are cached because the same keys and endpoints recur in every event of
a log, and replay re-validates each one.
"""

from __future__ import annotations

import binascii
import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Protocol, cast

MAX_TIME_MS = 2**62
MAX_ID_LENGTH = 128
#: A peer's candidate endpoints, at most (innernet's cap: more is an error, not truncated).
MAX_CANDIDATES = 10


class InvalidValue(ValueError):
    """A value failed validation; the message names the field and the problem."""


class CachedCheck(Protocol):
    """A check (value -> its problem, or None) whose answers for strings are cached."""

    def __call__(self, value: object) -> str | None: ...

    def cache_clear(self) -> None: ...


def _only_strings_cached(check: Callable[[object], str | None]) -> CachedCheck:
    """Cache a check for strings (keys and endpoints recur in every event of a log);
    anything else, hashable or not, is checked uncached."""
    cached = lru_cache(maxsize=1 << 18)(check)

    def run(value: object) -> str | None:
        return cached(value) if type(value) is str else check(value)

    run.__doc__ = check.__doc__
    run.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return cast(CachedCheck, run)


@_only_strings_cached
def public_key_problem(value: object) -> str | None:
    """Why `value` is not a WireGuard public key (base64 of 32 bytes), or None."""
    if not isinstance(value, str):
        return f"expected a base64 string, got {type(value).__name__}"
    if len(value) != 44:
        return f"expected 44 base64 characters (32 bytes), got {len(value)}"
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        return f"not valid base64 ({exc})"
    if len(raw) != 32:
        return f"decodes to {len(raw)} bytes, expected 32"
    return None


def _address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.is_unspecified:
        return f"unspecified address {address}"
    if address.is_multicast:
        return f"multicast address {address}"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast address 255.255.255.255"
    return None


def _split_endpoint(value: str) -> tuple[str, str]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise InvalidValue("IPv6 endpoints are written [address]:port")
        return host, port
    host, sep, port = value.rpartition(":")
    if not sep:
        raise InvalidValue("expected address:port")
    return host, port


def parse_endpoint(value: object) -> str:
    """Parse an endpoint written by a human or a peer and return its canonical form."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected an endpoint string, got {type(value).__name__}")
    host, port_text = _split_endpoint(value.strip())
    if not port_text.isdigit():
        raise InvalidValue(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidValue(f"port {port} is outside 1-65535")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidValue(f"{host!r} is not an IP address") from None
    if value.strip().startswith("[") != isinstance(address, ipaddress.IPv6Address):
        raise InvalidValue("IPv6 addresses go in brackets, IPv4 addresses do not")
    problem = _address_problem(address)
    if problem:
        raise InvalidValue(problem)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.compressed}]:{port}"
    return f"{address}:{port}"


@_only_strings_cached
def endpoint_problem(value: object) -> str | None:
    """Why `value` is not a canonical endpoint (`ip:port` or `[ipv6]:port`), or None."""
    try:
        canonical = parse_endpoint(value)
    except InvalidValue as exc:
        return str(exc)
    if canonical != value:
        return f"not canonical: write {canonical!r}"
    return None


@_only_strings_cached
def identifier_problem(value: object) -> str | None:
    """Why `value` is not a usable relay/session/node id, or None."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value or len(value) > MAX_ID_LENGTH:
        return f"expected 1-{MAX_ID_LENGTH} characters, got {len(value)}"
    if not value.isprintable() or any(c.isspace() or c == "/" for c in value):
        return "must be printable, without spaces or '/'"
    return None


def time_problem(value: object) -> str | None:
    """Why `value` is not an integer millisecond time, or None."""
    if type(value) is not int:
        return f"expected integer milliseconds, got {type(value).__name__}"
    if not 0 <= value < MAX_TIME_MS:
        return f"{value} ms is out of range"
    return None


def _raise(attribute: Any, value: object, problem: str | None) -> None:
    if problem is not None:
        raise InvalidValue(f"{attribute.name}={value!r}: {problem}")


def public_key(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a WireGuard public key."""
    _raise(attribute, value, public_key_problem(value))


def endpoint(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a canonical endpoint."""
    _raise(attribute, value, endpoint_problem(value))


def optional_endpoint(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: None or a canonical endpoint."""
    if value is not None:
        _raise(attribute, value, endpoint_problem(value))


def endpoints(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a tuple of distinct canonical endpoints."""
    if not isinstance(value, tuple):
        raise InvalidValue(f"{attribute.name}: expected a tuple of endpoints")
    for item in value:
        _raise(attribute, item, endpoint_problem(item))
    if len(set(value)) != len(value):
        raise InvalidValue(f"{attribute.name}: duplicate endpoints in {value!r}")


def candidates(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: distinct canonical endpoints, at most MAX_CANDIDATES of them."""
    endpoints(instance, attribute, value)
    assert isinstance(value, tuple)
    if len(value) > MAX_CANDIDATES:
        raise InvalidValue(f"{attribute.name}: {len(value)} endpoints, at most {MAX_CANDIDATES} allowed")


def identifier(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a relay, session or node id."""
    _raise(attribute, value, identifier_problem(value))


def optional_identifier(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: None or an id."""
    if value is not None:
        _raise(attribute, value, identifier_problem(value))


def time_ms(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: integer milliseconds."""
    _raise(attribute, value, time_problem(value))


def non_negative_int(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: an int >= 0 (bool is not an int here)."""
    if type(value) is not int or value < 0:
        raise InvalidValue(f"{attribute.name}={value!r}: expected an integer >= 0")


def positive_int(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: an int >= 1."""
    if type(value) is not int or value < 1:
        raise InvalidValue(f"{attribute.name}={value!r}: expected an integer >= 1")


def fraction(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a float in [0, 1]."""
    if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
        raise InvalidValue(f"{attribute.name}={value!r}: expected a number in [0, 1]")


def text(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator: a string of at most 1000 characters (reasons, names)."""
    if not isinstance(value, str) or len(value) > 1000:
        raise InvalidValue(f"{attribute.name}: expected a string of at most 1000 characters")


def one_of(*choices: str) -> Any:
    """attrs validator factory: the value must be one of `choices`."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value not in choices:
            raise InvalidValue(f"{attribute.name}={value!r}: expected one of {', '.join(choices)}")

    check.choices = choices  # type: ignore[attr-defined]  # read by schema generators
    return check
