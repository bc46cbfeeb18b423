"""Validation of response bodies against OpenAI's own OpenAPI spec
(../shared/openai-openapi/openapi.yaml beside this repository, or the file
named by PYCOMPAT_OPENAPI_SPEC), the contract we implement.

The spec is not part of this repository. Where it is missing (a clone on its
own), validation is left out and says so: test_the_openapi_spec_is_present
skips with the path it looked at, and the pytest header names it; every other
assertion of the tests still runs.

Two adjustments make the spec checkable with a JSON Schema validator:
``nullable: true`` (OpenAPI 3.0 style, still used in places) becomes an
explicit null alternative, and every object schema that lists its
properties is closed (no other properties), so a misspelt or invented
field fails the test instead of passing silently. A schema made of an
``allOf`` (Response is three schemas together) is closed as a whole
(``unevaluatedProperties``), its parts left open: closing each part would
refuse the properties the other parts define.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import yaml

SPEC_PATH = Path(os.environ.get("PYCOMPAT_OPENAPI_SPEC")
                 or Path(__file__).resolve().parents[2] / "shared" / "openai-openapi" / "openapi.yaml")
SPEC_PRESENT = SPEC_PATH.is_file()


_OPEN = "__open"  # suffix of a component's copy left open, for use as an allOf part


def _adjust(node, close: bool = True):
    if isinstance(node, list):
        return [_adjust(n, close) for n in node]
    if not isinstance(node, dict):
        return node
    parts = node.get("allOf")
    node = {k: _adjust(v) for k, v in node.items() if k != "allOf"}
    if parts is not None:
        node["allOf"] = [{"$ref": p["$ref"] + _OPEN} if set(p) == {"$ref"} else _adjust(p, close=False) for p in parts]
        if close:
            node["unevaluatedProperties"] = False
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
        return node
    # Closed whether or not the schema says "type: object" (Model, for one, does not).
    if close and node.get("type", "object") == "object" and "properties" in node and "additionalProperties" not in node and parts is None:
        node["additionalProperties"] = False
    return node


@functools.lru_cache(maxsize=1)
def _spec() -> dict:
    with open(SPEC_PATH) as f:
        raw = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = copy.deepcopy(raw)
    schemas = {k: _adjust(v) for k, v in raw["components"]["schemas"].items()}
    schemas.update({k + _OPEN: _adjust(v, close=False) for k, v in raw["components"]["schemas"].items()})
    spec["components"]["schemas"] = schemas
    return spec


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    spec = _spec()
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def validate(name: str, body: dict) -> None:
    """Raises jsonschema.ValidationError if ``body`` is not a valid ``name`` (a
    component schema). Without the spec, does nothing (see the module's note)."""
    if SPEC_PRESENT:
        _validator(name).validate(body)


def validate_completion_chunk(chunk: dict) -> None:
    """A /v1/completions stream chunk. The spec reuses CreateCompletionResponse, whose
    finish_reason may not be null, but OpenAI's API sends null in every chunk before the
    last (and clients rely on it), so that one field is checked by hand."""
    chunk = copy.deepcopy(chunk)
    for choice in chunk.get("choices", []):
        if choice.get("finish_reason", "absent") is None:
            choice["finish_reason"] = "stop"  # a valid value, so the rest is still checked
    validate("CreateCompletionResponse", chunk)


def error_of(exc) -> dict:
    """The error object of an SDK's APIStatusError, checked against the spec's ErrorResponse."""
    body = exc.response.json()
    validate("ErrorResponse", body)
    return body["error"]
