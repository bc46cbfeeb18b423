"""OpenAI's request fields, each declared once: its name, type and bounds,
default, and the routes that implement it or accept and ignore it.

``read`` checks a body's field names against its route: a field OpenAI
defines for the route but that we do not implement yet is accepted and
ignored; anything else is a 400 naming it, so a typo never silently changes
nothing. The route then reads each field with ``get``, in an order of its
choosing (it decides which error a request with several wrong fields gets),
and each value is checked against its declaration as it is read, with OpenAI's
error messages and codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pycompat.api.errors import APIError
from pycompat.api.openai import stored
from pycompat.api.openai.errors import invalid_type, invalid_value, missing

CHAT = "chat.completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"
CHAT_UPDATE = "chat.completions.update"  # POST /chat/completions/{completion_id}: a stored one's metadata
BOTH = frozenset({CHAT, COMPLETIONS})  # the routes of the older generating API
ALL_GENERATING = BOTH | {RESPONSES}
ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, CHAT_UPDATE)

INT32_MAX = (1 << 31) - 1  # the bound of integer fields that have no natural one
INT64 = (-(1 << 63), (1 << 63) - 1)
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 1000
MAX_LOGIT_BIAS = 1024  # entries; OpenAI's limit is in the same range
MAX_REPETITION_PENALTY = 10.0

# A kind checks a value that is present (not null) and returns it as the route
# uses it; some need facts from elsewhere (the model's vocabulary, 'stream').
Kind = Callable[..., Any]


def _shown(value: int | float) -> str:
    """A number for an error message: a 4,000-digit integer is shortened."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def any_json(name: str, value: Any) -> Any:
    """Any JSON value: the route parses it itself (messages, prompt)."""
    return value


def string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_type(name, "a string", value)
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_type(name, "a boolean", value)
    return value


