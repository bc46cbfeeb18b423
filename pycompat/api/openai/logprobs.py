"""Log-probabilities in OpenAI's two shapes: chat's ``logprobs.content`` entries
(token, logprob, bytes, top_logprobs) and the legacy completions object
(tokens, token_logprobs, top_logprobs as dicts, text_offset), for generated
tokens and for an echoed prompt's.

A token's ``bytes`` are its own UTF-8 bytes, so a client can join tokens that
split a character; its ``token`` is those bytes as text, with U+FFFD for a
partial character."""

from __future__ import annotations

from pycompat.api.generation import TokenLogprob
from pycompat.loading.tokenizer import Tokenizer


def _text(tokenizer: Tokenizer, token: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token)
    return raw.decode("utf-8", "replace"), list(raw)


def chat_entries(tokenizer: Tokenizer, tokens: list[TokenLogprob]) -> list[dict]:
    """``choices[].logprobs.content`` for these tokens."""
    out = []
    for t in tokens:
        text, raw = _text(tokenizer, t.token)
        top = []
        for token, logprob in t.top:
            top_text, top_raw = _text(tokenizer, token)
            top.append({"token": top_text, "logprob": logprob, "bytes": top_raw})
        out.append({"token": text, "logprob": t.logprob, "bytes": raw, "top_logprobs": top})
    return out


def chat_object(tokenizer: Tokenizer, tokens: list[TokenLogprob] | None) -> dict | None:
    """A choice's (or chunk's) ``logprobs``: None when not asked for."""
    if tokens is None:
        return None
    return {"content": chat_entries(tokenizer, tokens), "refusal": None}


def _legacy_entry(out: dict, tokenizer: Tokenizer, token: int, scored: TokenLogprob | None, offset: int) -> str:
    """Appends one token to a legacy object (an unscored one has null log-probabilities); returns its text."""
    text, _ = _text(tokenizer, token)
    out["tokens"].append(text)
    out["token_logprobs"].append(None if scored is None else scored.logprob)
    out["top_logprobs"].append(None if scored is None else {_text(tokenizer, t)[0]: lp for t, lp in scored.top})
    out["text_offset"].append(offset)
    return text


def completion_object(tokenizer: Tokenizer, tokens: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """A completion choice's legacy ``logprobs``; ``offset`` is the position in the
    choice's text where these tokens' text begins (``text_offset`` counts from it)."""
    if tokens is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        offset += len(_legacy_entry(out, tokenizer, t.token, t, offset))
    return out


def prompt_object(tokenizer: Tokenizer, prompt: list[int], scores: list[TokenLogprob | None],
                  unechoed: frozenset[int] = frozenset()) -> dict:
    """An echoed prompt's legacy ``logprobs``: each of its tokens with its score
    (None for the first, shown as null as OpenAI did), ``text_offset`` from the
    start of the echoed text. Tokens at the positions in ``unechoed`` are not in
    that text (a BOS the tokenizer added) and take no room in it."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for i, (token, scored) in enumerate(zip(prompt, scores, strict=True)):
        text = _legacy_entry(out, tokenizer, token, scored, offset)
        if i not in unechoed:
            offset += len(text)
    return out


def joined(first: dict, then: dict) -> dict:
    """Two legacy objects as one (an echoed prompt's, then its completion's)."""
    return {key: first[key] + then[key] for key in first}
