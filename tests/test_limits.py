"""Limits an operator sets on clients (issue 14): --max-tokens-limit on each
generating route, --rate-limit and --max-concurrent-per-key (429 with
Retry-After in OpenAI's shape, per API key or per client address), all driven
in process: the App called with requests directly, over a tiny random model,
and a fake clock for the rate limit (no sleeps)."""

from __future__ import annotations

import json

import httpx
import pytest

import openapi
from conftest import running_server
from pycompat.api.access import AccessPolicy
from pycompat.api.app import App
from pycompat.api.errors import APIError
from pycompat.api.limits import PRUNE_AT_LEAST, ClientLimits
from pycompat.api.registry import Registry, ServedModel
from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import Engine
from pycompat.http.messages import Request, Response
from tiny_models import TinyConfig, load_tiny_chat_model

MODEL = "tiny"
CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, context_length=512)
LIMIT = 8
HI = [{"role": "user", "content": "Hi"}]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny_chat_model(tmp_path_factory.mktemp("limits") / "tiny", CFG, seed=5)


@pytest.fixture
def make_app(nursery, tiny):
    """``make_app(keys=(), limits=None, max_tokens_limit=None)``: the App over the tiny model, its engine running."""
    def make(keys=(), limits=None, max_tokens_limit=None) -> App:
        engine = Engine(tiny, EngineConfig(kv_cache_mb=16, max_tokens_limit=max_tokens_limit))
        nursery.start_soon(engine.run)
        return App(Registry([ServedModel([MODEL], created=0, engine=engine)]), AccessPolicy(keys), limits=limits)

    return make


def request(method: str, path: str, body: dict | None = None, key: str | None = None, client: str = "127.0.0.1:40000") -> Request:
    headers = [("host", "localhost"), ("content-type", "application/json")]
    if key is not None:
        headers.append(("authorization", f"Bearer {key}"))
    return Request(method, path, headers, json.dumps(body).encode() if body is not None else b"", client)


async def finish(response: Response) -> dict:
    """The response's JSON (a stream read to its end), its on_close called as the HTTP layer would."""
    try:
        if response.stream is not None:
            async for _ in response.stream:
                pass
            return {}
        return json.loads(response.body)
    finally:
        if response.on_close is not None:
            response.on_close()


def assert_429(response: Response, retry_after: str) -> dict:
    assert response.status == 429, response.body[:300]
    error = json.loads(response.body)
    openapi.validate("ErrorResponse", error)
    assert error["error"]["type"] == "rate_limit_error" and error["error"]["code"] == "rate_limit_exceeded"
    assert dict(response.headers)["retry-after"] == retry_after
    return error["error"]


# --- --max-tokens-limit -----------------------------------------------------------------

OVER_THE_LIMIT = [
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": LIMIT + 1}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_completion_tokens": LIMIT + 1}, "max_completion_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": LIMIT + 1}, "max_tokens"),
    ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": LIMIT + 1}, "max_output_tokens"),
]


@pytest.mark.parametrize("path, body, field", OVER_THE_LIMIT)
async def test_asking_for_more_than_the_max_tokens_limit_is_a_400_naming_the_field(make_app, path, body, field):
    app = make_app(max_tokens_limit=LIMIT)
    response = await app(request("POST", path, body))
    assert response.status == 400
    error = json.loads(response.body)["error"]
    assert error["param"] == field and error["code"] == "invalid_value"
    assert f"{field} is too large: {LIMIT + 1}" in error["message"] and f"at most {LIMIT}" in error["message"]
    body[field] = LIMIT  # the limit itself is allowed
    assert (await app(request("POST", path, body))).status == 200


@pytest.mark.parametrize("path, body, used", [
    # ignore_eos: the random model would otherwise stop at its own pace; here only a bound stops it.
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "ignore_eos": True, "temperature": 0}, "completion_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "Hi", "ignore_eos": True, "temperature": 0}, "completion_tokens"),  # default 16
])
async def test_a_request_that_sets_no_max_tokens_stops_at_the_limit(make_app, path, body, used):
    app = make_app(max_tokens_limit=LIMIT)
    answer = await finish(await app(request("POST", path, body)))
    assert answer["usage"][used] == LIMIT and answer["choices"][0]["finish_reason"] == "length"


async def test_without_a_limit_nothing_changes(make_app):
    app = make_app()
    body = {"model": MODEL, "prompt": "Hi", "ignore_eos": True, "temperature": 0, "max_tokens": 40}
    answer = await finish(await app(request("POST", "/v1/completions", body)))
    assert answer["usage"]["completion_tokens"] == 40


# --- --rate-limit -------------------------------------------------------------------------


