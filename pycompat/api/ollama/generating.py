"""What /api/chat and /api/generate share: reading ``format``, ``think`` and
``images``; sampling options from ``options`` (Ollama's defaults where the
model recommends none); and the answer's events in the order Ollama sends
them, each generation's phases timed for its final object."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pycompat.api import generation, structured, tools
from pycompat.api.generation import Choices, Finished
from pycompat.api.ollama import names
from pycompat.api.ollama.fields import Body, Options, bad, read_options
from pycompat.api.openai.logprobs import chat_entries
from pycompat.api.ollama.replies import Clock
from pycompat.api.registry import ServedModel

# Ollama's defaults for what neither the request nor the model sets (its api/types.go).
# Its repeat_penalty default (1.1 over the last 64 tokens) is left out: its newer engine
# does not apply it either, and the penalty here has no window.
OLLAMA_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "repetition_penalty": 1.0, "ignore_eos": False}


@dataclass
class Asked:
    """What chat and generate both read from a request: the model (as the client
    named it, and as served), ``stream``, ``options``, ``format`` and log-probabilities."""

    name: str
    served: ServedModel
    stream: bool
    options: Options
    output: structured.OutputGrammar | None
    top_logprobs: int | None

    @classmethod
    def read(cls, registry, body: Body, clock: Clock) -> Asked:
        name = body.required("model", str)
        stream = body.get("stream", bool, True)
        check_keep_alive(body)
        body.get("truncate", bool)  # the prompt is never cut here: one that does not fit is refused either way
        body.get("shift", bool)
        served = names.generator(registry, name)
        clock.model_found()
        check_think(body, name)
        options = read_options(body.get("options", dict), served.engine.model.context_length)
        return cls(name, served, stream, options, read_format(body.value.get("format")), read_logprobs(body))

    @property
    def window(self) -> int | None:
        return window(self.options, self.served)

    def sampling(self) -> tuple[generation.SamplingOptions, Callable[[list], list[dict]] | None]:
        """The sampling options, and what turns tokens into ``logprobs`` entries (None: not asked for)."""
        opts = sampling(self.served, self.options)
        opts.top_logprobs = self.top_logprobs
        entries = (lambda tokens: logprob_entries(self.served, tokens)) if self.top_logprobs is not None else None
        return opts, entries


def read_format(value: Any, field_name: str = "format") -> structured.OutputGrammar | None:
    """``format``: ``"json"`` (any JSON object), a JSON schema, or ``""`` (free text)."""
    if value is None or value == "":
        return None
    if value == "json":
        return structured.any_json_object(field_name)
    if isinstance(value, dict):
        return structured.json_schema(value, field_name)
    raise bad(f"invalid format: expected \"json\" or a JSON schema object, got {json.dumps(value)[:60]}")


def check_think(body: Body, model_name: str) -> None:
    """``think``: the models here do not reason, so only false (or leaving it out) is accepted, as Ollama answers."""
    think = body.get("think", (bool, str))
    if think not in (None, False):
        raise bad(f'"{model_name[:200]}" does not support thinking')


def refuse_images(images: Any, where: str) -> None:
    if images:
        raise bad(f"{where}: this model reads text only and cannot take images")


def load_reason(body: Body) -> str:
    """``done_reason`` of a request with nothing to generate: Ollama loads the model
    then (unloads it with ``keep_alive`` 0); here it is loaded already and stays."""
    return "unload" if body.value.get("keep_alive") in (0, "0", "0s", "0m") else "load"


def check_keep_alive(body: Body) -> None:
    """``keep_alive`` is accepted: the models here stay loaded for the server's whole life."""
    body.get("keep_alive", (str, int, float))


def sampling(served: ServedModel, options: Options) -> generation.SamplingOptions:
    return generation.sampling_options(served, options.num_predict, options.sampling, OLLAMA_DEFAULTS,
                                       max_tokens_field="options.num_predict")


