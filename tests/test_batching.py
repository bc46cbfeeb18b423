"""The continuous batching engine through a real server and the official SDK:
requests batched together get what they would get alone, a conversation's
second turn reuses the first turn's cache, a client that goes away frees its
blocks, and a full queue answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

import openapi
from conftest import running_server

MODEL = "smollm2-135m-instruct"
TOPICS = ["cats", "the sea", "a red bicycle", "winter", "a lighthouse", "bread", "a small robot", "the moon",
          "a library", "rain", "a violin", "mountains", "a garden", "trains", "an old map", "coffee"]


def story(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Write a short story about {topic}."}]


def health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


async def chat(client: openai.AsyncOpenAI, messages: list[dict], **kw):
    r = await client.chat.completions.create(model=MODEL, messages=messages, **kw)
    openapi.validate("CreateChatCompletionResponse", r.model_dump(mode="json", exclude_unset=True))
    return r


def test_a_seeded_request_gives_the_same_text_alone_and_among_fifteen_others(server_url):
    async def main():
        client = openai.AsyncOpenAI(base_url=server_url, api_key="unused")
        sampling = dict(temperature=0.9, top_p=0.95, max_tokens=40)
        alone = await chat(client, story(TOPICS[0]), seed=1234, **sampling)
        crowd = [chat(client, story(TOPICS[0]), seed=1234, **sampling)]
        crowd += [chat(client, story(t), seed=i, **sampling) for i, t in enumerate(TOPICS[1:])]
        together = await asyncio.gather(*crowd)
        await client.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert len(together) == 16
    assert together[0].choices[0].message.content == alone.choices[0].message.content
    assert together[0].usage.completion_tokens == alone.usage.completion_tokens
    # The others did run (and differ: different prompts and seeds).
    assert len({r.choices[0].message.content for r in together}) > 8


def test_the_second_turn_of_a_conversation_reuses_the_first(server_url):
    client = openai.OpenAI(base_url=server_url, api_key="unused")
    turn = [{"role": "system", "content": "You are a helpful assistant who answers in full sentences."},
            {"role": "user", "content": "Name three colours of the rainbow and say something about each."}]
    first = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=60, temperature=0)
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "Now name two more."}]
    second = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=20, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # All of the first turn's prompt, in whole 16-token blocks, and most of its answer.
    assert cached >= first.usage.prompt_tokens // 16 * 16 + 16, (cached, first.usage)
    assert cached < second.usage.prompt_tokens


def test_prefix_caching_and_chunked_prefill_do_not_change_answers(server_url, tmp_path):
    """Greedy answers from the default server (prefix cache warm from the first
    request) equal those of a server that recomputes every prompt in 24-token chunks."""
    system = {"role": "system", "content": "You are a concise assistant. " * 12}
    questions = ["What is the capital of Italy?", "What colour is the sky?", "How many legs does a spider have?"]

    def answers(url: str) -> list[tuple[str, int]]:
        client = openai.OpenAI(base_url=url, api_key="unused")
        out = []
        for q in questions:
            r = client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": q}], max_tokens=24, temperature=0)
            out.append((r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens))
        return out

    cached = answers(server_url)
    with running_server(tmp_path / "serve.log", "--context-length", "1024", "--no-prefix-caching", "--step-tokens", "24") as (_, url):
        plain = answers(url)
    assert [a for a, _ in cached] == [a for a, _ in plain]
    assert all(c == 0 for _, c in plain)
    assert all(c >= 64 for _, c in cached[1:]), cached  # the shared system prompt (~80 tokens), after the first question


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server_url):
    before = health(server_url)["kv_cache"]
    body = {"model": MODEL, "messages": story("a long journey"), "max_tokens": 800, "stream": True,
            "logit_bias": {"2": -100, "0": -100}}  # never ends on its own
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", server_url + "/chat/completions", json=body) as r:
            lines = r.iter_lines()
            chunks = [line for line, _ in zip(lines, range(10)) if line.startswith("data: ")]
            assert len(chunks) >= 4
            during = health(server_url)
            assert during["generating"] == 1 and during["kv_cache"]["blocks_used"] > 0
        # Leaving the `with` closes the connection mid-stream.
    deadline = time.monotonic() + 10
    while True:
        now = health(server_url)
        if now["generating"] == 0 and now["kv_cache"]["blocks_used"] == before["blocks_used"]:
            break
        assert time.monotonic() < deadline, f"blocks not returned: {now}"
        time.sleep(0.05)
    assert now["kv_cache"]["blocks_free"] + now["kv_cache"]["blocks_cached"] == now["kv_cache"]["blocks_total"] - before["blocks_used"]


def test_a_full_queue_answers_429_and_running_requests_finish_intact(tmp_path):
    # A cache of 22 blocks (8 MiB) holds one 200-token request at a time, and one may wait.
    args = ("--context-length", "256", "--kv-cache-mb", "8", "--max-queue", "1")
    with running_server(tmp_path / "serve.log", *args) as (_, url):
        kv = health(url)["kv_cache"]
        assert kv["blocks_total"] * 16 < 2 * 230  # two such requests do not fit at once
        sync = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        ask = dict(max_tokens=200, temperature=0.8, seed=7, logit_bias={"2": -100, "0": -100})
        expected = sync.chat.completions.create(model=MODEL, messages=story("bees"), **ask).choices[0].message.content

        async def main():
            client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
            first = await client.chat.completions.create(model=MODEL, messages=story("owls"), stream=True, **ask)
            chunks = first.__aiter__()
            first_text = [await chunks.__anext__()]  # running now
            second = asyncio.create_task(chat(client, story("bees"), **ask))
            for _ in range(200):  # until the second request waits in the queue
                if health(url)["queued"] == 1:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model=MODEL, messages=story("fish"), **ask)
            async for c in chunks:
                first_text.append(c)
            second = await second
            await client.close()
            return first_text, second, refused.value

        first_chunks, second, refused = asyncio.run(main())
        assert refused.status_code == 429 and refused.response.headers["retry-after"] == "1"
        openapi.validate("ErrorResponse", refused.response.json())
        assert refused.response.json()["error"]["type"] == "rate_limit_error"
        assert first_chunks[-1].choices[0].finish_reason == "length"
        assert second.choices[0].finish_reason == "length" and second.usage.completion_tokens == 200
        assert second.choices[0].message.content == expected
        assert health(url)["kv_cache"]["blocks_used"] == 0
