"""Log-probabilities in OpenAI's two shapes: chat's ``logprobs.content`` entries
(token, logprob, bytes, top_logprobs) and the legacy completions object
(tokens, token_logprobs, top_logprobs as dicts, text_offset).

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


def completion_object(tokenizer: Tokenizer, tokens: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """A completion choice's legacy ``logprobs``; ``offset`` is the position in the
    choice's text where these tokens' text begins (``text_offset`` counts from it)."""
    if tokens is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text, _ = _text(tokenizer, t.token)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({_text(tokenizer, token)[0]: logprob for token, logprob in t.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out