def one_of(*values: str) -> Kind:
    def read(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise invalid_type(name, "a string", value)
        if value not in values:
            raise invalid_value(name, f"'{value[:40]}' is not one of {list(values)}.")
        return value

    return read


def number(low: float, high: float) -> Kind:
    def read(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise invalid_type(name, "a decimal", value)
        if value < low:  # (1e999 parses to infinity: above any maximum)
            raise APIError(400, f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, but got {_shown(value)} instead.", param=name, code="decimal_below_min_value")
        if value > high:
            raise APIError(400, f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, but got {_shown(value)} instead.", param=name, code="decimal_above_max_value")
        return float(value)

    return read


def positive_number(high: float) -> Kind:
    """A number above 0 (0 itself refused) and at most ``high``."""
    at_most = number(-math.inf, high)

    def read(name: str, value: Any) -> float:
        checked = at_most(name, value)
        if checked <= 0:
            raise APIError(400, f"Invalid '{name}': decimal below minimum value. Expected a value > 0, but got {_shown(value)} instead.", param=name, code="decimal_below_min_value")
        return checked

    return read


def integer(low: int, high: int) -> Kind:
    def read(name: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():  # 3.0 is 3; 1e300 is then above the maximum
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(name, "an integer", value)
        if value < low:
            raise APIError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {_shown(value)} instead.", param=name, code="integer_below_min_value")
        if value > high:
            raise APIError(400, f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {_shown(value)} instead.", param=name, code="integer_above_max_value")
        return value

    return read


def json_object(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise invalid_type(name, "an object", value)
    return value


def metadata(name: str, value: Any) -> dict[str, str]:
    """Key-value strings within OpenAI's limits (stored.metadata)."""
    return stored.metadata(value, name)


def only(values: list, why: str) -> Kind:
    """A field accepted only at ``values`` (what this server does anyway); any other value is a 400 saying ``why``."""
    def read(name: str, value: Any) -> Any:
        if value not in values:
            raise invalid_value(name, why)
        return value

    return read


def stop_strings(name: str, value: Any) -> list[str]:
    """A string or up to MAX_STOP_STRINGS strings."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid_type(name, "a string or an array of strings", value)
    if len(value) > MAX_STOP_STRINGS:
        raise invalid_value(name, f"array too long. Expected an array with maximum length {MAX_STOP_STRINGS}, but got an array with length {len(value)} instead.")
    # Matching a partial stop string costs its length squared per token: bound it.
    if any(len(s) > MAX_STOP_LENGTH for s in value):
        raise invalid_value(name, f"each stop sequence may be at most {MAX_STOP_LENGTH} characters long.")
    return value


def logit_bias(name: str, value: Any, vocab_size: int) -> dict[int, float]:
    """``{"token id": bias}``, each bias in [-100, 100], added to that token's logit."""
    if not isinstance(value, dict):
        raise invalid_type(name, "an object", value)
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid_value(name, f"too many entries. Expected at most {MAX_LOGIT_BIAS}, but got {len(value)} instead.")
    out = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 12 and int(key) < vocab_size):
            raise invalid_value(name, f"the key {key[:40]!r} is not a token id of this model (0 to {vocab_size - 1}).")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise invalid_value(name, f"the bias of token {key} must be a number from -100 to 100, but got {bias!r} instead.")
        out[int(key)] = float(bias)
    return out


def include_usage(name: str, value: Any, stream: bool) -> bool:
    """``stream_options`` read as its ``include_usage``; only allowed with ``stream``."""
    if not isinstance(value, dict):
        raise invalid_type(name, "an object", value)
    if not stream:
        raise invalid_value(name, "stream_options are only allowed when 'stream' is true.")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise invalid_type(f"{name}.include_usage", "a boolean", include)
    return include


@dataclass(frozen=True)
class Field:
    name: str
    routes: frozenset[str]  # the routes that accept it
    kind: Kind | None  # None: accepted and ignored (defined by OpenAI, not implemented yet)
    default: Any = None  # when absent or null
    required: bool = False


def _fields(routes, kind: Kind | None, *names: str, **options) -> list[Field]:
    return [Field(name, frozenset(routes), kind, **options) for name in names]


def _ignored(routes, *names: str) -> list[Field]:
    return _fields(routes, None, *names)


FIELDS = [
    *_fields(BOTH | {EMBEDDINGS, RESPONSES}, string, "model", required=True),
    *_fields({CHAT}, any_json, "messages", required=True),  # chat.parse_messages
    *_fields({COMPLETIONS}, any_json, "prompt", required=True),  # completions.parse_prompts
    *_fields({CHAT}, integer(1, INT32_MAX), "max_completion_tokens", "max_tokens"),  # none: until the context is full
    *_fields({COMPLETIONS}, integer(0, INT32_MAX), "max_tokens", default=16),  # OpenAI's default for this route
    *_fields(ALL_GENERATING, boolean, "stream", default=False),
    *_fields(BOTH, include_usage, "stream_options", default=False),
    # Sampling. Left out, they take the model's recommended values, then these
    # defaults (OpenAI's). top_k and min_p are not OpenAI's, but llama.cpp and vLLM accept them.
    *_fields(ALL_GENERATING, number(0.0, 2.0), "temperature", default=1.0),
    *_fields(ALL_GENERATING, number(0.0, 1.0), "top_p", default=1.0),
    *_fields(BOTH, integer(0, INT32_MAX), "top_k", default=0),
    *_fields(BOTH, number(0.0, 1.0), "min_p", default=0.0),
    *_fields(BOTH, integer(*INT64), "seed"),  # none: a fresh random seed
    *_fields(BOTH, stop_strings, "stop"),
    *_fields(BOTH, logit_bias, "logit_bias"),
    # Log-probabilities: on chat a boolean and 0-20 alternatives, on completions 0-5 alternatives (OpenAI's bounds).
    *_fields({CHAT}, boolean, "logprobs", default=False),
    *_fields({CHAT}, integer(0, 20), "top_logprobs"),
    *_fields({COMPLETIONS}, integer(0, 5), "logprobs"),
    # Penalties on tokens already seen (rust/sampler.rs: which tokens each looks at, and the order).
    *_fields(BOTH, number(-2.0, 2.0), "presence_penalty", "frequency_penalty", default=0.0),
    # Not OpenAI's: vLLM's and llama.cpp's, 1 = off. Values in use lie near 1 (1.1 to 1.5); at 10
    # a seen token's logit of 20 is already 2, so more only bans harder, and a bound turns a
    # slip (100 for 1.00) into a 400 rather than nonsense.
    *_fields(BOTH, positive_number(MAX_REPETITION_PENALTY), "repetition_penalty", default=1.0),
    # Not OpenAI's: vLLM's, for benchmarks: stop tokens are generated (adding no text) up to max_tokens.
    *_fields(BOTH, boolean, "ignore_eos", default=False),
    *_fields(BOTH, integer(1, 128), "n", default=1),  # choices per prompt
    # One tier here: a request that names one is told it got "default", as OpenAI answers.
    *_fields({CHAT, RESPONSES}, one_of("auto", "default", "flex", "scale", "priority", "fast"), "service_tier"),
    # Who is asking and cache hints: checked, then without effect on the answer (the prefix cache is automatic).
    *_fields(ALL_GENERATING | {EMBEDDINGS}, string, "user"),
    *_fields({CHAT, RESPONSES}, string, "safety_identifier", "prompt_cache_key"),
    *_fields({CHAT, RESPONSES}, one_of("in_memory", "24h"), "prompt_cache_retention"),
    *_fields({CHAT, RESPONSES}, json_object, "prompt_cache_options"),
    # What a text model cannot do: a 400 unless the value asks for what it does anyway (OpenAI
    # answers a model without the feature the same way).
    *_fields({CHAT}, only([["text"]], "this model answers in text only: the only modalities it supports are [\"text\"]."), "modalities"),
    *_fields({CHAT}, only([], "this model answers in text only: audio output is not supported."), "audio"),
    *_fields({CHAT}, only(["none"], "this model does not reason: reasoning_effort is not supported (only 'none')."), "reasoning_effort"),
    *_fields({CHAT}, only(["medium"], "this model does not adjust its verbosity: only 'medium' (the default) is supported."), "verbosity"),
    *_fields({CHAT}, only([], "this server does not search the web."), "web_search_options"),
    *_fields({CHAT, RESPONSES}, only([], "this server does not run moderation."), "moderation"),
    # Predicted outputs change only how fast an answer comes, never the answer.
    *_ignored({CHAT}, "prediction"),
    # Structured outputs (openai/structured.py reads them): OpenAI's response_format (vLLM takes it on
    # completions too), vLLM's guided_* and llama.cpp's grammar (GBNF) and json_schema.
    *_fields(BOTH, any_json, "response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
             "grammar", "json_schema"),
    # Tools (openai/tools.py reads them), and their legacy spelling.
    *_fields({CHAT}, any_json, "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"),
    # Stored completions (openai/stored_chat.py serves them). Off unless asked for, as OpenAI's
    # default for chat; metadata without store is checked, then kept nowhere (as OpenAI does).
    *_fields({CHAT}, boolean, "store", default=False),
    *_fields({CHAT, CHAT_UPDATE, RESPONSES}, metadata, "metadata"),
    *_fields({COMPLETIONS}, boolean, "echo", default=False),
    *_fields({COMPLETIONS}, string, "suffix"),  # fill-in-the-middle: a 400 for a model without FIM tokens
    *_fields({COMPLETIONS}, integer(1, 20), "best_of"),  # candidates per prompt (default n); the n likeliest are returned
    *_fields({EMBEDDINGS}, any_json, "input", required=True),  # embeddings.parse_inputs
    # The Responses API (responses.py reads the JSON ones). store: kept unless false, as OpenAI's.
    *_fields({RESPONSES}, any_json, "input", "instructions", "conversation", "text", "tools", "tool_choice", "reasoning", "include"),
    *_fields({RESPONSES}, string, "previous_response_id"),
    *_fields({RESPONSES}, boolean, "store", default=True),
    *_fields({RESPONSES}, boolean, "parallel_tool_calls", default=True),
    *_fields({RESPONSES}, integer(1, INT32_MAX), "max_output_tokens"),  # none: until the context is full
    # Built-in tools are what it bounds, and there are none here: no effect on any answer.
    *_fields({RESPONSES}, integer(1, INT32_MAX), "max_tool_calls"),
    # Only include_obfuscation, random padding against side channels: leaving it out changes no answer.
    *_ignored({RESPONSES}, "stream_options"),
    *_fields({RESPONSES}, only([0], "log-probabilities are not supported on this route yet; use /v1/chat/completions with 'logprobs'."), "top_logprobs"),
    *_fields({RESPONSES}, only(["disabled"], "only 'disabled' is supported: an input over the context is a 400, never silently cut."), "truncation"),
    *_fields({RESPONSES}, only([False], "background responses are not supported by this server."), "background"),
    *_fields({RESPONSES}, only([], "stored prompt templates are not supported by this server."), "prompt"),
    *_fields({RESPONSES}, only([], "context management (compaction) is not supported by this server."), "context_management"),
    *_fields({EMBEDDINGS}, one_of("float", "base64"), "encoding_format", default="float"),
    *_fields({EMBEDDINGS}, integer(1, INT32_MAX), "dimensions"),  # at most the model's: checked by the route
]


def _by_route(fields: list[Field]) -> dict[str, dict[str, Field]]:
    out: dict[str, dict[str, Field]] = {route: {} for route in ROUTES}
    for f in fields:
        for route in f.routes:
            if f.name in out[route]:
                raise ValueError(f"{f.name} is declared twice for {route}")
            out[route][f.name] = f
    return out


_BY_ROUTE = _by_route(FIELDS)

# The sampling fields, in the order they are checked.
SAMPLING = ("top_k", "temperature", "top_p", "min_p", "seed", "stop", "logit_bias", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "ignore_eos")


def sampling_defaults() -> dict[str, Any]:
    """OpenAI's default of every sampling field (for a route that lets the client set only some)."""
    return {name: _BY_ROUTE[CHAT][name].default for name in SAMPLING}


def accepted(route: str) -> set[str]:
    """Every field name ``route`` accepts: implemented or ignored."""
    return set(_BY_ROUTE[route])


class Fields:
    """A request body's fields, read as ``route`` declares them. ``null`` counts as absent."""

    def __init__(self, body: dict, route: str):
        self._declared = _BY_ROUTE[route]
        unknown = [k for k in body if k not in self._declared]
        if unknown:
            raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0], code="unknown_parameter")
        self._body = body

    def get(self, name: str, **context: Any) -> Any:
        """The field's value, checked against its declaration (``context``: the
        facts its kind needs); its default when absent."""
        value = self.requested(name, **context)
        return self._declared[name].default if value is None else value

    def requested(self, name: str, **context: Any) -> Any:
        """The field's value as the request gives it, checked; None when absent
        (so that something else, such as the model, may choose it)."""
        field = self._declared[name]
        if field.kind is None:
            raise KeyError(f"{name} is accepted and ignored, not read")
        value = self._body.get(name)
        if value is None:
            if field.required:
                raise missing(name)
            return None
        return field.kind(name, value, **context)

    def check(self, *names: str) -> None:
        """Checks fields the route does not otherwise read (they change nothing once valid)."""
        for name in names:
            self.requested(name)

    def sampling(self, vocab_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sampling fields as requested (None where left out), and their defaults."""
        requested = {name: self.requested(name, **({"vocab_size": vocab_size} if name == "logit_bias" else {})) for name in SAMPLING}
        return requested, {name: self._declared[name].default for name in SAMPLING}
