"""Policies from outside: a preset name or a TOML policy file, and writing one.

Owns the one policy-file format every command reads — `natrelay simulate
--policy`, `natrelay whatif --policy`, the agent's `policy_file` key — and
`natrelay whatif --sweep` writes: a `[policy]` table of `natrelay.core.policy.Policy`
fields (the agent's config has the same table), with `[policy.weights]` for
the relay score weights:

    [policy]
    name = "tuned"
    mode = "relay_first"
    attempt_timeout_ms = 1500

    [policy.weights]
    latency = 0.4

Fields left out keep `Policy()`'s defaults. A file without a `[policy]` table
is read as the table itself. Errors name the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from natrelay.core.policy import Policy
from natrelay.core.presets import PRESETS, preset
from natrelay.core.values import InvalidValue


class PolicyFileError(ValueError):
    """A policy name or file is wrong; the message names the file and the key."""


def load_policy(spec: str) -> Policy:
    """The preset called `spec`, or the policy in the TOML file at path `spec`."""
    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.suffix and not path.exists():
        raise PolicyFileError(f"unknown policy {spec!r}: not a preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PolicyFileError(f"{spec}: cannot read the policy file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{spec}: not valid TOML ({exc})") from None
    return policy_from_table(data.get("policy", data), spec)


def policy_from_table(table: object, source: str) -> Policy:
    """A `Policy` from a parsed `[policy]` table; errors name `source` and the key."""
    if not isinstance(table, dict):
        raise PolicyFileError(f"{source}: policy: expected a table, got {type(table).__name__}")
    known = {field.name: field for field in attrs.fields(Policy)}
    for key in table:
        if key not in known:
            raise PolicyFileError(f"{source}: policy.{key}: not a policy field (known: {', '.join(known)})")
    weights = table.get("weights")
    if weights is not None and not isinstance(weights, dict):
        raise PolicyFileError(f"{source}: policy.weights: expected a table")
    try:
        return Policy.from_dict(dict(table))
    except (InvalidValue, TypeError, ValueError) as exc:
        raise PolicyFileError(f"{source}: policy: {exc}") from None


def policy_toml(policy: Policy, header: str = "") -> str:
    """The policy as a TOML policy file (every field written out), with `header` as comments."""
    data: dict[str, Any] = {"policy": policy.to_dict()}
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + tomli_w.dumps(data)


def write_policy(policy: Policy, path: Path, header: str = "") -> Path:
    """Write the policy file; the result reads back to an equal `Policy`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy_toml(policy, header))
    return path
