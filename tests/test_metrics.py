"""/metrics: after a scripted set of requests (a chat, a stream, a 404, a 400,
a client that hangs up mid-stream, an embedding), each series moved as it
should, read back with prometheus_client's own parser; 429s are counted; and
/metrics is behind the API key unless --metrics-public. The server is the App
on the HTTP layer in this process, over a tiny random model that both
generates and embeds."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pycompat.api.access import AccessPolicy
from pycompat.api.app import App
from pycompat.api.limits import ClientLimits
from pycompat.api.registry import Embedding, Registry, ServedModel
from pycompat.engine.config import EngineConfig
from pycompat.engine.embedder import Embedder
from pycompat.engine.engine import Engine
from pycompat.http.messages import Request
from tiny_models import TinyConfig, load_tiny_chat_model

MODEL = "tiny"
CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, context_length=2048)
# Long enough to fill several cache blocks, so that the second request finds them cached.
MESSAGES = [{"role": "user", "content": "Tell me about the weather in the mountains in early spring. " * 2}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny_chat_model(tmp_path_factory.mktemp("metrics") / "tiny", CFG, seed=7)


@pytest.fixture
def served(nursery, tiny):
    """A fresh engine and embedder over the tiny model, running."""
    engine = Engine(tiny, EngineConfig(kv_cache_mb=16))
    embedder = Embedder(tiny.kernel)
    nursery.start_soon(engine.run)
    nursery.start_soon(embedder.run)
    return ServedModel([MODEL], created=0, engine=engine, embedding=Embedding(embedder, tiny.tokenizer, tiny.context_length))


@pytest.fixture
def start(start_http_server):
    """``start(app) -> client``: an httpx client of the App served on a free port."""
    async def go(app: App) -> httpx.AsyncClient:
        port = await start_http_server(app)
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)

    return go


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample in an exposition, by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def total(scraped: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= set(ls))


async def scrape(client: httpx.AsyncClient, **headers) -> dict:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_each_series_moves_as_the_scripted_requests_say(served, start):
    app = App(Registry([served]))
    client = await start(app)
    chat_body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "ignore_eos": True, "temperature": 0}
    before = await scrape(client)
    assert total(before, "pycompat_requests_total") == 0

    chat = (await client.post(CHAT, json=chat_body)).json()
    usages = [chat["usage"]]
    async with client.stream("POST", CHAT, json={**chat_body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                usages.append(json.loads(line[6:])["usage"])
    assert len(usages) == 2
    assert (await client.get("/v1/no-such-route")).status_code == 404
    assert (await client.post(CHAT, json={"model": MODEL})).status_code == 400  # no messages
    embedded = (await client.post("/v1/embeddings", json={"model": MODEL, "input": "spring"})).json()

    # A client that hangs up after the first event of a long stream.
    async with client.stream("POST", CHAT, json={**chat_body, "max_tokens": 1000, "stream": True}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break
    for _ in range(500):  # until the server has seen it go (its engine has let the sequence go)
        scraped = await scrape(client)
        if value(scraped, "pycompat_requests_cancelled_total", route=CHAT, model=MODEL):
            break
        await trio.sleep(0.01)

    # Requests by route, model and status (the scrapes are counted too).
    assert value(scraped, "pycompat_requests_total", route=CHAT, model=MODEL, status="200") == 3
    assert value(scraped, "pycompat_requests_total", route="unmatched", model="", status="404") == 1
    assert total(scraped, "pycompat_requests_total", route=CHAT, status="400") == 1
    assert value(scraped, "pycompat_requests_total", route="/v1/embeddings", model=MODEL, status="200") == 1
    assert value(scraped, "pycompat_requests_total", route="/metrics", model="", status="200") >= 1
    assert value(scraped, "pycompat_requests_cancelled_total", route=CHAT, model=MODEL) == 1
    assert total(scraped, "pycompat_requests_rejected_total") == 0

    # Tokens: what the finished requests reported in their usage (the hung-up one never finished).
    prompt = sum(u["prompt_tokens"] for u in usages) + embedded["usage"]["prompt_tokens"]
    generated = sum(u["completion_tokens"] for u in usages)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert generated == 10 and cached > 0  # the stream found the chat's prompt in the prefix cache
    assert value(scraped, "pycompat_prompt_tokens_total", model=MODEL) == prompt
    assert value(scraped, "pycompat_generation_tokens_total", model=MODEL) == generated
    assert value(scraped, "pycompat_cached_prompt_tokens_total", model=MODEL) == cached
    ratio = value(scraped, "pycompat_prefix_cache_hit_ratio", model=MODEL)
    assert ratio == pytest.approx(cached / sum(u["prompt_tokens"] for u in usages))

    # Histograms: one observation per request that made text (TTFT: the hung-up one too), per finished generation
    # (time per output token, queue wait), per request (duration).
    assert value(scraped, "pycompat_time_to_first_token_seconds_count", model=MODEL) == 3
    assert value(scraped, "pycompat_time_per_output_token_seconds_count", model=MODEL) == 2
    assert value(scraped, "pycompat_queue_wait_seconds_count", model=MODEL) == 2
    assert value(scraped, "pycompat_time_to_first_token_seconds_sum", model=MODEL) > 0
    durations = total(scraped, "pycompat_request_duration_seconds_count")
    assert durations == total(scraped, "pycompat_requests_total")
    assert total(scraped, "pycompat_request_duration_seconds_bucket", route=CHAT, le="+Inf") == 4

    # Gauges, read from the engine now: nothing running or queued, the prompts' blocks cached.
    assert value(scraped, "pycompat_requests_running", model=MODEL) == 0
    assert value(scraped, "pycompat_requests_waiting", model=MODEL) == 0
    stats = served.engine.stats()["kv_cache"]
    assert value(scraped, "pycompat_kv_cache_blocks", model=MODEL, state="total") == stats["blocks_total"] > 0
    assert value(scraped, "pycompat_kv_cache_blocks", model=MODEL, state="used") == 0
    assert value(scraped, "pycompat_kv_cache_blocks", model=MODEL, state="cached") == stats["blocks_cached"] > 0


async def test_running_and_waiting_are_the_engines_own_counts(served, start):
    app = App(Registry([served]))
    client = await start(app)
    async with client.stream("POST", CHAT, json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1000,
                                                 "ignore_eos": True, "stream": True}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break
        scraped = await scrape(client)
        assert value(scraped, "pycompat_requests_running", model=MODEL) == 1
        assert value(scraped, "pycompat_kv_cache_blocks", model=MODEL, state="used") > 0


async def call(app: App, request: Request):
    """The App's response, ended as the HTTP layer ends it once sent."""
    response = await app(request)
    if response.on_close is not None:
        response.on_close()
    return response


