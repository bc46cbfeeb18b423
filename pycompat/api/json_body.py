"""Request bodies to JSON values, with bounds checked before the costly part.

Python's json parser holds the GIL for its whole run, about 120 ns a value: an
8 MiB body of four million numbers takes half a second, and walking the result
in Python took four more, during which every other client waited. So a body is
first scanned with numpy (which releases the GIL): the nesting depth and the
number of values are counted exactly, outside strings, and a body over either
bound is refused before it is parsed. What reaches ``json.loads`` then costs a
few tens of milliseconds at most.

The parsed value holds no NaN or Infinity (not JSON, though Python's parser
takes them), no integer too long to convert, and no lone UTF-16 surrogate
(``"\\ud800"`` parses to a str that cannot be encoded, so it could fail any later
step that writes it): each is a 400 here, as OpenAI's API answers invalid JSON
and invalid Unicode.
"""

from __future__ import annotations

import json
import re

import numpy as np
import trio

from pycompat.api.errors import APIError

MAX_DEPTH = 64
# Values (numbers, strings, arrays, objects...) in one body. The largest real
# bodies are token-id prompts: 64 prompts of 4,096 tokens fit.
MAX_VALUES = 300_000

_OPEN, _CLOSE, _SEPARATORS = (ord("["), ord("{")), (ord("]"), ord("}")), (ord(","), ord(":"))
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STRUCTURAL = np.array([*_OPEN, *_CLOSE, *_SEPARATORS], np.uint8)
_SCAN_BYTES = 1 << 20
# A \uD800-\uDFFF escape: the only way a surrogate gets into a parsed str (the bytes are decoded strictly).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _unparseable(detail: str) -> APIError:
    return APIError(400, f"We could not parse the JSON body of your request: {detail}. "
                    "Send a JSON object with Content-Type: application/json.")


def scan(body: bytes) -> tuple[int, int]:
    """(nesting depth, number of values) of a JSON text, counting only what is
    outside strings, object keys as values (and an empty array or object as one
    more). Exact for valid JSON; for invalid JSON, whatever it is, since the
    parser refuses that anyway. Works in pieces of ``_SCAN_BYTES`` so
    that its memory stays small whatever the body's size."""
    a = np.frombuffer(body, np.uint8)
    depth = separators = openings = 0
    run = parity = level = 0  # carried over from the previous piece
    for start in range(0, a.size, _SCAN_BYTES):
        piece = a[start : start + _SCAN_BYTES]
        quotes = piece == _QUOTE
        backslashes = piece == _BACKSLASH
        if run or backslashes.any():
            # A quote opens or closes a string unless an odd run of backslashes precedes it.
            idx = np.arange(piece.size, dtype=np.int32)
            last_plain = np.maximum.accumulate(np.where(backslashes, np.int32(-1 - run), idx))
            run_before = np.empty_like(idx)
            run_before[0] = run
            run_before[1:] = idx[:-1] - last_plain[:-1]
            quotes &= run_before % 2 == 0
            run = int(piece.size - 1 - last_plain[-1])
        # Structural characters, kept where an even number of quotes precedes them.
        quote_at = np.flatnonzero(quotes)
        marks = np.flatnonzero(np.isin(piece, _STRUCTURAL))
        marks = marks[(np.searchsorted(quote_at, marks) + parity) % 2 == 0]
        chars = piece[marks]
        opening = (chars == _OPEN[0]) | (chars == _OPEN[1])
        closing = (chars == _CLOSE[0]) | (chars == _CLOSE[1])
        if chars.size:
            levels = np.cumsum(opening.view(np.int8) - closing.view(np.int8), dtype=np.int32) + level
            depth = max(depth, int(levels.max()))
            level = int(levels[-1])
        # Every value but the first follows a ',' ':' or an opening bracket.
        separators += int(chars.size - np.count_nonzero(opening) - np.count_nonzero(closing))
        openings += int(np.count_nonzero(opening))
        parity = (parity + quote_at.size) % 2
    return depth, (1 + separators + openings if a.size else 0)


def _reject_constant(name: str):
    raise _unparseable(f"{name} is not a JSON value")


def parse(body: bytes, max_values: int = MAX_VALUES) -> object:
    """The JSON value of ``body``, or a 400 that says what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _unparseable(f"the body is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    depth, values = scan(body)
    if depth > MAX_DEPTH:
        raise APIError(400, f"The request body nests deeper than {MAX_DEPTH} levels.")
    if values > max_values:
        raise APIError(400, f"The request body holds {values} JSON values; at most {max_values} are accepted.")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise _unparseable(str(e)) from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits
        raise _unparseable(str(e)) from None
    if _SURROGATE_ESCAPE.search(body):
        try:  # at C speed: encoding fails exactly when a lone surrogate is left
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "The request body contains invalid Unicode: a lone UTF-16 surrogate escape "
                           "(such as \\ud800) that is not half of a pair.", code="invalid_unicode") from None
    return value


async def parse_object(body: bytes, max_values: int = MAX_VALUES) -> dict:
    """The body as a JSON object, or a 400. Scanned and parsed in a worker
    thread, so a large body delays the event loop as little as the GIL allows."""
    value = await trio.to_thread.run_sync(parse, body, max_values)
    if not isinstance(value, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return value
