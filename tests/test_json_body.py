"""Request bodies to JSON: the pre-parse scan counts exactly, and everything
that is not JSON (or not valid Unicode) is a 400 before any later step sees it."""

from __future__ import annotations

import json
import random

import pytest

import pycompat.api.json_body as json_body
from pycompat.api.errors import APIError
from pycompat.api.openai.errors import error_bytes


def reference_stats(value) -> tuple[int, int]:
    """Depth and value count as scan() defines them, by walking the parsed value."""
    depth, count, stack = 0, 0, [(value, 0)]
    while stack:
        v, level = stack.pop()
        count += 1
        if isinstance(v, (list, dict)):
            depth = max(depth, level + 1)
            count += not v  # an empty container's opening bracket counts once more
        if isinstance(v, dict):
            count += len(v)  # keys
            stack.extend((x, level + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, level + 1) for x in v)
    return depth, count


# Strings full of what the scan must not count: quotes, backslashes, brackets, separators.
TRICKY = ['a\\"b[{', "\\\\", '"]]}}', '\\\\\\"', ",:,", "", "x" * 5]


def random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 6 or r < 0.3:
        return rng.choice([0, 1.5, None, True, *TRICKY])
    if r < 0.65:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(TRICKY) + str(i): random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 7, 1 << 20])
def test_scan_counts_depth_and_values_exactly(monkeypatch, piece_bytes):
    monkeypatch.setattr(json_body, "_SCAN_BYTES", piece_bytes)
    rng = random.Random(piece_bytes)
    for _ in range(600 if piece_bytes > 7 else 150):
        value = random_value(rng)
        text = json.dumps(value, indent=rng.choice([None, 1])).encode()
        assert json_body.scan(text) == reference_stats(value), text


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"n": ' + b"1" * 5000 + b"}", "digits"),
        (b'{"temperature": NaN}', "NaN"),
        (b'{"temperature": -Infinity}', "Infinity"),
        (b'{"model": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b'{"model": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate's own UTF-8 bytes
        (b'{"a": "\xff"}', "UTF-8"),
        (b"[" * 65 + b"]" * 65, "deeper"),
        (b"[" + b"0," * 300_000 + b"0]", "values"),
    ],
)
def test_what_is_not_json_is_a_400(body, words):
    with pytest.raises(APIError) as caught:
        json_body.parse(body)
    assert caught.value.status == 400 and words in caught.value.message
    error_bytes(caught.value)  # renders


def test_what_is_json_parses():
    assert json_body.parse('{"a": "\\ud83d\\ude00 é", "b": [1e999, -0.0]}'.encode()) == {"a": "😀 é", "b": [float("inf"), -0.0]}
    assert json_body.parse(b'"\\\\ud800"') == "\\ud800"  # an escaped backslash, then text: not a surrogate
