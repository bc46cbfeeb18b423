"""Request ids and the access log: every response carries ``x-request-id``
(the client's own when sane, else a new one) and ``openai-processing-ms``;
one access-log line per request when it ends (a stream: when it is over),
parseable in both formats and carrying the request's fields, its id, and no
prompt or completion unless asked; an error logged while answering a request
names its id. The App on the HTTP layer in this process, over a tiny random model."""

from __future__ import annotations

import json
import logging
import re
import shlex

import httpx
import pytest
import trio

from pycompat.api.access_log import AccessLog, JsonFormatter, RequestIdFilter, TextFormatter
from pycompat.api.app import App
from pycompat.api.exchange import request_id_for
from pycompat.api.registry import Registry, ServedModel
from pycompat.api.router import Route
from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import Engine
from tiny_models import TinyConfig, load_tiny_chat_model

MODEL = "tiny"
CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, context_length=2048)
SECRET = "my secret prompt about penguins"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 4, "ignore_eos": True}
NEW_ID = re.compile(r"^req_[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny_chat_model(tmp_path_factory.mktemp("access_log") / "tiny", CFG, seed=3)


@pytest.fixture
def start(nursery, start_http_server, tiny):
    """``start(access_log=None) -> (app, client)``: the App over a running engine, served on a free port."""
    async def go(access_log: AccessLog | None = None):
        engine = Engine(tiny, EngineConfig(kv_cache_mb=16))
        nursery.start_soon(engine.run)
        app = App(Registry([ServedModel([MODEL], created=0, engine=engine)]), access_log=access_log)
        port = await start_http_server(app)
        return app, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)

    return go


@pytest.fixture
def access_lines(caplog):
    """The access log's records, as they are logged."""
    caplog.set_level(logging.INFO, logger="pycompat.access")
    caplog.handler.addFilter(RequestIdFilter())
    return lambda: [r for r in caplog.records if r.name == "pycompat.access"]


def parse_text(line: str) -> dict:
    """A text access line (after the usual ``time level logger:``) back into its fields."""
    head, _, message = line.partition("pycompat.access: ")
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO $", head), line
    client, request, status, *pairs = shlex.split(message)
    method, path = request.split(" ", 1)
    fields = {"client": client, "method": method, "path": path, "status": int(status)}
    for pair in pairs:
        key, _, value = pair.partition("=")
        fields[key] = None if value == "-" else value
    return fields


async def test_request_ids_round_trip(start):
    _, client = await start()
    mine = await client.get("/v1/models", headers={"x-request-id": "trace-42/abc"})
    assert mine.headers["x-request-id"] == "trace-42/abc"
    new = [(await client.get("/v1/models")).headers["x-request-id"] for _ in range(3)]
    assert all(NEW_ID.match(i) for i in new) and len(set(new)) == 3
    for insane in ["x" * 129, b"caf\xe9", "a\x7fb"]:
        r = await client.get("/v1/models", headers={"x-request-id": insane})
        assert NEW_ID.match(r.headers["x-request-id"]), insane
    assert (await client.get("/v1/models", headers={"x-request-id": "y" * 128})).headers["x-request-id"] == "y" * 128
    # On errors and streams too, with the time until the head in openai-processing-ms.
    for r in [await client.get("/v1/nope"), await client.post("/v1/chat/completions", json={**CHAT, "stream": True}),
              await client.post("/v1/chat/completions", json={"model": MODEL})]:
        assert NEW_ID.match(r.headers["x-request-id"])
        assert int(r.headers["openai-processing-ms"]) >= 0


@pytest.mark.parametrize("sent", [None, "", " ", "   ", "a\tb", "line\nbreak", "ü", "x" * 129])
def test_ids_a_client_sends_that_are_not_sane_are_replaced(sent):
    assert NEW_ID.match(request_id_for(sent))


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_one_access_line_per_request_in_each_format(start, access_lines, fmt):
    _, client = await start()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    chat = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "chat-1"})
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        assert access_lines()[-1].access["request_id"] == "chat-1"  # the stream's line waits for its end
        await stream.aread()
    await client.get("/v1/nope?x=1")

    records = access_lines()
    assert len(records) == 3
    lines = [formatter.format(r) for r in records]
    assert all("\n" not in line for line in lines)
    parsed = [json.loads(line) for line in lines] if fmt == "json" else [parse_text(line) for line in lines]
    usage = chat.json()["usage"]

    first, streamed, missing = parsed
    assert first["request_id"] == "chat-1"
    assert (first["method"], first["path"], int(first["status"]), first["model"]) == ("POST", "/v1/chat/completions", 200, MODEL)
    assert int(first["prompt_tokens"]) == usage["prompt_tokens"] and int(first["completion_tokens"]) == 4
    assert int(first["cached_tokens"]) == 0
    assert float(first["ttft_ms"]) <= float(first["duration_ms"])
    assert re.match(r"^127\.0\.0\.1:\d+$", first["client"])
    assert streamed["request_id"] == stream.headers["x-request-id"]
    assert int(streamed["completion_tokens"]) == 4 and int(streamed["cached_tokens"]) > 0
    assert (missing["path"], int(missing["status"]), missing["model"], missing["ttft_ms"]) == ("/v1/nope?x=1", 404, None, None)
    if fmt == "json":
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["time"])
    assert all(SECRET not in line for line in lines)  # privacy by default


async def test_log_content_adds_the_prompt_and_completion(start, access_lines):
    _, client = await start(AccessLog(content=True))
    chat = (await client.post("/v1/chat/completions", json=CHAT)).json()
    (record,) = access_lines()
    logged = json.loads(JsonFormatter().format(record))
    assert logged["prompt"] == CHAT["messages"]
    assert logged["completion"] == [chat["choices"][0]["message"]["content"]]
    assert SECRET in TextFormatter().format(record)


async def test_a_client_that_hangs_up_is_logged_as_cancelled(start, access_lines):
    _, client = await start()
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 1000, "stream": True}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break
    for _ in range(500):
        if access_lines():
            break
        await trio.sleep(0.01)
    (record,) = access_lines()
    assert record.access["cancelled"] is True and record.access["status"] == 200


async def test_an_error_logged_while_answering_names_the_request(start, caplog):
    app, client = await start()

    async def boom(request):
        raise RuntimeError("kaboom")

    app.router.add([Route("GET", "/boom", boom)])
    caplog.handler.addFilter(RequestIdFilter())
    r = await client.get("/boom", headers={"x-request-id": "trace-boom"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-boom"
    (error,) = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    text = TextFormatter().format(error)
    assert text.splitlines()[0].endswith("request_id=trace-boom") and "kaboom" in text
    assert json.loads(JsonFormatter().format(error))["request_id"] == "trace-boom"
