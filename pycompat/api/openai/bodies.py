"""What OpenAI's response bodies share: an id in OpenAI's shape, the created
time, and the usage object."""

from __future__ import annotations

import secrets
import string
import time

from pycompat.api.generation import Finished

_ALPHABET = string.ascii_letters + string.digits
_UNIFORM_BELOW = 256 // len(_ALPHABET) * len(_ALPHABET)  # 248: random bytes below it map evenly onto the alphabet


def new_id(prefix: str) -> str:
    """``prefix`` ("chatcmpl-", "cmpl-") and 29 random alphanumerics.

    From one read of random bytes, each byte below 248 (4 x 62) taken modulo
    62, so every character stays uniform: 29 ``secrets.choice`` calls cost 30 us,
    and an input of 60,000 items, each given an id, spent seconds on the event loop."""
    chars: list[str] = []
    while len(chars) < 29:
        chars += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(40) if b < _UNIFORM_BELOW]
    return prefix + "".join(chars[:29])


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def total_usage(finished: list[Finished], n: int = 1) -> dict:
    """The usage of a request's generations together, ``n`` choices per prompt in
    order: each prompt counts once (its choices share it), every completion token counts."""
    firsts = finished[::n]
    return usage(sum(f.prompt_tokens for f in firsts), sum(f.completion_tokens for f in finished),
                 sum(f.cached_tokens for f in firsts))