async def test_429s_are_counted_as_rejected():
    now = [0.0]
    app = App(Registry([]), limits=ClientLimits(requests_per_minute=1, clock=lambda: now[0]))
    models = Request("GET", "/v1/models", [("host", "localhost")], client="127.0.0.1:1")
    assert (await call(app, models)).status == 200
    refused = await call(app, models)
    assert refused.status == 429
    exposition = (await call(app, Request("GET", "/metrics", [], client="127.0.0.2:1"))).body.decode()  # another client: not limited
    scraped = samples(exposition)
    assert value(scraped, "pycompat_requests_rejected_total", route="/v1/models", model="") == 1
    assert value(scraped, "pycompat_requests_total", route="/v1/models", model="", status="429") == 1


@pytest.mark.parametrize("public", [False, True])
async def test_metrics_need_the_key_unless_public(public):
    app = App(Registry([]), AccessPolicy(["sekrit"], metrics_public=public))

    async def get(*headers) -> int:
        return (await call(app, Request("GET", "/metrics", list(headers), client="10.0.0.1:1"))).status

    assert await get() == (200 if public else 401)
    assert await get(("authorization", "Bearer wrong")) == (200 if public else 401)
    assert await get(("authorization", "Bearer sekrit")) == 200
    # Other routes still need it.
    assert (await call(app, Request("GET", "/v1/models", [], client="10.0.0.1:1"))).status == 401


async def test_each_app_has_its_own_registry():
    a, b = App(Registry([])), App(Registry([]))
    await call(a, Request("GET", "/v1/models", [], client="127.0.0.1:1"))
    scrape_b = samples((await call(b, Request("GET", "/metrics", [], client="127.0.0.1:1"))).body.decode())
    assert total(scrape_b, "pycompat_requests_total") == 0
    scrape_a = samples((await call(a, Request("GET", "/metrics", [], client="127.0.0.1:1"))).body.decode())
    assert total(scrape_a, "pycompat_requests_total") == 1
