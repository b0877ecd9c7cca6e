"""The generated part of docs/protocol.md: message tables, error codes and the JSON Schema.

Owns rendering the protocol of `natrelay serve` (adapters/serve/wire_schema.py)
into Markdown between two markers, so the document cannot drift from the
event and command classes: tests/serve/test_serve_protocol.py fails when the
document differs from what this module renders.

    python -m natrelay.tools.protocol_doc docs/protocol.md          # rewrite the section
    python -m natrelay.tools.protocol_doc docs/protocol.md --check  # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from natrelay.adapters.serve import protocol as p
from natrelay.adapters.serve.wire_schema import protocol_schema

BEGIN = "<!-- BEGIN GENERATED: python -m natrelay.tools.protocol_doc docs/protocol.md -->"
END = "<!-- END GENERATED -->"


def _field(name: str, schema: dict[str, Any], required: bool) -> str:
    text = f"`{name}`" if required else f"`{name}`?"
    if "default" in schema and not required:
        text += f" = `{json.dumps(schema['default'])}`"
    return text


def _table(defs: dict[str, Any], names: list[str], title: str) -> list[str]:
    lines = [f"| {title} | fields (`?` optional, `= default`) | meaning |", "|---|---|---|"]
    for name in names:
        schema = defs[name]
        required = set(schema["required"])
        fields = [
            _field(field, sub, field in required)
            for field, sub in schema["properties"].items()
            if field != "type"
        ]
        kind = schema["properties"]["type"]["const"]
        lines.append(f"| `{kind}` | {', '.join(fields)} | {schema['description']} |")
    return lines


def render() -> str:
    """The generated section, markers included."""
    schema = protocol_schema()
    defs = schema["$defs"]

    def refs(union: str) -> list[str]:
        return [item["$ref"].rsplit("/", 1)[1] for item in defs[union]["oneOf"]]

    lines = [BEGIN, "", f"Protocol version: **{p.PROTOCOL_VERSION}**.", "", "### Messages", ""]
    lines += _table(defs, refs("ClientMessage") + refs("ServerMessage"), "message")
    lines += ["", "### Observations (what `observe.event` may be)", ""]
    lines += _table(defs, refs("Observation"), "type")
    lines += ["", "### Decisions (in `reaction.decisions` and `push.decisions`)", ""]
    lines += _table(defs, refs("Decision"), "type")
    lines += ["", "### Commands (in `reaction.commands` and `push.commands`)", ""]
    lines += _table(defs, refs("Command"), "type")
    lines += ["", "### Error codes", "", "| code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {meaning} |" for code, meaning in p.ERROR_CODES.items()]
    lines += [
        "",
        "### JSON Schema",
        "",
        "Also printed by `natrelay serve --schema`.",
        "",
        "```json",
        json.dumps(schema, indent=1),
        "```",
        "",
        END,
    ]
    return "\n".join(lines)


def update(document: str) -> str:
    """`document` with its generated section replaced by a fresh rendering."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no generated section ({BEGIN} ... {END})")
    return document[:start] + render() + document[end + len(END) :]


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m natrelay.tools.protocol_doc DOC [--check]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    current = path.read_text()
    fresh = update(current)
    if "--check" in argv[1:]:
        if fresh != current:
            print(f"{path} is stale: run python -m natrelay.tools.protocol_doc {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
