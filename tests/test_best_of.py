"""`best_of` on /v1/completions: best_of candidates per prompt, of which the
n with the highest mean log-probability per token are returned, best first;
usage counts every candidate's tokens; it cannot be streamed."""

from __future__ import annotations

import httpx
import pytest

import openapi

MODEL = "smollm2-135m-instruct"
SAMPLED = {"model": MODEL, "prompt": "Once upon a time", "temperature": 1.0, "top_p": 1.0, "seed": 7, "max_tokens": 8}


def post(server_url: str, body: dict) -> httpx.Response:
    return httpx.post(server_url + "/completions", json=body, timeout=120)


def mean_logprob(choice: dict) -> float:
    scores = choice["logprobs"]["token_logprobs"]
    return sum(scores) / len(scores)


@pytest.mark.parametrize("n, logprobs", [(1, None), (2, 1)])
def test_the_likeliest_candidates_are_returned_best_first(server_url, n, logprobs):
    # The candidates are the choices of n=4 with the same seed: rank those by hand.
    candidates = post(server_url, {**SAMPLED, "n": 4, "logprobs": 0}).json()["choices"]
    assert len({c["text"] for c in candidates}) > 1
    ranked = sorted(candidates, key=mean_logprob, reverse=True)
    body = post(server_url, {**SAMPLED, "n": n, "best_of": 4, **({"logprobs": logprobs} if logprobs is not None else {})}).json()
    openapi.validate("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == list(range(n))
    assert [c["text"] for c in body["choices"]] == [c["text"] for c in ranked[:n]]
    if logprobs is None:
        assert all(c["logprobs"] is None for c in body["choices"])  # ranked by them, not asked for them
    else:
        assert [len(t) for t in body["choices"][0]["logprobs"]["top_logprobs"]] == [1] * len(body["choices"][0]["logprobs"]["tokens"])
    assert body["usage"]["completion_tokens"] == sum(len(c["logprobs"]["tokens"]) for c in candidates)


@pytest.mark.parametrize("fields", [{"best_of": 2, "n": 3}, {"best_of": 3, "stream": True}, {"best_of": 21}, {"best_of": 0}])
def test_bad_best_of_is_a_400_naming_it(server_url, fields):
    response = post(server_url, {**SAMPLED, **fields})
    assert response.status_code == 400 and response.json()["error"]["param"] == "best_of", response.text


def test_best_of_equal_to_n_is_plain_n(server_url):
    plain = post(server_url, {**SAMPLED, "n": 2}).json()
    same = post(server_url, {**SAMPLED, "n": 2, "best_of": 2}).json()
    assert [c["text"] for c in same["choices"]] == [c["text"] for c in plain["choices"]]
    streamed = post(server_url, {**SAMPLED, "best_of": 1, "stream": True})
    assert streamed.status_code == 200