def window(options: Options, served: ServedModel) -> int | None:
    """The context window ``num_ctx`` asks for, when it is smaller than the served
    context (at or above it, the served context is the window anyway)."""
    n = options.num_ctx
    return n if n is not None and n < served.engine.model.context_length else None


async def compile_format(served: ServedModel, output: structured.OutputGrammar | None, opts: generation.SamplingOptions) -> None:
    if output is not None:
        opts.grammar = await structured.compile(served, output)


@dataclass
class Text:
    text: str
    logprobs: list = field(default_factory=list)  # the tokens this text completes, when asked for


@dataclass
class Calls:
    calls: list[dict]  # in Ollama's shape: {"function": {"index", "name", "arguments": {...}}}
    logprobs: list = field(default_factory=list)


@dataclass
class Done:
    finished: Finished
    logprobs: list = field(default_factory=list)  # tokens that released no text (a JSON answer's closing '"}')


async def answer(choices: Choices, clock: Clock, parser: tools.CallParser | None = None) -> AsyncIterator[Text | Calls | Done]:
    """The one choice's text as it comes (through ``parser`` when tools were
    offered: its content, then its complete calls), then Done. Each piece
    carries the log-probabilities of the tokens behind it (when asked for):
    a token whose text a parser holds back comes with the piece that releases it."""
    held: list = []
    async with aclosing(choices.stream()) as events:
        async for _, event in events:
            if isinstance(event, Finished):
                clock.finished()
                if parser is not None:
                    for e in parser.finish():
                        if isinstance(e, tools.ContentDelta) and e.text:
                            yield Text(e.text, held)
                            held = []
                    calls = [ollama_call(i, c) for i, c in enumerate(parser.calls) if c.complete]
                    if calls:
                        yield Calls(calls, held)
                        held = []
                yield Done(event, held)
                return
            if not isinstance(event, generation.TextPiece):
                continue
            clock.token()
            held.extend(event.logprobs or ())
            deltas = [event.text] if parser is None else [e.text for e in parser.feed(event.text) if isinstance(e, tools.ContentDelta)]
            for text in deltas:
                if text:
                    yield Text(text, held)
                    held = []


def read_logprobs(body: Body) -> int | None:
    """``logprobs`` and ``top_logprobs`` (0-20 alternatives per token): how many
    alternatives each token's log-probability comes with; None: none asked for."""
    wanted = body.get("logprobs", bool, False)
    top = body.get("top_logprobs", int)
    if top is not None and not 0 <= top <= 20:
        raise bad(f"invalid top_logprobs: {top} is outside 0..20")
    if not wanted:  # as Ollama: top_logprobs only counts with logprobs
        return None
    return top or 0


def scored(body: dict, tokens: list, entries) -> dict:
    """``body`` with its tokens' ``logprobs`` (``entries`` makes them) when they were asked for (``entries`` not None)."""
    if entries is not None:
        body["logprobs"] = entries(tokens)
    return body


def logprob_entries(served: ServedModel, tokens: list) -> list[dict]:
    """Tokens' log-probabilities as Ollama's ``logprobs`` entries: token, logprob,
    UTF-8 bytes and, when asked for, the likeliest alternatives (left out when
    none were, as Ollama leaves out empty fields)."""
    entries = chat_entries(served.engine.model.tokenizer, tokens)
    for e in entries:
        if not e["top_logprobs"]:
            del e["top_logprobs"]
    return entries


def ollama_call(index: int, call: tools.ToolCall) -> dict:
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = {}
    # The id, as Ollama gives one, is what a tool message's tool_call_id refers back to.
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def final_fields(done: Done, clock: Clock) -> dict:
    """The statistics every generation's last object carries, in Ollama's order."""
    d = clock.durations()
    return {
        "done_reason": done.finished.reason,
        "done": True,
        "total_duration": d["total_duration"],
        "load_duration": d["load_duration"],
        "prompt_eval_count": done.finished.prompt_tokens,
        "prompt_eval_duration": d["prompt_eval_duration"],
        "eval_count": done.finished.completion_tokens,
        "eval_duration": d["eval_duration"],
    }
