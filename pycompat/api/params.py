"""Reading request bodies: typed, range-checked fields (json_body.py parses them).

Each route lists the fields it implements; fields OpenAI defines for the route
but that we do not implement yet are accepted and ignored; anything else is a
400 naming the field, so a typo never silently changes nothing.
"""

from __future__ import annotations

import math
from typing import Any

from pycompat.api.errors import APIError, invalid_type, invalid_value, missing

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 1000
INT32_MAX = (1 << 31) - 1  # the bound of integer fields that have no natural one


MAX_LOGIT_BIAS = 1024  # entries; OpenAI's limit is in the same range


def _shown(value: int | float) -> str:
    """A number for an error message: a 4,000-digit integer is shortened."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


class Params:
    """Typed access to a request body's fields. ``null`` counts as absent."""

    def __init__(self, body: dict, implemented: set[str], ignored: set[str]):
        unknown = [k for k in body if k not in implemented and k not in ignored]
        if unknown:
            raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0], code="unknown_parameter")
        self._body = body

    def _get(self, name: str, required: bool) -> Any:
        value = self._body.get(name)
        if value is None and required:
            raise missing(name)
        return value

    def string(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, str):
            raise invalid_type(name, "a string", value)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid_type(name, "a boolean", value)
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise invalid_type(name, "a decimal", value)
        if value < low:  # (1e999 parses to infinity: above any maximum)
            raise APIError(400, f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, but got {_shown(value)} instead.", param=name, code="decimal_below_min_value")
        if value > high:
            raise APIError(400, f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, but got {_shown(value)} instead.", param=name, code="decimal_above_max_value")
        return float(value)

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():  # 3.0 is 3; 1e300 is then above the maximum
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(name, "an integer", value)
        if value < low:
            raise APIError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {_shown(value)} instead.", param=name, code="integer_below_min_value")
        if value > high:
            raise APIError(400, f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {_shown(value)} instead.", param=name, code="integer_above_max_value")
        return value

    def stop(self, name: str = "stop") -> list[str]:
        value = self._get(name, False)
        if value is None:
            return []
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

    def logit_bias(self, vocab_size: int, name: str = "logit_bias") -> dict[int, float]:
        """``{"token id": bias}``, each bias in [-100, 100], added to that token's logit."""
        value = self._get(name, False)
        if value is None:
            return {}
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

    def stream_include_usage(self, stream: bool) -> bool:
        """``stream_options.include_usage``; stream_options is only allowed with stream."""
        value = self._get("stream_options", False)
        if value is None:
            return False
        if not isinstance(value, dict):
            raise invalid_type("stream_options", "an object", value)
        if not stream:
            raise invalid_value("stream_options", "stream_options are only allowed when 'stream' is true.")
        include = value.get("include_usage", False)
        if not isinstance(include, bool):
            raise invalid_type("stream_options.include_usage", "a boolean", include)
        return include

    def raw(self, name: str) -> Any:
        return self._body.get(name)
