"""Prompt log-probabilities: ``/v1/completions`` with ``echo`` and ``logprobs``
scores the prompt (OpenAI's legacy scoring idiom, lm-evaluation-harness's
``local-completions``): each prompt token's log-probability given the tokens
before it, null for the first, then the generated tokens'. Checked against a
numpy log-softmax of the kernel's teacher-forced logits, through the official
SDK against real servers (one computing a prompt in one step, one in chunks
of 16 tokens)."""

from __future__ import annotations

import copy

import numpy as np
import openai
import pytest

import openapi
from conftest import SERVER_CONTEXT, running_server
from pycompat import _kernel
from pycompat.api.openai.completions import _unechoed
from pycompat.api.openai.logprobs import prompt_object
from pycompat.engine.request import TokenLogprob
from pycompat.engine.runner import SoloSequence, StepInput
from pycompat.loading.tokenizer import Tokenizer

MODEL = "smollm2-135m-instruct"
# About 100 tokens: seven blocks of 16, seven steps on the chunked server.
TEXT = ("The river runs past the old mill, where the miller keeps his stones and his sacks of grain. "
        "Every morning the children walk along the bank to school, counting the ducks and the boats. "
        "In winter the water freezes, and the whole village comes out to skate under the grey sky. "
        "At night the miller's dog sleeps by the fire, and the stars shine over the quiet fields. "
        "Then the bells ring, the bakery opens its doors, and the smell of fresh bread fills the streets.")
SCORE = dict(model=MODEL, echo=True, logprobs=3, max_tokens=0)
ATOL = 1e-3  # the server's numbers against the reference; a wrong row is off by nats


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A server that computes at most 16 tokens a step (a prompt over several steps)."""
    log = tmp_path_factory.mktemp("chunked") / "serve.log"
    with running_server(log, "--context-length", str(SERVER_CONTEXT), "--step-tokens", "16") as (_, url):
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def reference(model, ids: list[int]) -> np.ndarray:
    """Every position's log-probabilities (tokens × vocab), from all-row logits of the whole text at once."""
    rows = np.frombuffer(SoloSequence(model.kernel).forward(ids, all_logits=True), np.float32)
    return log_softmax(rows.reshape(len(ids), -1))


def spec_checked(body: dict, chunk: bool = False) -> dict:
    """Validates a completion body against OpenAI's spec, which types ``token_logprobs``
    as numbers and ``top_logprobs`` as objects although OpenAI's API sent null for
    the first prompt token (the spec predates its echo): those nulls are checked here
    and filled in before the rest is validated."""
    filled = copy.deepcopy(body)
    for choice in filled["choices"]:
        lp = choice.get("logprobs")
        if lp and lp["token_logprobs"] and lp["token_logprobs"][0] is None:
            assert lp["top_logprobs"][0] is None
            lp["token_logprobs"][0], lp["top_logprobs"][0] = 0.0, {}
    openapi.validate_completion_chunk(filled) if chunk else openapi.validate("CreateCompletionResponse", filled)
    return body


def score(client, prompt, **extra) -> dict:
    return spec_checked(client.completions.create(prompt=prompt, **{**SCORE, **extra}).model_dump(mode="json", exclude_unset=True))


# --- the kernel ---


def test_the_kernel_scores_prompt_chunks_as_a_log_softmax_of_all_row_logits(default_model):
    kernel, ids = default_model.kernel, default_model.tokenizer.encode(TEXT)
    expected = reference(default_model, ids)
    cache, table, scored = kernel.new_cache(16, 16), list(range(16)), []
    sampler = _kernel.Sampler(temperature=0, seed=1)
    # One chunk of more rows than one LM-head product makes (64); the last samples the next token too.
    for a, b in [(0, 2), (2, 3), (3, 90), (90, len(ids))]:
        end = b == len(ids)
        (out,) = kernel.step(cache, [StepInput(table, a, ids[a:b], sampler if end else None, "none", 4, ids[a + 1 : b + 1])])
        assert len(out.prompt_logprobs) == b - a - end and (out.token is not None) == end and out.logits is None
        scored += out.prompt_logprobs
    rows = expected[np.arange(len(ids) - 1)]
    np.testing.assert_allclose([lp for lp, _ in scored], rows[np.arange(len(ids) - 1), ids[1:]], atol=1e-4)
    for (lp, top), row, target in zip(scored, rows, ids[1:]):
        order = np.argsort(-row, kind="stable")[:4]
        np.testing.assert_allclose([v for _, v in top], row[order], atol=1e-4)
        if order[0] == target:
            assert top[0] == (target, lp)  # the same number, not a near one


