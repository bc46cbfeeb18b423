"""Outputs that follow a grammar: the dialect-neutral side of structured
outputs and tool calls.

A route turns what its request asks for (a JSON schema, any JSON object, a
regular expression, a Lark or GBNF grammar, a list of choices) into an
``OutputGrammar``; ``compile`` makes it the kernel's grammar for the served
model, off the event loop and once per distinct source (the kernel keeps
compiled grammars). A grammar that cannot be compiled is a GrammarRejected
naming the request field: never a silent fallback to free text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from pycompat import _kernel
from pycompat.api.errors import ServiceError
from pycompat.loading.grammars import GrammarsUnavailable

if TYPE_CHECKING:
    from pycompat.api.registry import ServedModel

# How JSON is laid out: one space after ',' and ':', no other whitespace. A
# small model left free to add whitespace can loop on it forever; this is also
# how Python's json.dumps writes JSON, which models have seen most.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class OutputGrammar:
    kind: str  # "json_schema", "regex" or "lark" (rust/grammar.rs)
    source: str
    field: str  # the request field it comes from (errors name it)
    label: str = ""  # what it is, for errors: "response_format 'person'", "function 'get_weather'"


class GrammarRejected(ServiceError):
    """The grammar from ``field`` cannot be compiled (or the model cannot be
    constrained); ``reason`` says why. ``kind`` and ``label`` as OutputGrammar's."""

    def __init__(self, reason: str, field: str, label: str, kind: str):
        super().__init__(reason, field)
        self.reason, self.field, self.label, self.kind = reason, field, label, kind


# Where a JSON schema holds the schemas of an object's or array's own values,
# which may be closed on their own. Schemas under allOf, not, if/then/else or
# $defs (reached by $ref, possibly from an allOf) are left as they are: closing
# one there could change what the whole accepts, or leave it nothing to accept.
_VALUE_SCHEMA = ("additionalProperties", "items", "contains", "additionalItems")
_VALUE_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_VALUE_SCHEMA_MAPS = ("properties", "patternProperties")
# Keywords beside which an object's properties may come from elsewhere.
_EXTENDED_BY = ("additionalProperties", "patternProperties", "allOf", "anyOf", "oneOf", "$ref", "unevaluatedProperties",
                "dependentSchemas", "dependencies", "if", "then", "else", "not")


def closed_objects(schema: Any) -> Any:
    """``schema`` with each object schema that lists its ``properties`` and
    says nothing of others given ``additionalProperties: false``, as OpenAI's
    strict mode requires: the model is kept from inventing keys (a small model
    otherwise goes on adding them), and every output is still valid against
    ``schema``. Left open: objects whose properties other keywords may extend or
    whose ``required`` names a key ``properties`` lacks; ``const``, ``enum`` and
    ``default`` values are never touched."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _VALUE_SCHEMA:
        if key in out:
            value = out[key]
            out[key] = [closed_objects(s) for s in value] if isinstance(value, list) else closed_objects(value)
    for key in _VALUE_SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) for s in out[key]]
    for key in _VALUE_SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    properties, required = out.get("properties"), out.get("required", [])
    if (isinstance(properties, dict) and not any(k in out for k in _EXTENDED_BY)
            and isinstance(required, list) and all(r in properties for r in required if isinstance(r, str))):
        out["additionalProperties"] = False
    return out


def json_schema_value(schema: dict) -> dict:
    """A JSON schema as the kernel compiles it: objects closed, the JSON layout set."""
    out = closed_objects(schema)
    out.setdefault("x-guidance", JSON_LAYOUT)
    return out


def json_schema(schema: dict, field: str, label: str = "") -> OutputGrammar:
    return OutputGrammar("json_schema", json.dumps(json_schema_value(schema), ensure_ascii=False), field, label or field)


def any_json_object(field: str) -> OutputGrammar:
    return json_schema({"type": "object"}, field)


def regex(pattern: str, field: str) -> OutputGrammar:
    return OutputGrammar("regex", pattern, field, field)


def lark(source: str, field: str, label: str = "") -> OutputGrammar:
    return OutputGrammar("lark", source, field, label or field)


def lark_string(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def choice(options: list[str], field: str) -> OutputGrammar:
    """Exactly one of ``options``."""
    return lark("start: " + " | ".join(lark_string(o) for o in options), field)


async def compile(served: ServedModel, grammar: OutputGrammar) -> _kernel.Grammar:
    """``grammar`` compiled for the served model (off the event loop). Raises GrammarRejected."""
    try:
        return await trio.to_thread.run_sync(served.engine.model.grammars.compile, grammar.kind, grammar.source)
    except (_kernel.GrammarError, GrammarsUnavailable) as e:
        raise GrammarRejected(str(e), grammar.field, grammar.label, grammar.kind) from None
