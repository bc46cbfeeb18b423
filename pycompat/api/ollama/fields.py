"""Reading an Ollama request body: its top-level fields, and ``options``
(the Modelfile parameters a request may set).

Ollama itself ignores fields and options it does not know. Here a field or
option this server cannot honour is a 400 naming it (the quality bar: never a
silent no-op that changes the answer), except those that only tune how the
work is done (threads, GPU layers, memory mapping), which cannot change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pycompat.api.errors import APIError

INT64 = (-(1 << 63), (1 << 63) - 1)
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 1000


def bad(message: str) -> APIError:
    return APIError(400, message)


class Body:
    """A request's JSON object, read field by field against the route's known fields."""

    def __init__(self, value: Any, known: set[str]):
        if not isinstance(value, dict):
            raise bad("the request body must be a JSON object")
        unknown = sorted(k for k, v in value.items() if k not in known and v is not None)
        if unknown:
            raise bad(f"unknown field {unknown[0][:60]!r}: this server does not support it on this route")
        self.value = value

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.value.get(name)
        if value is None:
            return default
        if not _is(value, kind):
            raise bad(f"invalid {name!r}: expected {_named(kind)}, got {_named(type(value))}")
        return value

    def required(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = self.get(name, kind)
        if value is None or value == "":
            raise bad(f"{name} is required")
        return value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _named(kind) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array", dict: "an object",
             type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# --- options ---------------------------------------------------------------------

# Options that tune how the work is done, never what comes out: accepted and left to the server.
RUNTIME_ONLY = {"num_keep", "num_batch", "num_gpu", "main_gpu", "low_vram", "use_mmap", "use_mlock", "num_thread", "numa",
                "vocab_only", "f16_kv", "logits_all", "embedding_only", "penalize_newline"}
# Options accepted at the value that leaves the answer as it is here (what each does otherwise is not implemented).
NEUTRAL_ONLY = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}
# Only read while mirostat is on, which it cannot be here.
MIROSTAT_TUNING = {"mirostat_tau", "mirostat_eta"}


@dataclass
class Options:
    sampling: dict[str, Any] = field(default_factory=dict)  # as generation.sampling_options reads ``requested``
    num_predict: int | None = None  # None: until the context (or the server's limit) ends it
    num_ctx: int | None = None


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise bad(f"invalid option {name!r}: expected a number, got {value!r}"[:200])
    if not low <= value <= high:
        raise bad(f"invalid option {name!r}: {value!r} is outside {low:g}..{high:g}"[:200])
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"invalid option {name!r}: expected an integer, got {value!r}"[:200])
    if not low <= value <= high:
        raise bad(f"invalid option {name!r}: {str(value)[:30]} is outside {low}..{high}")
    return value


def _stop(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad("invalid option 'stop': expected an array of strings")
    if len(value) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in value):
        raise bad(f"invalid option 'stop': at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters each")
    return [s for s in value if s]


def read_options(value: Any, context_length: int) -> Options:
    """``options``, checked. ``context_length``: the served model's, the most ``num_ctx`` gives."""
    if value is None:
        return Options()
    if not isinstance(value, dict):
        raise bad("invalid 'options': expected an object")
    out = Options()
    s = out.sampling
    for name, v in value.items():
        if v is None or name in RUNTIME_ONLY or name in MIROSTAT_TUNING:
            continue
        if name == "temperature":
            s["temperature"] = _number(name, v, 0.0, 10.0)
        elif name == "top_p":
            s["top_p"] = _number(name, v, 0.0, 1.0)
        elif name == "min_p":
            s["min_p"] = _number(name, v, 0.0, 1.0)
        elif name == "top_k":
            s["top_k"] = _integer(name, v, 0, (1 << 31) - 1)
        elif name == "seed":
            s["seed"] = _integer(name, v, *INT64)
        elif name == "stop":
            s["stop"] = _stop(v)
        elif name == "repeat_penalty":
            s["repetition_penalty"] = _number(name, v, 0.0, 10.0) or 1.0  # 0, like 1, turns it off
        elif name in ("presence_penalty", "frequency_penalty"):
            s[name] = _number(name, v, -2.0, 2.0)
        elif name == "repeat_last_n":
            # The penalties here look at the whole sequence (rust/sampler.rs), which is Ollama's -1.
            if _integer(name, v, -1, (1 << 31) - 1) != -1:
                out.sampling.setdefault("_repeat_window", v)
        elif name == "num_predict":
            n = _integer(name, v, -2, (1 << 31) - 1)
            out.num_predict = None if n < 0 else n  # -1: no bound; -2: until the context is full
        elif name == "num_ctx":
            # Above the served context, the served context is the window (a prompt and answer
            # that do not fit it are refused as they would be without num_ctx).
            out.num_ctx = min(_integer(name, v, 1, (1 << 31) - 1), context_length)
        elif name in NEUTRAL_ONLY:
            if _number(name, v, -math.inf, math.inf) != NEUTRAL_ONLY[name]:
                raise bad(f"option {name!r} is not supported by this server (only {NEUTRAL_ONLY[name]!r}, which leaves it off)")
        else:
            raise bad(f"unknown option {name[:60]!r}: this server does not support it")
    window = s.pop("_repeat_window", None)
    penalized = any(s.get(k) not in (None, 0.0) for k in ("presence_penalty", "frequency_penalty")) or s.get("repetition_penalty", 1.0) != 1.0
    if window is not None and penalized:
        raise bad(f"option 'repeat_last_n' {window} is not supported: repeat penalties here look at the whole context "
                  "(repeat_last_n -1)")
    return out