@pytest.mark.parametrize("targets, tokens", [([1, 2, 3], [5, 6]), ([10**9], [5])])
def test_prompt_targets_the_kernel_cannot_score_are_refused(default_model, targets, tokens):
    cache = default_model.kernel.new_cache(2, 16)
    with pytest.raises(_kernel.KernelError, match="target"):
        default_model.kernel.step(cache, [StepInput([0, 1], 0, tokens, prompt_targets=targets)])


# --- the route ---


def test_echo_with_logprobs_and_no_tokens_scores_the_prompt(client, default_model):
    ids = default_model.tokenizer.encode(TEXT)
    body = score(client, TEXT)
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == 0
    assert "".join(lp["tokens"]) == TEXT and len(lp["tokens"]) == len(ids)
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(ids))]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = reference(default_model, ids)
    np.testing.assert_allclose(lp["token_logprobs"][1:], expected[np.arange(len(ids) - 1), ids[1:]], atol=ATOL)
    argmax_hits = 0
    for row, target, chosen, top in zip(expected, ids[1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        values = list(top.values())
        assert len(values) == 3 and values == sorted(values, reverse=True)
        np.testing.assert_allclose(values, np.sort(row)[::-1][:3], atol=ATOL)
        if row.argmax() == target:
            argmax_hits += 1
            assert top[default_model.tokenizer.token_bytes(target).decode()] == chosen
    assert argmax_hits >= 10  # the check above ran


def test_a_prompt_of_token_ids_scores_as_its_text_does(client, default_model):
    ids = default_model.tokenizer.encode(TEXT)
    assert score(client, ids)["choices"][0]["logprobs"] == score(client, TEXT)["choices"][0]["logprobs"]
    one = score(client, ids[:1], max_tokens=1, temperature=0)["choices"][0]  # nothing to score but the generated token
    assert one["logprobs"]["token_logprobs"][0] is None and len(one["logprobs"]["tokens"]) == 2
    assert score(client, ids[:1])["choices"][0]["logprobs"] == {"tokens": ["The"], "token_logprobs": [None], "top_logprobs": [None],
                                                                "text_offset": [0]}


def test_a_prompt_computed_in_chunks_scores_as_in_one(client, chunked):
    whole, parts = score(client, TEXT)["choices"][0]["logprobs"], score(chunked, TEXT)["choices"][0]["logprobs"]
    assert parts["tokens"] == whole["tokens"] and parts["text_offset"] == whole["text_offset"]
    np.testing.assert_allclose(parts["token_logprobs"][1:], whole["token_logprobs"][1:], atol=ATOL)
    assert [list(t) for t in parts["top_logprobs"][1:]] == [list(t) for t in whole["top_logprobs"][1:]]


def test_a_prompt_whose_prefix_is_cached_is_still_scored_whole(chunked, default_model):
    head = TEXT[: TEXT.index("Every")]
    for _ in range(2):  # the second finds the first's blocks
        plain = chunked.completions.create(model=MODEL, prompt=head, max_tokens=1)
    assert plain.usage.prompt_tokens_details.cached_tokens >= 16
    body = score(chunked, TEXT)
    ids = default_model.tokenizer.encode(TEXT)
    lp = body["choices"][0]["logprobs"]
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 and len(lp["tokens"]) == len(ids)
    expected = reference(default_model, ids)
    np.testing.assert_allclose(lp["token_logprobs"][1:], expected[np.arange(len(ids) - 1), ids[1:]], atol=ATOL)


def test_generated_tokens_follow_the_prompts_counting_from_the_echoed_text(client, default_model):
    body = score(client, TEXT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    ids = default_model.tokenizer.encode(TEXT)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 6 and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(ids) + 6)]
    assert lp["text_offset"][len(ids)] == len(TEXT)
    alone = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=6, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True}).model_dump(mode="json")["choices"][0]["logprobs"]
    assert lp["tokens"][len(ids):] == alone["tokens"] and lp["token_logprobs"][len(ids):] == alone["token_logprobs"]
    assert lp["token_logprobs"][: len(ids)] == score(client, TEXT)["choices"][0]["logprobs"]["token_logprobs"]


