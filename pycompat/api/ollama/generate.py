"""POST /api/generate: a completion of one prompt, put through the model's
template (or the request's own ``template``, or none with ``raw``), with
``system``, ``suffix`` (fill-in-the-middle) and ``context`` (the tokens of an
earlier exchange, which the final object returns for the next)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import generation, json_body
from pycompat.api.ollama import generating, template
from pycompat.api.ollama.fields import Body, bad
from pycompat.api.ollama.replies import Clock, json_reply, line, ndjson_reply, timestamp
from pycompat.api.registry import Registry, ServedModel
from pycompat.http.messages import Request, Response

FIELDS = {"model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format", "keep_alive", "images",
          "options", "think", "truncate", "shift", "logprobs", "top_logprobs"}


async def create(registry: Registry, request: Request) -> Response:
    clock = Clock()
    body = Body(await json_body.parse_object(request.body), FIELDS)
    prompt = body.get("prompt", str, "")
    suffix = body.get("suffix", str, "")
    system = body.get("system", str)
    own_template = body.get("template", str)
    context = body.get("context", list, [])
    raw = body.get("raw", bool, False)
    asked = generating.Asked.read(registry, body, clock)
    name, served = asked.name, asked.served
    generating.refuse_images(body.get("images", list), "images")
    if raw and (system is not None or own_template is not None or context):
        raise bad("raw mode sends the prompt as it is: it takes no system, template or context")
    if not prompt and not suffix and not context:  # Ollama's way to load (keep_alive 0: unload) a model; models here stay loaded
        return json_reply({"model": name, "created_at": timestamp(), "response": "", "done_reason": generating.load_reason(body),
                           "done": True})
    opts, scored = asked.sampling()
    generation.check_prompt_bytes(served, len(prompt.encode("utf-8")) + len(suffix.encode("utf-8")), opts.max_tokens, "prompt")
    ids = await _prompt_ids(served, prompt, suffix, system, own_template, context, raw)
    generation.fit_window(opts, len(ids), asked.window, "prompt")
    await generating.compile_format(served, asked.output, opts)
    choices = generation.start(served, [ids], opts, "prompt")
    events = generating.answer(choices, clock)
    # The context to send back: the prompt's tokens and the answer's text as tokens (as Ollama
    # makes it: the text the client saw, without a stop string that ended it). None in raw mode.
    context_of = None if raw else (lambda text: _context(served, ids, text))
    if asked.stream:
        return ndjson_reply(_lines(name, events, clock, context_of, scored), on_close=choices.cancel)
    try:
        async with aclosing(events):
            return json_reply(await _whole(name, events, clock, context_of, scored))
    finally:
        choices.cancel()


async def _prompt_ids(served: ServedModel, prompt: str, suffix: str, system: str | None, own_template: str | None,
                      context: list, raw: bool) -> list[int]:
    model = served.engine.model
    if suffix:
        if model.tokenizer.fim_ids is None:
            raise bad(f'"{served.ids[0]}" does not support insert: it has no fill-in-the-middle tokens, so a suffix cannot be used')
        if system is not None or own_template is not None or context:
            raise bad("a prompt with a suffix is filled in the middle: it takes no system, template or context")
        before = await generation.tokenize(served, prompt, add_bos=False)
        after = await generation.tokenize(served, suffix, add_bos=False)
        return model.tokenizer.fill_in_the_middle(before, after)
    if raw:
        return await generation.tokenize(served, prompt)
    if own_template is not None:
        text = template.render(own_template, system or "", prompt)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = generation.chat_prompt(served, messages, "prompt")
    earlier = _context_ids(context, served.vocab_size)
    if earlier:  # after an earlier exchange the text goes on: no second start of sequence
        # A template that writes the BOS the tokenizer adds anyway (Llama 3's) starts with it: cut.
        # Where BOS is not added (SmolLM2's <|im_start|> opens every turn) it is the template's own text.
        bos = model.tokenizer.bos_text
        if bos and model.tokenizer.add_bos and text.startswith(bos):
            text = text[len(bos):]
        return earlier + await generation.tokenize(served, text, add_bos=False)
    return await generation.tokenize(served, text)


def _context_ids(context: list, vocab_size: int) -> list[int]:
    for i, t in enumerate(context):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise bad(f"invalid context[{i}]: expected a token id of this model (0 to {vocab_size - 1})")
    return list(context)


async def _context(served: ServedModel, prompt_ids: list[int], text: str) -> list[int]:
    return prompt_ids + (await generation.tokenize(served, text, add_bos=False) if text else [])


async def _final(name: str, response: str, text: str, done: generating.Done, clock: Clock, context_of) -> dict:
    """The last object: ``response`` (the whole text, or "" after a stream), the
    statistics, and the context of ``text`` (the whole text in either case)."""
    body = {"model": name, "created_at": timestamp(), "response": response, **generating.final_fields(done, clock)}
    if context_of is not None:
        body["context"] = await context_of(text)
    return body


async def _lines(name: str, events: AsyncIterator, clock: Clock, context_of, scored) -> AsyncIterator[bytes]:
    text: list[str] = []
    async for event in events:
        if isinstance(event, generating.Text):
            text.append(event.text)
            yield line(generating.scored({"model": name, "created_at": timestamp(), "response": event.text, "done": False},
                                         event.logprobs, scored))
        elif isinstance(event, generating.Done):
            yield line(generating.scored(await _final(name, "", "".join(text), event, clock, context_of), event.logprobs, scored))


async def _whole(name: str, events: AsyncIterator, clock: Clock, context_of, scored) -> dict:
    text: list[str] = []
    tokens: list = []
    async for event in events:
        tokens += event.logprobs
        if isinstance(event, generating.Text):
            text.append(event.text)
        elif isinstance(event, generating.Done):
            whole = "".join(text)
            return generating.scored(await _final(name, whole, whole, event, clock, context_of), tokens, scored)
    raise RuntimeError("the answer ended without finishing")
