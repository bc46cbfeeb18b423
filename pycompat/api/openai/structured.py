"""The request fields that constrain an answer's text, read into one OutputGrammar.

- OpenAI's ``response_format``: ``text``, ``json_object``, ``json_schema``
  (``{"name", "schema", "strict", "description"}``); llama.cpp's
  ``{"type": "json_object", "schema": ...}`` too.
- vLLM's ``guided_json``, ``guided_regex``, ``guided_choice`` and
  ``guided_grammar`` (Lark, or GBNF when it has ``::=`` rules).
- llama.cpp's ``grammar`` (GBNF) and ``json_schema``.

A request may use one of them; two at once is a 400 (which would win is not obvious).
"""

from __future__ import annotations

import json
import re

from pycompat.api import gbnf, structured
from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.openai.protocol import Fields
from pycompat.api.structured import OutputGrammar

EXTRAS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "grammar", "json_schema")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CHOICES = 1024


def output_grammar(fields: Fields) -> OutputGrammar | None:
    """The grammar the request's answer must follow; None for free text."""
    given = [name for name in ("response_format", *EXTRAS) if fields.requested(name) is not None]
    found = [g for g in (_read(fields, name) for name in given) if g is not None]
    if len(found) > 1:
        raise invalid_value(given[1], f"only one of 'response_format' and {', '.join(repr(e) for e in EXTRAS)} may constrain the output.")
    return found[0] if found else None


def _read(fields: Fields, name: str) -> OutputGrammar | None:
    value = fields.requested(name)
    if name == "response_format":
        return response_format(value)
    if name in ("guided_json", "json_schema"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # nesting a body's own depth limit would have refused
                raise invalid_value(name, "the schema is not valid JSON, or nests too deeply.") from None
        if not isinstance(value, dict):
            raise invalid_type(name, "a JSON schema (an object)", value)
        return structured.json_schema(value, name)
    if name == "guided_regex":
        if not isinstance(value, str):
            raise invalid_type(name, "a string", value)
        return structured.regex(value, name)
    if name == "guided_choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise invalid_type(name, "a non-empty array of strings", value)
        if len(value) > MAX_CHOICES:
            raise invalid_value(name, f"at most {MAX_CHOICES} choices.")
        return structured.choice(value, name)
    # guided_grammar (Lark, or GBNF) and grammar (GBNF)
    if not isinstance(value, str):
        raise invalid_type(name, "a string", value)
    if name == "grammar" or gbnf.looks_like_gbnf(value):
        try:
            return structured.lark(gbnf.to_lark(value), name)
        except gbnf.GbnfError as e:
            raise invalid_value(name, f"not a GBNF grammar this server reads: {e}.") from None
    return structured.lark(value, name)


def response_format(value) -> OutputGrammar | None:
    if not isinstance(value, dict):
        raise invalid_type("response_format", "an object", value)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema")  # llama.cpp's way of giving a schema
        if schema is None:
            return structured.any_json_object("response_format")
        if not isinstance(schema, dict):
            raise invalid_type("response_format.schema", "an object", schema)
        return structured.json_schema(schema, "response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if spec is None:
            raise missing("response_format.json_schema")
        if not isinstance(spec, dict):
            raise invalid_type("response_format.json_schema", "an object", spec)
        return _named_schema(spec, "response_format.json_schema", "response_format", schema_required=False)
    if not isinstance(kind, str):
        raise missing("response_format.type")
    raise invalid_value("response_format.type", f"'{kind[:40]}' is not one of ['text', 'json_object', 'json_schema'].")


def text_format(value) -> OutputGrammar | None:
    """The Responses API's ``text``: ``{"format": {"type": "text" | "json_object" |
    "json_schema", "name", "schema", "strict"}}`` (the schema beside the name,
    not under ``json_schema`` as in chat's response_format)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("text", "an object", value)
    verbosity = value.get("verbosity")
    if verbosity not in (None, "medium"):
        raise invalid_value("text.verbosity", "this model does not adjust its verbosity: only 'medium' (the default) is supported.")
    fmt = value.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return structured.any_json_object("text.format")
    if kind == "json_schema":
        return _named_schema(fmt, "text.format", "text.format", schema_required=True)
    if not isinstance(kind, str):
        raise missing("text.format.type")
    raise invalid_value("text.format.type", f"'{kind[:40]}' is not one of ['text', 'json_object', 'json_schema'].")


def _named_schema(spec: dict, where: str, field: str, schema_required: bool) -> OutputGrammar:
    """A ``json_schema`` format's ``name``, ``strict`` and ``schema`` (at ``where``),
    checked and compiled for ``field``. Chat's may leave the schema out (any JSON);
    the Responses API's may not."""
    name = spec.get("name")
    if name is None:
        raise missing(f"{where}.name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise invalid_value(f"{where}.name", "must be a string of a-z, A-Z, 0-9, underscores and dashes, at most 64 long.")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise invalid_type(f"{where}.strict", "a boolean", spec["strict"])
    schema = spec.get("schema")
    if schema is None:
        if schema_required:
            raise missing(f"{where}.schema")
        schema = {}
    if not isinstance(schema, dict):
        raise invalid_type(f"{where}.schema", "an object", schema)
    return structured.json_schema(schema, field, f"{field} '{name}'")