@pytest.mark.parametrize("max_tokens", [0, 3])
def test_every_choice_echoes_the_same_prompt_logprobs(client, max_tokens):
    one = score(client, TEXT)["choices"][0]["logprobs"]
    body = score(client, TEXT, n=2, max_tokens=max_tokens, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        lp = choice["logprobs"]
        assert choice["text"].startswith(TEXT) and len(lp["tokens"]) == len(one["tokens"]) + max_tokens
        assert {k: v[: len(one["tokens"])] for k, v in lp.items()} == one
    assert body["usage"]["prompt_tokens"] == len(one["tokens"]) and body["usage"]["completion_tokens"] == 2 * max_tokens


@pytest.mark.parametrize("max_tokens", [0, 4])
def test_a_stream_sends_the_prompt_and_its_logprobs_first_then_the_same_tokens(client, max_tokens):
    ask = dict(max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
    whole = score(client, TEXT, **ask)["choices"][0]
    chunks = list(client.completions.create(prompt=TEXT, stream=True, **{**SCORE, **ask}))
    bodies = [c.model_dump(mode="json", exclude_unset=True) for c in chunks]
    for b in bodies:
        spec_checked(b, chunk=True)
    first = bodies[0]["choices"][0]
    assert first["text"] == TEXT and first["logprobs"]["token_logprobs"][0] is None
    assert "".join(b["choices"][0]["text"] for b in bodies) == whole["text"]
    streamed = {key: [v for b in bodies for v in b["choices"][0]["logprobs"][key]] for key in whole["logprobs"]}
    assert streamed == whole["logprobs"]


def test_likely_continuations_outscore_unlikely_ones_as_lm_eval_ranks_them(client, default_model):
    # lm-eval's local-completions: context + continuation as token ids, max_tokens 1, logprobs 1,
    # the continuation's score the sum of token_logprobs[len(context):-1].
    tk = default_model.tokenizer
    cases = [("The capital of France is", " Paris", " a bicycle"), ("One, two, three,", " four", " purple"),
             ("The cat sat on the", " mat", " theorem")]
    for context, likely, unlikely in cases:
        ctx = tk.encode(context)
        sums = []
        for cont in (likely, unlikely):
            ids = ctx + tk.encode(cont, add_bos=False)
            reply = client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0)
            lp = reply.choices[0].logprobs
            assert len(lp.token_logprobs) == len(ids) + 1
            sums.append(sum(lp.token_logprobs[len(ctx) : -1]))
        assert sums[0] > sums[1] + 5, (context, sums)


# --- rendering ---


def test_a_bos_the_tokenizer_added_takes_no_room_in_the_echoed_text(default_model):
    base = default_model.tokenizer
    tk = Tokenizer(base._tk, bos_id=1, add_bos=True, eos_id=base.eos_id, stop_ids=set())
    ids = tk.encode("Hi there")
    assert ids[0] == 1 and _unechoed(tk, "Hi there", ids) == {0}
    assert _unechoed(tk, tk.bos_text + "Hi there", ids) == frozenset()  # written by the client: it is in the echo
    assert _unechoed(tk, ids, ids) == {0}  # a token-id prompt's echo leaves special tokens out
    scores = [None] + [TokenLogprob(t, -1.0, [(t, -1.0)]) for t in ids[1:]]
    out = prompt_object(tk, ids, scores, _unechoed(tk, "Hi there", ids))
    assert out["tokens"] == [tk.bos_text, "Hi", " there"] and out["text_offset"] == [0, 0, 2]
    assert out["token_logprobs"] == [None, -1.0, -1.0] and out["top_logprobs"] == [None, {"Hi": -1.0}, {" there": -1.0}]