async def test_the_request_after_a_minutes_worth_gets_429_with_retry_after_until_the_bucket_refills(make_app):
    clock = FakeClock()
    app = make_app(keys=["key-a", "key-b"], limits=ClientLimits(requests_per_minute=3, clock=clock))
    for _ in range(3):
        assert (await app(request("GET", "/v1/models", key="key-a"))).status == 200
    error = assert_429(await app(request("GET", "/v1/models", key="key-a")), retry_after="20")  # one token every 20 s
    assert "3 requests per minute" in error["message"] and "per API key" in error["message"]
    assert (await app(request("GET", "/v1/models", key="key-b"))).status == 200  # another key is not affected
    assert (await app(request("GET", "/health", key="key-a"))).status == 200  # liveness probes are never limited
    clock.now += 10
    assert_429(await app(request("GET", "/v1/models", key="key-a")), retry_after="10")
    clock.now += 10  # one token back
    assert (await app(request("GET", "/v1/models", key="key-a"))).status == 200
    assert_429(await app(request("GET", "/v1/models", key="key-a")), retry_after="20")
    clock.now += 60  # a whole minute: the full three again, no more
    for _ in range(3):
        assert (await app(request("GET", "/v1/models", key="key-a"))).status == 200
    assert_429(await app(request("GET", "/v1/models", key="key-a")), retry_after="20")


def test_refused_requests_take_nothing_from_the_bucket():
    clock = FakeClock()
    limits = ClientLimits(requests_per_minute=60, clock=clock)
    for _ in range(60):
        limits.admit("a").release()
    for _ in range(100):  # a client hammering while refused does not push its next slot further away
        with pytest.raises(APIError):
            limits.admit("a")
    clock.now += 1
    limits.admit("a").release()


async def test_without_keys_the_limit_is_per_client_address(make_app):
    clock = FakeClock()
    app = make_app(limits=ClientLimits(requests_per_minute=2, clock=clock))
    # Two connections from one address (different ports) are one client.
    assert (await app(request("GET", "/v1/models", client="10.0.0.1:5000"))).status == 200
    assert (await app(request("GET", "/v1/models", client="10.0.0.1:5001"))).status == 200
    error = assert_429(await app(request("GET", "/v1/models", client="10.0.0.1:5002")), retry_after="30")
    assert "per client address" in error["message"]
    assert (await app(request("GET", "/v1/models", client="[::1]:5000"))).status == 200
    assert (await app(request("GET", "/v1/models", client="[::1]:5001"))).status == 200
    assert (await app(request("GET", "/v1/models", client="[::1]:5002"))).status == 429


def test_clients_at_rest_are_forgotten_so_memory_stays_bounded():
    clock = FakeClock()
    limits = ClientLimits(requests_per_minute=10, clock=clock)
    busy = limits.admit("address:busy")  # in flight: kept whatever happens
    for i in range(PRUNE_AT_LEAST - 1):
        limits.admit(f"address:10.0.{i // 256}.{i % 256}").release()
    clock.now += 60  # every other bucket is full again: at rest
    limits.admit("address:new").release()
    assert set(limits._clients) == {"address:busy", "address:new"}
    busy.release()


# --- --max-concurrent-per-key -------------------------------------------------------------

STREAM = {"model": MODEL, "messages": HI, "stream": True, "max_tokens": 4}


async def test_requests_in_flight_beyond_the_cap_get_429_until_a_stream_ends(make_app):
    app = make_app(keys=["key-a", "key-b"], limits=ClientLimits(max_concurrent=2))
    first = await app(request("POST", "/v1/chat/completions", STREAM, key="key-a"))
    second = await app(request("POST", "/v1/chat/completions", STREAM, key="key-a"))
    assert first.status == second.status == 200 and first.stream is not None
    error = assert_429(await app(request("GET", "/v1/models", key="key-a")), retry_after="1")
    assert "at most 2 at once" in error["message"]
    assert (await app(request("GET", "/v1/models", key="key-b"))).status == 200  # another key is not affected
    await finish(first)  # streamed to its end: its place is free
    third = await app(request("POST", "/v1/chat/completions", STREAM, key="key-a"))
    assert third.status == 200
    assert (await app(request("POST", "/v1/chat/completions", STREAM, key="key-a"))).status == 429
    second.on_close()  # a client that went away mid-stream frees its place too
    await finish(third)
    for _ in range(3):  # requests that are over hold nothing
        assert (await app(request("GET", "/v1/models", key="key-a"))).status == 200


async def test_a_refused_request_holds_no_place(make_app):
    """An error response (here a 400) gives its place back like any other."""
    app = make_app(keys=["k"], limits=ClientLimits(max_concurrent=1))
    for _ in range(3):
        assert (await app(request("POST", "/v1/chat/completions", {"model": MODEL}, key="k"))).status == 400
    assert (await app(request("GET", "/v1/models", key="k"))).status == 200


def test_limits_are_at_least_one():
    with pytest.raises(ValueError):
        ClientLimits(requests_per_minute=0)
    with pytest.raises(ValueError):
        ClientLimits(max_concurrent=0)


# --- the flags, through `pycompat serve` ------------------------------------------------------


def test_the_serve_flags_reach_the_server(tmp_path):
    log = tmp_path / "serve.log"
    flags = ("--context-length", "256", "--max-tokens-limit", "4", "--rate-limit", "3", "--max-concurrent-per-key", "2")
    with running_server(log, *flags) as (_, url), httpx.Client(base_url=url, timeout=60) as http:
        chat = {"model": "smollm2-135m-instruct", "messages": HI, "max_tokens": 5}
        r = http.post("/chat/completions", json=chat)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert http.get("/models").status_code == 200
        assert http.get("/models").status_code == 200
        r = http.get("/models")  # the fourth in a minute, from one address
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 20
